"""Attention through flashinfer's paged prefill wrapper (CUDA only).

One wrapper serves decodes and extends alike: a decode is an extend of one query. The pool's
[slots, Hkv, D] per-layer tensors are viewed as flashinfer's NHD pages [pages, page_size, Hkv, D].
"""

from __future__ import annotations

import torch

from ..batch import ForwardBatch


class FlashInferAttention:
    def __init__(self, pool, device: torch.device, num_heads: int):
        import flashinfer  # imported only when this backend is chosen

        self.pool = pool
        self.num_heads = num_heads
        self.workspace = torch.empty(128 << 20, dtype=torch.uint8, device=device)
        self.wrapper = flashinfer.BatchPrefillWithPagedKVCacheWrapper(self.workspace, "NHD")
        _, slots, hkv, d = pool.k.shape
        self.page_shape = (slots // pool.page_size, pool.page_size, hkv, d)

    def prepare(self, batch: ForwardBatch, device):
        ps = self.pool.page_size
        qo, kv_indptr, kv_indices, last_len, slot_mapping = [0], [0], [], [], []
        for s in batch.seqs:
            npages = (s.kv_len + ps - 1) // ps
            qo.append(qo[-1] + s.q_len)
            kv_indices.extend(s.pages[:npages])
            kv_indptr.append(len(kv_indices))
            last_len.append(s.kv_len - (npages - 1) * ps)
            slot_mapping.extend(s.pages[p // ps] * ps + p % ps for p in range(s.prefix_len, s.kv_len))
        hkv, d = self.page_shape[2], self.page_shape[3]
        # plan() reads the page tables on the host and copies what the kernels need
        self.wrapper.plan(
            torch.tensor(qo, dtype=torch.int32),
            torch.tensor(kv_indptr, dtype=torch.int32),
            torch.tensor(kv_indices, dtype=torch.int32, device=device),
            torch.tensor(last_len, dtype=torch.int32),
            self.num_heads,
            hkv,
            d,
            ps,
            causal=True,
            q_data_type=self.pool.k.dtype,
            kv_data_type=self.pool.k.dtype,
        )
        return torch.tensor(slot_mapping, dtype=torch.long, device=device)

    def __call__(self, layer: int, q, k, v, slot_mapping) -> torch.Tensor:
        kc, vc = self.pool.k[layer], self.pool.v[layer]
        kc[slot_mapping] = k
        vc[slot_mapping] = v
        out = self.wrapper.run(q, (kc.view(self.page_shape), vc.view(self.page_shape)))
        return out.reshape(q.shape[0], -1)
