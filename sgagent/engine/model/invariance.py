"""Batch-invariant numerics: whether a step's projections must give each row the same values whatever else
is in the step.

A row's result from a matmul is only reproducible if the kernel reduces it in one fixed order; which kernel
runs, and so which order, MKL and oneDNN pick from the shape and the thread count. Measured on this project's
CPUs (tests/test_determinism.py checks it on every run, on the model's shapes), no padding rule makes every row
count reduce alike: float32 rows got other values at 1-8 rows than in a batch of 1,024; rows padded to a multiple
of 4 and to 16 still differed at 60-192 rows for K=1536 (float32, 2 threads), and in bfloat16 at 256-340 rows or
from 580 or 1,156 rows, depending on K and the threads. So the only shape an invariant step gives a dense product
is one: blocks of exactly BLOCK_ROWS rows, the last one padded with zeros. Each row is then reduced by the same
kernel whatever the step holds. That costs about nothing in float32 (prefill of 1,024 rows on the default model's
shapes: 20.2 ms against 19.8 ms for one product) and 1.14x in bfloat16 (10.0 against 8.8 ms). The GGUF-block op
(csrc/quant_linear.cpp) computes every output element by the same sequence of tile products at any row count,
so an invariant step takes the GGUF blocks at any row count where the model has them.

The engine runs one step at a time on its compute thread and says for each step which numerics it wants
(ModelRunner.step); the model's weights are shared by with_config engines, so this is not the model's attribute.
"""

from __future__ import annotations

import contextlib
from contextvars import ContextVar

import torch

# every dense product of an invariant step is W @ x^T over exactly this many rows (the orientation MKL and oneDNN
# are faster in for few rows, so a decode's step pays little for its padding)
BLOCK_ROWS = 16

_invariant: ContextVar[bool] = ContextVar("sgagent_batch_invariant", default=False)


def batch_invariant() -> bool:
    return _invariant.get()


@contextlib.contextmanager
def invariant_numerics(on: bool):
    token = _invariant.set(on)
    try:
        yield
    finally:
        _invariant.reset(token)


def padded_project(x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None = None) -> torch.Tensor:
    """x @ weight^T (+ bias) as (weight @ block^T)^T over blocks of BLOCK_ROWS rows, so each row's value does not
    depend on how many rows there are. The result is a transposed view (as model.llama.project's)."""
    n = x.shape[0]
    extra = -n % BLOCK_ROWS
    # row-major always: oneDNN's bf16 kernel for a column-major x (an attention output's view) reduces otherwise
    # (measured on AVX2)
    xp = torch.cat((x, x.new_zeros(extra, x.shape[1]))) if extra else x.contiguous()
    y = torch.cat([torch.mm(weight, block.t()) for block in xp.split(BLOCK_ROWS)], dim=1).t()[:n]
    return y if bias is None else y + bias
