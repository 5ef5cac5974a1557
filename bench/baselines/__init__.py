"""Baselines for the benchmark suite: the same programs on plain transformers and on llama.cpp.

Each baseline stands in for `sgagent.Engine` under the primitives (tokenize, render, generate, score, stats),
so a program or recipe runs on it unchanged. Requests are served one call at a time, as a program written
against those libraries directly would send them; only a `select`'s choices are scored together.
"""

from .base import SerialBackend
from .hf import TransformersBackend
from .llama import LlamaCppBackend, llama_cpp_installed

__all__ = ["LlamaCppBackend", "SerialBackend", "TransformersBackend", "llama_cpp_installed"]
