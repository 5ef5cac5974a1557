"""Attention backends behind one interface: prepare(batch) once per step, then __call__ per layer."""

from __future__ import annotations

import torch


# head sizes flashinfer's FA2 kernels are built for; others (tiny test models' 16, say) fail inside the kernel
FLASHINFER_HEAD_DIMS = (64, 128, 256)


def make_backend(name: str, pool, device: torch.device, num_heads: int, dtype=torch.float32, share_prefixes=True,
                 cpu_ops=None, invariant=False):
    """cpu_ops: the engine's C++ ops (cpu_ops.cpu_ops()) for the torch backend, or None; the runner passes
    them only on CPU. invariant: every row through the C++ kernel (batch-invariant steps; needs cpu_ops)."""
    head_dim = pool.k.shape[-1]
    if name == "auto":
        # flashinfer's kernels take half-precision inputs only
        half = dtype in (torch.float16, torch.bfloat16)
        fits = half and head_dim in FLASHINFER_HEAD_DIMS
        name = "flashinfer" if device.type == "cuda" and fits and _flashinfer_usable(device) else "torch"
    if name == "torch":
        from .torch_backend import TorchAttention

        return TorchAttention(pool, num_heads, share_prefixes, cpu_ops, invariant)
    if name == "flashinfer":
        if head_dim not in FLASHINFER_HEAD_DIMS:
            raise ValueError(f"flashinfer attention needs a head size in {FLASHINFER_HEAD_DIMS}; this model's is {head_dim}")
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
