"""Batch-invariant numerics: whether a step's projections must give each row the same values whatever else
is in the step.

A row's result from a matmul is only reproducible if the kernel reduces it in one fixed order; which kernel
runs, and so which order, is picked by the number of rows. Measured on this project's CPUs (tests/
test_determinism.py::test_projection_rows_are_batch_invariant checks it on every run): MKL's float32 sgemm gives a
row one value alone, another in 2-3 rows, a third from 4 rows up (the same at every count from 4 to 2048);
oneDNN's bf16 matmul is invariant from 1 row up with these shapes but is padded too, at the cost of 3 zero rows,
since its one-row path is a different kernel; the GGUF-block op (csrc/quant_linear.cpp) computes every output
element by the same sequence of tile products at any row count. So an invariant step takes the GGUF blocks at any
row count where the model has them, and else a dense F.linear over at least PAD_ROWS rows (never mv or the
transposed mm the fast path uses for few rows).

The engine runs one step at a time on its compute thread and says for each step which numerics it wants
(ModelRunner.step); the model's weights are shared by with_config engines, so this is not the model's attribute.
"""

from __future__ import annotations

import contextlib
from contextvars import ContextVar

import torch
import torch.nn.functional as F

# the smallest row count from which MKL's sgemm reduces each row in the same order
PAD_ROWS = 4

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


def padded_linear(x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None = None) -> torch.Tensor:
    """x @ weight^T (+ bias) computed over at least PAD_ROWS rows (zeros appended), so each row's value does not
    depend on how many rows there are."""
    n = x.shape[0]
    if n >= PAD_ROWS:
        return F.linear(x, weight, bias)
    xp = torch.cat((x, x.new_zeros(PAD_ROWS - n, x.shape[1])))
    return F.linear(xp, weight, bias)[:n]
