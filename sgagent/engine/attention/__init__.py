"""Attention backends behind one interface: prepare(batch) once per step, then __call__ per layer."""

from __future__ import annotations

import torch


def make_backend(name: str, pool, device: torch.device, num_heads: int, dtype=torch.float32, share_prefixes=True):
    if name == "auto":
        # flashinfer's kernels take half-precision inputs only
        half = dtype in (torch.float16, torch.bfloat16)
        name = "flashinfer" if device.type == "cuda" and half and _flashinfer_usable(device) else "torch"
    if name == "torch":
        from .torch_backend import TorchAttention

        return TorchAttention(pool, num_heads, share_prefixes)
    if name == "flashinfer":
        from .flashinfer_backend import FlashInferAttention

        return FlashInferAttention(pool, device, num_heads)
    raise ValueError(f"unknown attention backend {name!r} (auto, torch, flashinfer)")


def _flashinfer_usable(device: torch.device) -> bool:
    if torch.cuda.get_device_capability(device) < (7, 5):
        return False
    try:
        import flashinfer  # noqa: F401
    except ImportError:
        return False
    return True
