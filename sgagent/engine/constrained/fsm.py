"""A compiled constraint (shared) and one request's walk through it.

Jump-forward: from an FSM state where every allowed token starts with the same byte, that byte is forced;
following single-byte transitions collects the whole forced string (memoized per state, since indexes are
shared). The string is re-tokenized together with the token just sampled (not yet in the KV cache, so
replacing it costs nothing) so the model sees the tokens its tokenizer would produce.
"""

from __future__ import annotations

from collections.abc import Callable

import torch
from outlines_core import Guide, Index

from .vocab import TokenVocab, utf8_prefix

_MAX_FORCED = 256


class CompiledConstraint:
    def __init__(self, kind: str, regex: str, index: Index, vocab: TokenVocab):
        self.kind = kind
        self.regex = regex
        self.index = index
        self.vocab = vocab
        self.nbytes = 0  # serialized size of the index: what the compile cache budgets by
        self._forced: dict[int, tuple[bytes, int]] = {}
        self._done: dict[int, bool] = {}

    def walk(self, state: int, tokens: list[int]) -> int | None:
        for t in tokens:
            state = self.index.get_next_state(state, t)
            if state is None:
                return None
        return state

    def accepts(self, tokens: list[int]) -> bool:
        state = self.walk(self.index.get_initial_state(), tokens)
        return state is not None and self.index.is_final_state(state)

    def only_eos_left(self, state: int) -> bool:
        if state not in self._done:
            allowed = self.index.get_allowed_tokens(state)
            self._done[state] = allowed == [self.vocab.eos_id]
        return self._done[state]

    def _only_first_byte(self, allowed: list[int]) -> int | None:
        """The byte every allowed token starts with, or None. Stops at the second distinct byte: a free-text
        state allows thousands of tokens (a set of all their first bytes cost ~15 ms a state)."""
        first, token_bytes = None, self.vocab.token_bytes
        for t in allowed:
            tb = token_bytes.get(t)
            if tb is None:
                continue
            if first is None:
                first = tb[0]
            elif tb[0] != first:
                return None
        return first

    def forced(self, state: int) -> bytes:
        if state not in self._forced:
            out, s = b"", state
            while len(out) < _MAX_FORCED and not self.index.is_final_state(s):
                b = self._only_first_byte(self.index.get_allowed_tokens(s))
                if b is None:
                    break
                nxt = self.index.get_next_state(s, self.vocab.byte_token[b]) if b in self.vocab.byte_token else None
                if nxt is None:
                    break
                out += bytes([b])
                s = nxt
            self._forced[state] = (out, s)
        return self._forced[state][0]


class ConstraintState:
    def __init__(self, compiled: CompiledConstraint, finish: Callable):
        self.c = compiled
        self.finish = finish  # (text) -> parsed value, raising if the text does not satisfy the constraint
        self.guide = Guide(compiled.index, max_rollback=4)

    def write_mask(self, row: torch.Tensor) -> None:
        self.guide.write_mask_into(row.data_ptr(), row.numel(), row.element_size())

    def start(self, room: int) -> list[int]:
        """Tokens forced before anything is sampled (e.g. a JSON object's opening), for jump-forward."""
        text = utf8_prefix(self.c.forced(self.guide.get_state()))
        if not text:
            return []
        toks = self.c.vocab.encode(text)
        if len(toks) > room or self.c.walk(self.guide.get_state(), toks) is None:
            return []
        for t in toks:
            self.guide.advance(t)
        return toks

    def advance(self, token: int, jump: bool, room: int) -> list[int]:
        """Consume a sampled token. Returns what replaces it in the sequence: itself, or with jump-forward
        the re-tokenized token + forced text (at most `room` extra tokens)."""
        before = self.guide.get_state()
        self.guide.advance(token)
        if not jump:
            return [token]
        text = utf8_prefix(self.c.forced(self.guide.get_state()))
        if not text:
            return [token]
        last = self.c.vocab.token_bytes.get(token, b"")
        candidates = []
        try:
            candidates.append((True, self.c.vocab.encode(last.decode("utf-8") + text)))
        except UnicodeDecodeError:
            pass  # the sampled token ends inside a character: keep it, append the forced text after it
        candidates.append((False, self.c.vocab.encode(text)))
        for replace, toks in candidates:
            tail = toks if replace else [token] + toks
            if len(tail) - 1 > room or not toks:
                continue
            if self.c.walk(before, tail) is None:
                continue
            self.guide.rollback_state(1)
            for t in tail:
                self.guide.advance(t)
            return tail
        return [token]

    def is_done(self) -> bool:
        """Complete, with nothing left to choose but the end."""
        return self.c.only_eos_left(self.guide.get_state())

    def is_complete(self) -> bool:
        return self.c.index.is_final_state(self.guide.get_state())


def apply_masks(logits: torch.Tensor, states: list) -> None:
    """Mask a batch of logits rows in one vectorized pass; rows whose state is None stay as they are."""
    rows = [i for i, s in enumerate(states) if s is not None]
    if not rows:
        return
    vocab = logits.shape[-1]
    words = (vocab + 31) // 32
    bitmask = torch.empty((len(rows), words), dtype=torch.int32)
    for k, i in enumerate(rows):
        states[i].write_mask(bitmask[k])
    shifts = torch.arange(32, dtype=torch.int32)
    allowed = ((bitmask[:, :, None] >> shifts) & 1).bool().view(len(rows), -1)[:, :vocab]
    idx = torch.tensor(rows, device=logits.device)
    logits[idx] = logits[idx].masked_fill(~allowed.to(logits.device), float("-inf"))
