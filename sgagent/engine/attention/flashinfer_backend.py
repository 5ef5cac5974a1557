"""Attention through flashinfer's paged kernels (CUDA only).

Eager steps go through one paged prefill wrapper: a decode is an extend of one query. Decode-only steps that
replay a CUDA graph (cuda_graphs.py) use decode wrappers bound to that graph's fixed buffers instead. The pool's
[slots, Hkv, D] per-layer tensors are viewed as flashinfer's NHD pages [pages, page_size, Hkv, D].
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from ..batch import ForwardBatch, page_table

# One kernel family for every wrapper: FA2 runs on every GPU from sm75, and a single family means a single JIT
# build (the auto choice would add FA3 on Hopper for prefills, another build of minutes for a model this small).
BACKEND = "fa2"


@dataclass
class StepMeta:
    """What every layer's attention call of one step needs: where the new K/V go, and the planned wrapper."""

    slots: torch.Tensor  # [T] pool slot of each new token
    wrapper: object


class FlashInferAttention:
    def __init__(self, pool, device: torch.device, num_heads: int):
        import flashinfer  # imported only when this backend is chosen

        self._fi = flashinfer
        self.pool = pool
        self.device = device
        self.num_heads = num_heads
        # flashinfer asks for a zeroed float workspace; wrappers share it (one runs at a time, on one stream)
        self.workspace = torch.zeros(128 << 20, dtype=torch.uint8, device=device)
        self.prefill = flashinfer.BatchPrefillWithPagedKVCacheWrapper(self.workspace, "NHD", backend=BACKEND)
        _, slots, hkv, d = pool.k.shape
        self.num_kv_heads, self.head_dim = hkv, d
        self.page_shape = (slots // pool.page_size, pool.page_size, hkv, d)

    def prepare(self, batch: ForwardBatch, device) -> StepMeta:
        ps = self.pool.page_size
        qo = [0]
        for s in batch.seqs:
            qo.append(qo[-1] + s.q_len)
        kv_indptr, kv_indices, last_len = page_table(batch.seqs, ps)
        # plan() reads the page tables on the host and copies what the kernels need
        self.prefill.plan(
            torch.tensor(qo, dtype=torch.int32),
            torch.tensor(kv_indptr, dtype=torch.int32),
            torch.tensor(kv_indices, dtype=torch.int32, device=device),
            torch.tensor(last_len, dtype=torch.int32),
            self.num_heads,
            self.num_kv_heads,
            self.head_dim,
            ps,
            causal=True,
            q_data_type=self.pool.k.dtype,
            kv_data_type=self.pool.k.dtype,
        )
        slots = [slot for s in batch.seqs for slot in s.new_slots(ps)]
        return StepMeta(torch.tensor(slots, dtype=torch.long, device=device), self.prefill)

    def graph_decode_wrapper(self, indptr: torch.Tensor, indices: torch.Tensor, last_len: torch.Tensor):
        """A decode wrapper whose page tables live in the given device buffers, fixed for a CUDA graph's life.
        Tensor cores: the prefill kernels serve decodes too, so no second kernel family is built."""
        return self._fi.BatchDecodeWithPagedKVCacheWrapper(
            self.workspace, "NHD", use_cuda_graph=True, use_tensor_cores=True, backend=BACKEND,
            paged_kv_indptr_buffer=indptr, paged_kv_indices_buffer=indices, paged_kv_last_page_len_buffer=last_len)

    def plan_decode(self, wrapper, indptr: list[int], indices: list[int], last_len: list[int]) -> None:
        wrapper.plan(
            torch.tensor(indptr, dtype=torch.int32),
            torch.tensor(indices, dtype=torch.int32),
            torch.tensor(last_len, dtype=torch.int32),
            self.num_heads,
            self.num_kv_heads,
            self.head_dim,
            self.pool.page_size,
            q_data_type=self.pool.k.dtype,
            kv_data_type=self.pool.k.dtype,
        )

    def native_decode(self, meta: StepMeta) -> None:
        """No C++ decode_layers on this backend (it runs on CUDA; that op is the CPU's)."""
        return None

    def __call__(self, layer: int, q, k, v, meta: StepMeta) -> torch.Tensor:
        kc, vc = self.pool.k[layer], self.pool.v[layer]
        kc[meta.slots] = k
        vc[meta.slots] = v
        out = meta.wrapper.run(q.contiguous(), (kc.view(self.page_shape), vc.view(self.page_shape)))
        return out.reshape(q.shape[0], -1)
