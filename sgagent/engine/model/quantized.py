"""GGUF block-quantized weights kept in their blocks for the CPU's quant_linear op (csrc/quant_linear.cpp).

A decode step on CPU is bound by reading the weights: the default model's Q4_1 projections and Q8_0 lm_head
are 97 MB a step in their blocks against 271 MB as dense bf16. The op dequantizes a tile at a time to the very
bf16 values the dense model holds (gguf-py's arithmetic, then round-to-nearest-even), so it is the same model.
Here the GGUF rows are rearranged into the op's tiles once, at load time.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch

Q4_1, Q8_0 = 3, 8  # ggml's type numbers
BLOCK_BYTES = {Q4_1: 20, Q8_0: 34}  # a block of 32 weights: fp16 d (and m for Q4_1), then the quants


@dataclass
class QuantWeight:
    """A [N, K] weight as GGUF rows (each row K/32 blocks), before packing; rows may be permuted/concatenated."""

    qtype: int
    rows: np.ndarray  # uint8 [N, K / 32 * BLOCK_BYTES[qtype]]

    @property
    def shape(self) -> tuple[int, int]:
        return self.rows.shape[0], self.rows.shape[1] // BLOCK_BYTES[self.qtype] * 32


@dataclass
class PackedWeight:
    """The op's operand: [N/16, K/32] tiles of 16 output rows x 32 inputs (layout in csrc/quant_linear.cpp)."""

    qtype: int
    n: int
    k: int
    tiles: torch.Tensor  # uint8, contiguous

    def __call__(self, x: torch.Tensor, ops, bias: torch.Tensor | None = None) -> torch.Tensor:
        y = ops.quant_linear(x, self.tiles, self.qtype, self.n, self.k)
        return y if bias is None else y + bias


def packable(w: QuantWeight) -> bool:
    """Whether the op takes this matrix: a block type it knows, whole panels of 16 outputs."""
    return w.qtype in BLOCK_BYTES and w.shape[0] % 16 == 0 and w.shape[1] % 32 == 0


def pack(w: QuantWeight) -> PackedWeight:
    if w.qtype not in BLOCK_BYTES:
        raise ValueError(f"no packing for ggml type {w.qtype}")
    n, k = w.shape
    nt, kb = n // 16, k // 32
    blocks = w.rows.reshape(n, kb, BLOCK_BYTES[w.qtype])

    def rows_per_tile(field: np.ndarray) -> np.ndarray:  # [n, kb, B] -> [nt, kb, 16 B]: the tile's rows
        return field.reshape(nt, 16, kb, -1).transpose(0, 2, 1, 3).reshape(nt, kb, -1)

    if w.qtype == Q4_1:
        parts = (rows_per_tile(blocks[..., 0:2]), rows_per_tile(blocks[..., 2:4]), rows_per_tile(blocks[..., 4:]))
    else:
        parts = (rows_per_tile(blocks[..., 0:2]), rows_per_tile(blocks[..., 2:]))
    tiles = np.ascontiguousarray(np.concatenate(parts, axis=-1))
    return PackedWeight(w.qtype, n, k, torch.from_numpy(tiles))
