"""ForwardBatch: what one engine step computes, as plain lists built by the scheduler."""

from __future__ import annotations

from dataclasses import dataclass, field


@dataclass
class SeqSlice:
    """One sequence's part of a step: q_len new tokens on top of prefix_len tokens already in the cache."""

    row: int  # first row of this sequence in the flattened token batch
    q_len: int
    prefix_len: int
    pages: list[int]

    @property
    def kv_len(self) -> int:
        return self.prefix_len + self.q_len

    def new_slots(self, ps: int) -> list[int]:
        """Pool slots (page * page_size + offset) that this step's q_len new tokens are written to."""
        return [self.pages[p // ps] * ps + p % ps for p in range(self.prefix_len, self.kv_len)]


def page_table(seqs: list[SeqSlice], ps: int) -> tuple[list[int], list[int], list[int]]:
    """The seqs' pages in CSR form, as paged-attention kernels take them: (indptr, page indices, tokens in
    each sequence's last page)."""
    indptr, indices, last_len = [0], [], []
    for s in seqs:
        n = (s.kv_len + ps - 1) // ps
        indices.extend(s.pages[:n])
        indptr.append(len(indices))
        last_len.append(s.kv_len - (n - 1) * ps)
    return indptr, indices, last_len


@dataclass
class ForwardBatch:
    input_ids: list[int] = field(default_factory=list)
    positions: list[int] = field(default_factory=list)
    seqs: list[SeqSlice] = field(default_factory=list)
    logit_rows: list[int] = field(default_factory=list)  # rows whose next-token logits are needed

    def add(self, tokens: list[int], prefix_len: int, pages: list[int]) -> SeqSlice:
        s = SeqSlice(len(self.input_ids), len(tokens), prefix_len, pages)
        self.input_ids.extend(tokens)
        self.positions.extend(range(prefix_len, prefix_len + len(tokens)))
        self.seqs.append(s)
        return s

    @property
    def num_tokens(self) -> int:
        return len(self.input_ids)
