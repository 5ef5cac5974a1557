"""Attention in plain torch over the paged pool (CPU and any device).

K/V are gathered page by page (a page is one contiguous block of the pool). Decodes run as one padded
call over each sequence's own pages; prefixes that several decodes share through the radix tree are
attended once per group and merged in (see prefix_groups). Extends (prefill chunks) run one call each,
since their query lengths differ and padding them together wastes more than it saves.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import torch
import torch.nn.functional as F

from ..batch import ForwardBatch
from .lse import attend, merge
from .prefix_groups import prefix_groups


@dataclass
class _Extend:
    row: int
    q_len: int
    kv_pages: torch.Tensor | None  # None: no cached prefix, attend to this step's own k/v causally
    mask: torch.Tensor | None


@dataclass
class _Group:
    members: torch.Tensor  # positions in the decode batch
    pages: torch.Tensor  # the pages they share


@dataclass
class TorchMeta:
    slot_mapping: torch.Tensor
    decode_rows: torch.Tensor | None = None
    decode_all: bool = False  # every row is a decode, in order: no gather/scatter of rows needed
    decode_pages: torch.Tensor | None = None  # [B, P] each decode's unshared pages, padded with page 0
    decode_mask: torch.Tensor | None = None  # [B, 1, 1, P * page_size]
    groups: list[_Group] = field(default_factory=list)
    extends: list[_Extend] = field(default_factory=list)


def _slots(pages: list[int], start: int, end: int, ps: int) -> list[int]:
    return [pages[p // ps] * ps + p % ps for p in range(start, end)]


def _npages(tokens: int, ps: int) -> int:
    return (tokens + ps - 1) // ps


class TorchAttention:
    def __init__(self, pool, share_prefixes: bool = True):
        self.pool = pool
        self.share_prefixes = share_prefixes

    def prepare(self, batch: ForwardBatch, device) -> TorchMeta:
        ps = self.pool.page_size
        slot_mapping = []
        decodes, extends = [], []
        for s in batch.seqs:
            slot_mapping.extend(_slots(s.pages, s.prefix_len, s.kv_len, ps))
            (decodes if s.q_len == 1 else extends).append(s)
        meta = TorchMeta(torch.tensor(slot_mapping, dtype=torch.long, device=device))
        if decodes:
            self._prepare_decodes(meta, decodes, len(batch.seqs), device)
        for s in extends:
            if s.prefix_len == 0:
                meta.extends.append(_Extend(s.row, s.q_len, None, None))
                continue
            n = _npages(s.kv_len, ps)
            q_pos = torch.arange(s.prefix_len, s.kv_len)[:, None]
            mask = (torch.arange(n * ps)[None, :] <= q_pos).to(device)
            meta.extends.append(_Extend(s.row, s.q_len, torch.tensor(s.pages[:n], device=device), mask))
        return meta

    def _prepare_decodes(self, meta: TorchMeta, decodes, num_seqs: int, device) -> None:
        ps = self.pool.page_size
        skip = [0] * len(decodes)  # leading pages attended through a group
        if self.share_prefixes:
            for g in prefix_groups([s.pages for s in decodes], [s.kv_len for s in decodes], ps):
                first = decodes[g.members[0]]
                meta.groups.append(_Group(torch.tensor(g.members, device=device),
                                          torch.tensor(first.pages[: g.pages], device=device)))
                for m in g.members:
                    skip[m] = g.pages
        own = [s.kv_len - skip[i] * ps for i, s in enumerate(decodes)]
        width = max(_npages(n, ps) for n in own)
        pages = torch.zeros((len(decodes), width), dtype=torch.long)
        for i, s in enumerate(decodes):
            tail = s.pages[skip[i] : skip[i] + _npages(own[i], ps)]
            pages[i, : len(tail)] = torch.tensor(tail)
        meta.decode_pages = pages.to(device)
        mask = torch.arange(width * ps)[None, :] < torch.tensor(own)[:, None]
        meta.decode_mask = mask[:, None, None, :].to(device)
        meta.decode_rows = torch.tensor([s.row for s in decodes], dtype=torch.long, device=device)
        meta.decode_all = len(decodes) == num_seqs

    def _gather(self, cache: torch.Tensor, pages: torch.Tensor) -> torch.Tensor:
        """cache [slots, Hkv, D], pages [..., P] -> [..., Hkv, P * page_size, D]."""
        ps = self.pool.page_size
        blocks = cache.view(-1, ps, *cache.shape[1:]).index_select(0, pages.reshape(-1))
        return blocks.view(*pages.shape[:-1], pages.shape[-1] * ps, *cache.shape[1:]).transpose(-3, -2)

    def _decode(self, kc, vc, q: torch.Tensor, meta: TorchMeta) -> torch.Tensor:
        """q [B, H, D] of the decode rows -> [B, H, D]."""
        B, H, D = q.shape
        hkv = kc.shape[1]
        qg = q.view(B, hkv, H // hkv, D)  # query heads of one K/V head as rows of that head
        kd, vd = self._gather(kc, meta.decode_pages), self._gather(vc, meta.decode_pages)
        out, lse = attend(qg, kd, vd, meta.decode_mask)
        if not meta.groups:
            return out.reshape(B, H, D)
        shared_o = torch.zeros_like(out)
        shared_lse = torch.full_like(lse, float("-inf"))
        for g in meta.groups:
            n = len(g.members)
            qs = qg.index_select(0, g.members).transpose(0, 1).reshape(1, hkv, n * (H // hkv), D)
            o, l = attend(qs, self._gather(kc, g.pages[None]), self._gather(vc, g.pages[None]))
            shared_o[g.members] = o[0].view(hkv, n, H // hkv, D).transpose(0, 1)
            shared_lse[g.members] = l[0].view(hkv, n, H // hkv).transpose(0, 1)
        return merge(shared_o, shared_lse, out, lse).reshape(B, H, D)

    def __call__(self, layer: int, q, k, v, meta: TorchMeta) -> torch.Tensor:
        """q: [T, H, D]; k, v: [T, Hkv, D] for this step's tokens. Returns [T, H*D]."""
        kc, vc = self.pool.k[layer], self.pool.v[layer]
        kc[meta.slot_mapping] = k
        vc[meta.slot_mapping] = v
        T, H, D = q.shape
        if meta.decode_rows is not None:
            od = self._decode(kc, vc, q if meta.decode_all else q[meta.decode_rows], meta)
            if meta.decode_all:
                return od.reshape(T, H * D)
            out = q.new_empty((T, H, D))
            out[meta.decode_rows] = od
        else:
            out = q.new_empty((T, H, D))
        for e in meta.extends:
            qe = q[e.row : e.row + e.q_len].transpose(0, 1)[None]  # [1, H, q, D]
            if e.kv_pages is None:
                ke = k[e.row : e.row + e.q_len].transpose(0, 1)[None]
                ve = v[e.row : e.row + e.q_len].transpose(0, 1)[None]
                oe = F.scaled_dot_product_attention(qe, ke, ve, is_causal=True, enable_gqa=True)
            else:
                ke, ve = self._gather(kc, e.kv_pages[None]), self._gather(vc, e.kv_pages[None])
                oe = F.scaled_dot_product_attention(qe, ke, ve, attn_mask=e.mask, enable_gqa=True)
            out[e.row : e.row + e.q_len] = oe[0].transpose(0, 1)
        return out.reshape(T, H * D)
