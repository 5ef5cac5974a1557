"""The paged KV cache: one preallocated pool of fixed-size pages and a free list.

Pages are only handed out and taken back here; who holds a page (a request, or the radix tree) is
tracked by its holder. The pool itself never grows or reallocates.
"""

from __future__ import annotations

import torch

from .model.config import ModelConfig


class OutOfPagesError(RuntimeError):
    pass


class KVPool:
    def __init__(self, cfg: ModelConfig, page_size: int, budget_bytes: int, dtype, device, pages: int | None = None):
        per_token = 2 * cfg.num_layers * cfg.num_kv_heads * cfg.head_dim * torch.finfo(dtype).bits // 8
        self.page_size = page_size
        self.num_pages = pages + 1 if pages else max(2, budget_bytes // (per_token * page_size))
        slots = self.num_pages * page_size
        shape = (cfg.num_layers, slots, cfg.num_kv_heads, cfg.head_dim)
        self.k = torch.zeros(shape, dtype=dtype, device=device)
        self.v = torch.zeros(shape, dtype=dtype, device=device)
        # page 0 is never handed out: padded gathers point at it, so nothing real is ever read by padding
        self._free = list(range(self.num_pages - 1, 0, -1))
        self.capacity = self.num_pages - 1

    @property
    def num_free(self) -> int:
        return len(self._free)

    def alloc(self, n: int) -> list[int]:
        if n > len(self._free):
            raise OutOfPagesError(f"need {n} pages, {len(self._free)} free")
        if n == 0:
            return []
        out = self._free[-n:]
        del self._free[-n:]
        return out

    def free(self, pages: list[int]) -> None:
        self._free.extend(pages)

    def copy_tokens(self, copies: list[tuple[int, int, int]]) -> None:
        """For each (src page, dst page, n): K/V of src's first n slots into dst's first n, every layer.

        All sources are read before any destination is written, so a page may be both.
        """
        ps = self.page_size
        src = [s * ps + i for s, _, n in copies for i in range(n)]
        dst = [d * ps + i for _, d, n in copies for i in range(n)]
        src_t = torch.tensor(src, device=self.k.device)
        dst_t = torch.tensor(dst, device=self.k.device)
        self.k[:, dst_t] = self.k[:, src_t]
        self.v[:, dst_t] = self.v[:, src_t]
