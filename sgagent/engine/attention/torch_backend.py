"""Attention in plain torch: paged K/V gathered per batch, SDPA on the gathered tensors.

Decodes (one query each) run as one padded SDPA call; extends (prefill chunks) run one SDPA call
each, since their query lengths differ and padding them together wastes more than it saves.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F

from ..batch import ForwardBatch


@dataclass
class _Extend:
    row: int
    q_len: int
    kv_slots: torch.Tensor | None  # None: no cached prefix, attend to this step's own k/v causally
    mask: torch.Tensor | None


@dataclass
class TorchMeta:
    slot_mapping: torch.Tensor
    decode_rows: torch.Tensor | None
    decode_all: bool  # every row is a decode, in order: no gather/scatter of rows needed
    decode_slots: torch.Tensor | None
    decode_mask: torch.Tensor | None
    extends: list[_Extend]


def _slots(pages: list[int], start: int, end: int, ps: int) -> list[int]:
    return [pages[p // ps] * ps + p % ps for p in range(start, end)]


class TorchAttention:
    def __init__(self, pool):
        self.pool = pool

    def prepare(self, batch: ForwardBatch, device) -> TorchMeta:
        ps = self.pool.page_size
        slot_mapping = []
        decodes, extends = [], []
        for s in batch.seqs:
            slot_mapping.extend(_slots(s.pages, s.prefix_len, s.kv_len, ps))
            (decodes if s.q_len == 1 else extends).append(s)
        meta = TorchMeta(torch.tensor(slot_mapping, dtype=torch.long, device=device), None, False, None, None, [])
        if decodes:
            lmax = max(s.kv_len for s in decodes)
            slots = torch.zeros((len(decodes), lmax), dtype=torch.long)
            lens = torch.tensor([s.kv_len for s in decodes])
            for i, s in enumerate(decodes):
                slots[i, : s.kv_len] = torch.tensor(_slots(s.pages, 0, s.kv_len, ps))
            meta.decode_slots = slots.to(device)
            meta.decode_mask = (torch.arange(lmax)[None, :] < lens[:, None])[:, None, None, :].to(device)
            meta.decode_rows = torch.tensor([s.row for s in decodes], dtype=torch.long, device=device)
            meta.decode_all = len(decodes) == len(batch.seqs)
        for s in extends:
            if s.prefix_len == 0:
                meta.extends.append(_Extend(s.row, s.q_len, None, None))
                continue
            kv = torch.tensor(_slots(s.pages, 0, s.kv_len, ps), dtype=torch.long, device=device)
            q_pos = torch.arange(s.prefix_len, s.kv_len)[:, None]
            mask = (torch.arange(s.kv_len)[None, :] <= q_pos).to(device)
            meta.extends.append(_Extend(s.row, s.q_len, kv, mask))
        return meta

    def __call__(self, layer: int, q, k, v, meta: TorchMeta) -> torch.Tensor:
        """q: [T, H, D]; k, v: [T, Hkv, D] for this step's tokens. Returns [T, H*D]."""
        kc, vc = self.pool.k[layer], self.pool.v[layer]
        kc[meta.slot_mapping] = k
        vc[meta.slot_mapping] = v
        T, H, D = q.shape
        out = q.new_empty((T, H, D)) if not meta.decode_all else None
        if meta.decode_rows is not None:
            qd = q if meta.decode_all else q[meta.decode_rows]
            kd = kc[meta.decode_slots].transpose(1, 2)  # [B, Hkv, L, D]
            vd = vc[meta.decode_slots].transpose(1, 2)
            od = F.scaled_dot_product_attention(
                qd[:, :, None, :], kd, vd, attn_mask=meta.decode_mask, enable_gqa=True
            )[:, :, 0, :]
            if meta.decode_all:
                return od.reshape(T, H * D)
            out[meta.decode_rows] = od
        for e in meta.extends:
            qe = q[e.row : e.row + e.q_len].transpose(0, 1)[None]  # [1, H, q, D]
            if e.kv_slots is None:
                ke = k[e.row : e.row + e.q_len].transpose(0, 1)[None]
                ve = v[e.row : e.row + e.q_len].transpose(0, 1)[None]
                oe = F.scaled_dot_product_attention(qe, ke, ve, is_causal=True, enable_gqa=True)
            else:
                ke = kc[e.kv_slots].transpose(0, 1)[None]
                ve = vc[e.kv_slots].transpose(0, 1)[None]
                oe = F.scaled_dot_product_attention(qe, ke, ve, attn_mask=e.mask, enable_gqa=True)
            out[e.row : e.row + e.q_len] = oe[0].transpose(0, 1)
        return out.reshape(T, H * D)
