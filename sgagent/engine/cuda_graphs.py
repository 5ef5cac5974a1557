"""CUDA graphs of decode steps: one graph per padded batch size, all captured when the engine starts.

A decode step of a small model is bound by kernel launches on a GPU: about 20 kernels per layer of a few
microseconds each, every one launched from Python. A captured graph launches the whole forward at once.
Only decode-only steps replay graphs (one new token per sequence); prefills and mixed steps run eagerly.
Token ids, positions and KV slots reach a graph through fixed input buffers, page tables through the
flashinfer decode wrapper bound to that graph (planned on the host before each replay). Padding rows attend
page 0, which the pool never hands out, and write their K/V there.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from .attention.flashinfer_backend import StepMeta
from .batch import ForwardBatch, page_table

SIZES = (1, 2, 4, 8, 12, 16, 24, 32, 40, 48, 56, 64, 80, 96, 112, 128, 160, 192, 224, 256)


@dataclass
class _Graph:
    graph: torch.cuda.CUDAGraph
    wrapper: object
    logits: torch.Tensor  # [bs, vocab] float32, rewritten by every replay


class DecodeGraphs:
    def __init__(self, model, attn, max_batch: int, max_pages_per_seq: int):
        self.model, self.attn = model, attn
        self.max_batch = max_batch
        self.sizes = [s for s in SIZES if s < max_batch] + [max_batch]
        dev = attn.device
        self.inputs = torch.zeros(3, max_batch, dtype=torch.long, device=dev)  # token ids, positions, KV slots
        self.indptr = torch.zeros(max_batch + 1, dtype=torch.int32, device=dev)
        self.indices = torch.zeros(max_batch * max_pages_per_seq, dtype=torch.int32, device=dev)
        self.last_len = torch.ones(max_batch, dtype=torch.int32, device=dev)
        self.graphs: dict[int, _Graph] = {}
        self.mempool = torch.cuda.graph_pool_handle()  # graphs replay one at a time: they can share memory
        self.replays = 0

    def capture_all(self) -> None:
        for bs in reversed(self.sizes):  # largest first: the smaller ones then fit in the memory it pooled
            self._capture(bs)

    def fits(self, batch: ForwardBatch) -> bool:
        n = len(batch.seqs)
        return 0 < n <= self.max_batch and batch.num_tokens == n

    def run(self, batch: ForwardBatch) -> torch.Tensor:
        """Next-token logits [n, vocab] (float32) for a decode-only batch of n sequences, by graph replay."""
        n = len(batch.seqs)
        bs = next(s for s in self.sizes if s >= n)
        ps = self.attn.pool.page_size
        indptr, indices, last_len = page_table(batch.seqs, ps)
        slots = [s.new_slots(ps)[0] for s in batch.seqs]
        pad = bs - n
        indices.extend([0] * pad)
        indptr.extend(range(indptr[-1] + 1, indptr[-1] + pad + 1))
        last_len.extend([1] * pad)
        host = torch.tensor([batch.input_ids + [0] * pad, batch.positions + [0] * pad, slots + [0] * pad])
        self.inputs[:, :bs].copy_(host)
        g = self.graphs[bs]
        self.attn.plan_decode(g.wrapper, indptr, indices, last_len)
        g.graph.replay()
        self.replays += 1
        return g.logits[:n]

    def _forward(self, bs: int, wrapper) -> torch.Tensor:
        ids, pos, slots = self.inputs[0, :bs], self.inputs[1, :bs], self.inputs[2, :bs]
        hidden = self.model(ids, pos, self.attn, StepMeta(slots, wrapper))
        return self.model.logits(hidden)

    def _capture(self, bs: int) -> None:
        wrapper = self.attn.graph_decode_wrapper(self.indptr[: bs + 1], self.indices, self.last_len[:bs])
        # captured on a plan of one padding page per row; a plan in graph mode keeps the launch shape fixed
        self.attn.plan_decode(wrapper, list(range(bs + 1)), [0] * bs, [1] * bs)
        self.inputs[:, :bs].zero_()
        side = torch.cuda.Stream()
        side.wait_stream(torch.cuda.current_stream())
        with torch.cuda.stream(side):  # warm-up outside the capture: kernel loads, library handles
            self._forward(bs, wrapper)
        torch.cuda.current_stream().wait_stream(side)
        graph = torch.cuda.CUDAGraph()
        with torch.cuda.graph(graph, pool=self.mempool):
            logits = self._forward(bs, wrapper)
        self.graphs[bs] = _Graph(graph, wrapper, logits)
