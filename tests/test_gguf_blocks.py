"""GGUF Q4_1/Q8_0 matrices multiplied in their blocks (model/quantized.py, csrc/quant_linear.cpp): the weights
multiplied are exactly the dense bf16 model's, products match a dense matmul, and the engine on the blocks gives
the engine-on-dense-weights' tokens."""

from __future__ import annotations

import asyncio

import numpy as np
import pytest
import pytest_asyncio
import torch

import sgagent
from sgagent.engine.cpu_ops import cpu_ops
from sgagent.engine.model.llama import _cat_blocks
from sgagent.engine.model.quantized import BLOCK_BYTES, Q4_1, Q8_0, QuantWeight, pack, packable

QTYPES = {"Q4_1": Q4_1, "Q8_0": Q8_0}
PROMPTS = ["The capital of France is", "def fib(n):", "Three colors of the rainbow:", "Once upon a time"]


@pytest.fixture(scope="module")
def ops():
    ops = cpu_ops()
    assert ops is not None, "the C++ ops did not build here (see the cpu_ops.unavailable log line)"
    return ops


@pytest.fixture(params=["amx", "portable"])
def fast(request, ops):
    """Both paths of the op: AMX tiles (where this CPU has them) and the portable loop."""
    if request.param == "amx" and not ops.quant_linear_fast():
        # hardware, like the CUDA-only tests: the portable case of each test still runs here
        pytest.skip("this CPU has no AMX (or the kernel may not request its tile state)")
    return request.param == "amx"


