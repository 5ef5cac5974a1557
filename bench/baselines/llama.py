"""LlamaCppBackend: llama.cpp (llama-cpp-python) on the same GGUF file, one sequence at a time.

llama.cpp keeps the KV of its last sequence and reuses the longest common prefix of the next one, so it gets
prefix reuse for consecutive calls (not across interleaved programs); that reuse is counted as cached tokens.
Sampling and constraint masks use sgagent's own sampler and FSMs on llama.cpp's logits, so the comparison is
of the forward passes and of the scheduling, not of sampling code.
"""

from __future__ import annotations

import numpy as np
import torch

from sgagent.engine.constrained.fsm import apply_masks
from sgagent.engine.sampler import sample

from .base import SerialBackend


def llama_cpp_installed() -> bool:
    try:
        import llama_cpp  # noqa: F401
    except ImportError:
        return False
    return True


class LlamaCppBackend(SerialBackend):
    name = "llama.cpp"

    def __init__(self, engine, n_ctx: int = 4096):
        super().__init__(engine)
        from llama_cpp import Llama

        if not engine.model_path.endswith(".gguf"):
            raise ValueError("llama.cpp needs a GGUF model file")
        self.llm = Llama(model_path=engine.model_path, n_ctx=n_ctx, n_batch=512,
                         n_threads=torch.get_num_threads(), verbose=False)
        self.n_vocab = self.llm.n_vocab()

    def reset(self) -> None:
        super().reset()
        self.llm.n_tokens = 0

    def close(self) -> None:
        self.llm.close()

    def _feed(self, ids: list[int]) -> tuple[torch.Tensor, int]:
        """Make the context hold `ids` (reusing the common prefix), return the next-token logits and the reuse."""
        llm = self.llm
        have = llm.input_ids[: llm.n_tokens]
        keep = 0
        for a, b in zip(have, ids):
            if a != b:
                break
            keep += 1
        keep = min(keep, len(ids) - 1)  # at least one token evaluated, for fresh logits
        llm.n_tokens = keep
        llm.eval(ids[keep:])
        return self._logits(), keep

    def _logits(self) -> torch.Tensor:
        raw = np.ctypeslib.as_array(self.llm._ctx.get_logits(), shape=(self.n_vocab,))
        return torch.from_numpy(raw.copy())

    def _generate(self, ids, params, constraint):
        if len(ids) + params.max_tokens > self.llm.n_ctx():
            raise ValueError(f"prompt + max_tokens exceeds llama.cpp's context of {self.llm.n_ctx()}")
        gen = torch.Generator().manual_seed(params.seed) if params.seed is not None else torch.Generator()
        logits, cached = self._feed(ids)
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
            self.llm.eval([tok])
            logits = self._logits()
        return out, cached

    def _score(self, base, conts):
        first, cached = self._feed(base)
        first = first.log_softmax(-1)
        out = []
        for c in conts:
            lps = [first[c[0]].item()]
            self.llm.n_tokens = len(base)
            for prev, t in zip(c, c[1:]):
                self.llm.eval([prev])
                lps.append(self._logits().log_softmax(-1)[t].item())
            out.append(lps)
        return out, cached
