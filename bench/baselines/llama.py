"""LlamaCppBackend: llama.cpp (llama-cpp-python) on the same GGUF file, one sequence at a time, in its own process.

llama.cpp keeps the KV of its last sequence and reuses the longest common prefix of the next one, so it gets
prefix reuse for consecutive calls (not across interleaved programs); that reuse is counted as cached tokens.
Sampling and constraint masks use sgagent's own sampler and FSMs on llama.cpp's logits, so the comparison is
of the forward passes and of the scheduling, not of sampling code. The model lives in a child process
(`llama_worker.py`): sharing the engine's process, llama.cpp's threads and torch's OpenMP team slowed each other.
"""

from __future__ import annotations

import contextlib
import importlib.util
import pickle
import subprocess
import sys
from pathlib import Path

import torch

from sgagent.engine.constrained.fsm import apply_masks
from sgagent.engine.sampler import sample

from .base import SerialBackend


def llama_cpp_installed() -> bool:
    # found, not imported: the library is only ever loaded in the worker's process
    return importlib.util.find_spec("llama_cpp") is not None


class LlamaWorker:
    """The child process that holds the model: each call evaluates tokens there and returns next-token logits."""

    def __init__(self, path: str, n_ctx: int, threads: int):
        worker = Path(__file__).with_name("llama_worker.py")
        self.proc = subprocess.Popen([sys.executable, str(worker), path, str(n_ctx), str(threads)],
                                     stdin=subprocess.PIPE, stdout=subprocess.PIPE)
        hello = self._read()
        self.n_vocab, self.n_ctx = hello["n_vocab"], hello["n_ctx"]

    def _read(self):
        try:
            return pickle.load(self.proc.stdout)
        except EOFError:
            raise self._exited() from None

    def _exited(self) -> RuntimeError:
        return RuntimeError(f"the llama.cpp worker exited with {self.proc.wait()}")

    def _call(self, *request, logits: bool = True):
        try:
            pickle.dump(request, self.proc.stdin)
            self.proc.stdin.flush()
        except BrokenPipeError:
            raise self._exited() from None
        header = self._read()
        if not logits:
            return header, None
        raw = self.proc.stdout.read(4 * self.n_vocab)
        return header, torch.frombuffer(bytearray(raw), dtype=torch.float32)

    def feed(self, ids: list[int]) -> tuple[torch.Tensor, int]:
        """Hold `ids` (reusing the common prefix of what is held): the next-token logits and the reuse."""
        keep, logits = self._call("feed", list(ids))
        return logits, keep

    def eval(self, at: int, ids: list[int]) -> torch.Tensor:
        """Append `ids` after the first `at` held tokens: the next-token logits."""
        return self._call("eval", at, list(ids))[1]

    def reset(self) -> None:
        self._call("reset", logits=False)

    def close(self) -> None:
        if self.proc.poll() is None:
            with contextlib.suppress(BrokenPipeError):
                pickle.dump(("close",), self.proc.stdin)
                self.proc.stdin.close()
            try:
                self.proc.wait(timeout=30)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()


class LlamaCppBackend(SerialBackend):
    name = "llama.cpp"

    def __init__(self, engine, n_ctx: int = 4096):
        super().__init__(engine)
        if not engine.model_path.endswith(".gguf"):
            raise ValueError("llama.cpp needs a GGUF model file")
        self.llm = LlamaWorker(engine.model_path, n_ctx, torch.get_num_threads())

    def reset(self) -> None:
        super().reset()
        self.llm.reset()

    def close(self) -> None:
        self.llm.close()

    def _generate(self, ids, params, constraint):
        if len(ids) + params.max_tokens > self.llm.n_ctx:
            raise ValueError(f"prompt + max_tokens exceeds llama.cpp's context of {self.llm.n_ctx}")
        gen = torch.Generator().manual_seed(params.seed) if params.seed is not None else torch.Generator()
        logits, cached = self.llm.feed(ids)
        stops = self.eos_ids | set(params.stop_token_ids)
        out: list[int] = []
        text_len = 0
        while len(out) < params.max_tokens:
            row = logits[None]
            if params.ignore_eos:
                row[0, sorted(self.eos_ids)] = float("-inf")
            if constraint is not None:
                apply_masks(row, [constraint])
            tok = int(sample(row, [params], [gen])[0])
            out.append(tok)
            if tok in stops:
                break
            if constraint is not None:
                constraint.advance(tok, jump=False, room=0)
            if params.stop:
                text = self.tokenizer.decode(out, skip_special_tokens=True)
                if any(s in text[max(0, text_len - len(s)):] for s in params.stop):
                    break
                text_len = len(text)
            if len(out) == params.max_tokens:
                break
            logits = self.llm.eval(len(ids) + len(out) - 1, [tok])
        return out, cached

    def _score(self, base, conts):
        first, cached = self.llm.feed(base)
        first = first.log_softmax(-1)
        out = []
        for c in conts:
            lps = [first[c[0]].item()]
            for i, (prev, t) in enumerate(zip(c, c[1:])):
                lps.append(self.llm.eval(len(base) + i, [prev]).log_softmax(-1)[t].item())
            out.append(lps)
        return out, cached
