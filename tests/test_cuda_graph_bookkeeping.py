"""The CUDA-graph decode path's bookkeeping, on CPU: padded batch sizes, fixed input buffers, page tables
planned into a wrapper's buffers before each replay, padding rows on page 0.

CI has no GPU, so two stand-ins take the GPU's place here: a flashinfer module whose wrappers do paged
attention in plain torch (the decode wrapper reads its page tables from the buffers it was given, as the real
one does under a graph), and graphs that record the captured forward and re-run it into the captured output
on replay. Everything else is the engine's own code. The real kernels and graphs are tested on CUDA in
test_flashinfer.py.
"""

import asyncio
import contextlib
import types

import pytest
import torch

from conftest import assert_quiescent


def _attend(q, kc, vc, pages, kv_len):
    """q [n, H, D], the last n of kv_len positions, causal, over the given pages of kc/vc [P, ps, Hkv, D]."""
    k = kc[pages].reshape(-1, *kc.shape[2:])[:kv_len]
    v = vc[pages].reshape(-1, *vc.shape[2:])[:kv_len]
    g = q.shape[1] // k.shape[1]
    k, v = k.repeat_interleave(g, 1).float(), v.repeat_interleave(g, 1).float()
    s = torch.einsum("nhd,khd->hnk", q.float(), k) / q.shape[-1] ** 0.5
    n = q.shape[0]
    s = s.masked_fill(torch.arange(kv_len)[None, :] > torch.arange(kv_len - n, kv_len)[:, None], float("-inf"))
    return torch.einsum("hnk,khd->nhd", s.softmax(-1), v).to(q.dtype)


class _Prefill:
    def __init__(self, workspace, layout, backend=None):
        pass

    def plan(self, qo, indptr, indices, last_len, h, hkv, d, ps, causal, q_data_type, kv_data_type):
        self.qo, self.indptr, self.indices = qo.tolist(), indptr.tolist(), indices.tolist()
        self.last_len, self.ps = last_len.tolist(), ps

    def run(self, q, kv):
        out = []
        for i in range(len(self.qo) - 1):
            pages = self.indices[self.indptr[i] : self.indptr[i + 1]]
            kv_len = (len(pages) - 1) * self.ps + self.last_len[i]
            out.append(_attend(q[self.qo[i] : self.qo[i + 1]], *kv, pages, kv_len))
        return torch.cat(out)


class _GraphDecode:
    def __init__(self, workspace, layout, use_cuda_graph, use_tensor_cores, backend, paged_kv_indptr_buffer,
                 paged_kv_indices_buffer, paged_kv_last_page_len_buffer):
        assert use_cuda_graph
        self.indptr, self.indices, self.last_len = (paged_kv_indptr_buffer, paged_kv_indices_buffer,
                                                    paged_kv_last_page_len_buffer)

    def plan(self, indptr, indices, last_len, h, hkv, d, ps, q_data_type, kv_data_type):
        # the real wrapper refuses another batch size under a graph
        assert len(last_len) == len(self.last_len) and len(indptr) == len(self.indptr)
        self.indptr.copy_(indptr)
        self.last_len.copy_(last_len)
        self.indices[: len(indices)].copy_(indices)
        self.ps = ps

    def run(self, q, kv):  # reads the tables at run time, like a replayed kernel
        indptr, indices, last_len = self.indptr.tolist(), self.indices.tolist(), self.last_len.tolist()
        out = []
        for i in range(q.shape[0]):
            pages = indices[indptr[i] : indptr[i + 1]]
            out.append(_attend(q[i : i + 1], *kv, pages, (len(pages) - 1) * self.ps + last_len[i]))
        return torch.cat(out)


@pytest.fixture
def stand_ins(monkeypatch):
    import sgagent.engine.cuda_graphs as cg

    fake = types.ModuleType("flashinfer")
    fake.BatchPrefillWithPagedKVCacheWrapper = _Prefill
    fake.BatchDecodeWithPagedKVCacheWrapper = _GraphDecode
    monkeypatch.setitem(__import__("sys").modules, "flashinfer", fake)

    capturing = []

    class Graph:
        def replay(self):
            self.out.copy_(forward(*self.args))

    @contextlib.contextmanager
    def graph(g, pool=None):
        capturing.append(g)
        yield
        capturing.pop()

    forward = cg.DecodeGraphs._forward

    def recording_forward(self, bs, wrapper):
        out = forward(self, bs, wrapper)
        if capturing:
            capturing[-1].args, capturing[-1].out = (self, bs, wrapper), out
        return out

    class Stream:
        def wait_stream(self, other):
            pass

    monkeypatch.setattr(cg.DecodeGraphs, "_forward", recording_forward)
    monkeypatch.setattr(torch.cuda, "CUDAGraph", Graph)
    monkeypatch.setattr(torch.cuda, "graph", graph)
    monkeypatch.setattr(torch.cuda, "graph_pool_handle", lambda: None)
    monkeypatch.setattr(torch.cuda, "Stream", Stream)
    monkeypatch.setattr(torch.cuda, "current_stream", lambda: Stream())
    monkeypatch.setattr(torch.cuda, "stream", lambda s: contextlib.nullcontext())
    return cg


async def test_graph_replays_give_the_torch_backends_tokens(engine, stand_ins):
    ref = engine.with_config(kv_cache_bytes=64 << 20, max_running_requests=24)
    fi = engine.with_config(kv_cache_bytes=64 << 20, max_running_requests=24, attention_backend="flashinfer")
    try:
        fi.runner.graphs = stand_ins.DecodeGraphs(fi.runner.model, fi.runner.attn, 24, 64)
        fi.runner.graphs.capture_all()
        assert sorted(fi.runner.graphs.graphs) == [1, 2, 4, 8, 12, 16, 24]
        # 21 requests of mixed lengths: padded to 24, then fewer and fewer as they finish; contexts cross pages
        texts = [f"Story {i}: once upon a time" + " again" * (i % 7) for i in range(21)]
        lens = [10 + 7 * (i % 4) for i in range(21)]

        async def run(e):
            return await asyncio.gather(*(e.generate(t, max_tokens=n, temperature=0, logprobs=True,
                                                     ignore_eos=True) for t, n in zip(texts, lens)))

        a, b = await run(ref), await run(fi)
        assert fi.runner.graphs.replays >= 25  # most steps were decode-only graph replays
        for x, y in zip(a, b):
            assert x.token_ids == y.token_ids
            assert x.logprobs == pytest.approx(y.logprobs, abs=1e-3)
        assert_quiescent(fi)
    finally:
        await ref.aclose()
        await fi.aclose()