def random_blocks(qtype: int, n: int, k: int, seed: int = 0) -> QuantWeight:
    """GGUF rows of random blocks: fp16 scales (and Q4_1 minimums), random quants."""
    rng = np.random.default_rng(seed)
    nb = n * k // 32
    d = (rng.uniform(0.001, 0.1, nb) * rng.choice([-1, 1], nb)).astype(np.float16).view(np.uint8).reshape(nb, 2)
    if qtype == Q4_1:
        m = rng.uniform(-0.5, 0.5, nb).astype(np.float16).view(np.uint8).reshape(nb, 2)
        blocks = np.concatenate([d, m, rng.integers(0, 256, (nb, 16), dtype=np.uint8)], axis=1)
    else:
        blocks = np.concatenate([d, rng.integers(0, 256, (nb, 32), dtype=np.uint8)], axis=1)
    return QuantWeight(qtype, blocks.reshape(n, k // 32 * BLOCK_BYTES[qtype]))


def dense_fp32(w: QuantWeight) -> torch.Tensor:
    """What the engine's dense float32 path holds: gguf-py's float32 dequantization."""
    from gguf.quants import dequantize

    return torch.from_numpy(dequantize(w.rows, w.qtype).reshape(w.shape).astype(np.float32))


def dense_bf16(w: QuantWeight) -> torch.Tensor:
    """What the engine's dense bf16 path holds: the float32 values rounded to bf16."""
    return dense_fp32(w).bfloat16()


def multiply(ops, w: QuantWeight, x: torch.Tensor, fast: bool) -> torch.Tensor:
    p = pack(w)
    return ops.quant_linear(x, p.tiles, p.qtype, p.n, p.k, fast)


@pytest.mark.parametrize("qtype", QTYPES.values(), ids=QTYPES.keys())
def test_multiplied_weights_are_the_dense_bf16_values(ops, fast, qtype):
    # x = I: each output is one weight times 1.0 (the other products are zeros), so y = W^T bit for bit
    w = random_blocks(qtype, 48, 96)
    y = multiply(ops, w, torch.eye(96, dtype=torch.bfloat16), fast)
    assert torch.equal(y, dense_bf16(w).t())


@pytest.mark.parametrize("qtype", QTYPES.values(), ids=QTYPES.keys())
def test_products_match_a_dense_matmul(ops, fast, qtype):
    # 48 outputs = 3 panels of 16 (an odd one left per thread); rows cover padding (5, 17, 33, 100) and full
    # blocks of 16, one and several passes over the panels
    w = random_blocks(qtype, 48, 96, seed=1)
    dense = dense_bf16(w).float()
    g = torch.Generator().manual_seed(0)
    for rows in (1, 5, 16, 17, 33, 64, 100):
        x = torch.randn(rows, 96, generator=g).bfloat16()
        want = x.float() @ dense.t()
        got = multiply(ops, w, x, fast)
        assert got.shape == (rows, 48) and got.dtype == torch.bfloat16
        # float32 sums in another order, then one rounding to bf16
        assert ((got.float() - want).abs() <= want.abs() * 2**-8 + 1e-4 * want.abs().max()).all(), rows
    # a strided x (a transposed view) reads the same values
    x = torch.randn(96, 7, generator=g).bfloat16().t()
    assert torch.equal(multiply(ops, w, x, fast), multiply(ops, w, x.contiguous(), fast))


def test_default_model_matrices_are_its_dense_weights(ops, fast, engine):
    """The shipped file's Q4_1 projections and Q8_0 embedding, read as the engine reads them (q/k unpermuted)."""
    from sgagent.engine.model import gguf_file
    from sgagent.engine.model.source import resolve

    src = resolve(engine.model_path)
    blocks = gguf_file.read_block_quantized(src.path, src.config)
    dense = gguf_file.read_tensors(src.path, src.config)
    for name in ("model.layers.3.self_attn.q_proj.weight", "model.layers.3.mlp.down_proj.weight",
                 "model.embed_tokens.weight"):
        w = blocks[name]
        w = QuantWeight(w.qtype, w.rows[:256])  # 256 output rows of each is plenty, and keeps the test quick
        k = w.shape[1]
        y = multiply(ops, w, torch.eye(k, dtype=torch.bfloat16), fast)
        assert torch.equal(y, dense[name][:256].bfloat16().t()), name
    assert {blocks[n].qtype for n in blocks} == {Q4_1, Q8_0}


def test_bad_operands_are_refused(ops):
    w = pack(random_blocks(Q4_1, 32, 64))
    x = torch.zeros(2, 64, dtype=torch.bfloat16)
    with pytest.raises(RuntimeError, match="bfloat16 or float32"):
        ops.quant_linear(x.half(), w.tiles, w.qtype, 32, 64)
    with pytest.raises(RuntimeError, match=r"\[M, K\]"):
        ops.quant_linear(torch.zeros(2, 32, dtype=torch.bfloat16), w.tiles, w.qtype, 32, 64)
    with pytest.raises(RuntimeError, match="tiles of this qtype"):
        ops.quant_linear(x, w.tiles, Q8_0, 32, 64)
    with pytest.raises(RuntimeError, match="qtype"):
        ops.quant_linear(x, w.tiles, 2, 32, 64)
    assert not packable(random_blocks(Q4_1, 24, 64))  # 24 rows: not whole panels of 16; stays dense
    assert not packable(QuantWeight(12, np.zeros((16, 144), dtype=np.uint8)))  # Q4_K: no kernel, stays dense
    with pytest.raises(ValueError, match="ggml type"):
        pack(QuantWeight(2, np.zeros((16, 18), dtype=np.uint8)))


def test_a_fused_matrix_needs_one_block_type():
    a, b = random_blocks(Q4_1, 16, 64), random_blocks(Q8_0, 16, 64)
    assert _cat_blocks([a, b]) is None
    both = _cat_blocks([a, random_blocks(Q4_1, 32, 64, seed=2)])
    assert both.qtype == Q4_1 and both.shape == (48, 64)


@pytest_asyncio.fixture(scope="module")
async def bf16_pair():
    """The default model in bf16 with its GGUF blocks (where the CPU allows) and without."""
    blocks = sgagent.Engine(kv_cache_bytes=16 << 20, dtype="bfloat16")
    dense = sgagent.Engine(kv_cache_bytes=16 << 20, dtype="bfloat16", gguf_blocks=False)
    yield blocks, dense
    await blocks.aclose()
    await dense.aclose()


async def test_engine_on_blocks_gives_the_dense_engines_tokens(bf16_pair, engine):
    blocks, dense = bf16_pair
    fast = blocks.runner.cpu_ops is not None and blocks.runner.cpu_ops.quant_linear_fast()
    model = blocks.runner.model
    attached = [m for m in model.modules() if getattr(m, "packed", None) is not None]
    # every projection of the 30 layers (qkv, o, gate_up, down) and the tied lm_head, or none without AMX
    assert len(attached) == (4 * 30 + 1 if fast else 0)
    assert dense.runner.model.packed is None  # off
    # float32 takes the blocks by default where its kernel is AVX-512's (as fast as MKL at many rows)
    assert (engine.runner.model.packed is not None) == engine.runner.cpu_ops.quant_linear_fp32_wide()
    with pytest.raises(ValueError, match="gguf_blocks"):
        blocks.with_config(gguf_blocks=False)
    for p in PROMPTS:
        a = await blocks.generate(p, max_tokens=24, temperature=0.0, logprobs=True)
        b = await dense.generate(p, max_tokens=24, temperature=0.0, logprobs=True)
        assert a.token_ids == b.token_ids, p
        assert a.logprobs == pytest.approx(b.logprobs, abs=0.05)


@pytest.mark.parametrize("qtype", QTYPES.values(), ids=QTYPES.keys())
def test_float32_products_are_the_dense_float32_model_and_row_invariant(ops, qtype):
    """quant_linear_fp32.cpp: the weights multiplied are gguf-py's float32 values bit for bit, the products are
    a dense matmul's up to the order of the sums, and a row's values do not depend on the other rows."""
    w = random_blocks(qtype, 48, 96, seed=2)
    dense = dense_fp32(w)
    assert torch.equal(multiply(ops, w, torch.eye(96), True), dense.t())
    g = torch.Generator().manual_seed(0)
    x = torch.randn(130, 96, generator=g)  # 130: two blocks of 64 rows, then an odd pair
    together = multiply(ops, w, x, True)
    assert together.dtype == torch.float32 and together.shape == (130, 48)
    want = x @ dense.t()
    assert ((together - want).abs() <= 1e-5 * want.abs().max()).all()
    for rows in (1, 2, 3, 17, 64, 65):
        assert torch.equal(multiply(ops, w, x[-rows:], True), together[-rows:]), rows
    assert torch.equal(multiply(ops, w, x[3:40:3], True), together[3:40:3])  # odd rows in pairs and alone


@pytest.mark.parametrize("qtype", QTYPES.values(), ids=QTYPES.keys())
def test_float32_fast_path_gives_the_portable_loops_bits(ops, qtype):
    # K = 1536: AVX-512 cuts the chains into column segments and x into blocks of 84 rows; 200 rows cross both
    w = random_blocks(qtype, 48, 1536, seed=3)
    x = torch.randn(200, 1536, generator=torch.Generator().manual_seed(1))
    fast = multiply(ops, w, x, True)
    assert torch.equal(fast, multiply(ops, w, x, False))
    for rows in (1, 2, 3, 4, 85, 200):
        assert torch.equal(multiply(ops, w, x[:rows], True), fast[:rows]), rows


@pytest_asyncio.fixture(scope="module")
async def fp32_pair():
    """The default model in float32 on its GGUF blocks and on its dense weights."""
    blocks = sgagent.Engine(kv_cache_bytes=16 << 20, dtype="float32", gguf_blocks=True)
    dense = sgagent.Engine(kv_cache_bytes=16 << 20, dtype="float32", gguf_blocks=False)
    yield blocks, dense
    await blocks.aclose()
    await dense.aclose()


async def test_float32_engine_on_blocks_gives_the_dense_engines_tokens(fp32_pair):
    fp32_blocks, dense = fp32_pair
    model = fp32_blocks.runner.model
    assert fp32_blocks.runner.dtype == torch.float32 == dense.runner.dtype
    assert len([m for m in model.modules() if getattr(m, "packed", None) is not None]) == 4 * 30 + 1
    assert dense.runner.model.packed is None
    alone = []
    for p in PROMPTS:
        a = await fp32_blocks.generate(p, max_tokens=24, temperature=0.0, logprobs=True)
        b = await dense.generate(p, max_tokens=24, temperature=0.0, logprobs=True)
        assert a.token_ids == b.token_ids, p
        assert a.logprobs == pytest.approx(b.logprobs, abs=1e-3)
        alone.append(a)
    # batch invariance holds on the blocks: the four at once give each one's tokens and logprobs bit for bit
    together = await asyncio.gather(*(fp32_blocks.generate(p, max_tokens=24, temperature=0.0, logprobs=True)
                                      for p in PROMPTS))
    assert [(r.token_ids, r.logprobs) for r in together] == [(r.token_ids, r.logprobs) for r in alone]
