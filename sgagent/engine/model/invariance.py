"""Batch-invariant numerics: whether a step's projections must give each row the same values whatever else
is in the step.

A row's result from a matmul is only reproducible if the kernel reduces it in one fixed order; which kernel
runs, and so which order, is picked by the number of rows. Measured on this project's CPUs (tests/
test_determinism.py checks it on every run, on the model's shapes): with W @ x^T (the orientation the fast path
uses for few rows: MKL/oneDNN are faster that way round there), float32 rows get other values at 1-8 rows than in
a batch of 1,024, and the same from 12 rows up when the count is a multiple of 4; without the padding the rows
past the last multiple of 4 differ. The GGUF-block op (csrc/quant_linear.cpp) computes every output element by
the same sequence of tile products at any row count. So an invariant step takes the GGUF blocks at any row count
where the model has them, and else W @ x^T over max(MIN_ROWS, a multiple of ROW_MULTIPLE) rows, zeros appended:
at prefill sizes that orientation is within 7% of x @ W^T, at 16-64 rows it is the fast path's own, and a decode
of fewer rows pays for 16 (bf16: no slower measured; float32's single stream: bench/RESULTS.md).

The engine runs one step at a time on its compute thread and says for each step which numerics it wants
(ModelRunner.step); the model's weights are shared by with_config engines, so this is not the model's attribute.
"""

from __future__ import annotations

import contextlib
from contextvars import ContextVar

import torch

# rows are padded to a multiple of ROW_MULTIPLE, and to at least MIN_ROWS: then MKL and oneDNN reduce each row in
# the same order at any count
MIN_ROWS, ROW_MULTIPLE = 16, 4

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
    """x @ weight^T (+ bias) as (weight @ xp^T)^T over the rows padded as above, so each row's value does not
    depend on how many rows there are. The result is a transposed view (as model.llama.project's)."""
    n = x.shape[0]
    extra = max(MIN_ROWS, -(-n // ROW_MULTIPLE) * ROW_MULTIPLE) - n
    # row-major always: oneDNN's bf16 kernel for a column-major x (an attention output's view) reduces otherwise
    # (measured on AVX2), and only the unpadded counts would pass it through as it is
    xp = torch.cat((x, x.new_zeros(extra, x.shape[1]))) if extra else x.contiguous()
    y = torch.mm(weight, xp.t()).t()[:n]
    return y if bias is None else y + bias
