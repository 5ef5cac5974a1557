"""Attention that also returns the log-sum-exp of its scores, and the merge of two partial results.

Partial attentions over disjoint key sets combine exactly: weight each output by exp(its lse) and
renormalise. That is what lets a shared prefix be attended once for many queries.
"""

from __future__ import annotations

import torch

_cpu_flash = getattr(torch.ops.aten, "_scaled_dot_product_flash_attention_for_cpu", None)


def mask_bias(mask: torch.Tensor, dtype) -> torch.Tensor:
    """A bool mask (True = attend) as the additive bias attend() takes: 0 where attended, -inf elsewhere."""
    return torch.zeros(mask.shape, dtype=dtype, device=mask.device).masked_fill_(~mask, float("-inf"))


def attend(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, bias: torch.Tensor | None = None):
    """q [B, Hkv, Q, D] against k, v [B, Hkv, L, D]; bias (see mask_bias) broadcasts to [B, Hkv, Q, L].

    Grouped-query heads go in as extra query rows of their key/value head, so K/V are never repeated.
    Returns (out [B, Hkv, Q, D], lse [B, Hkv, Q] in float32).
    """
    if q.device.type == "cpu" and _cpu_flash is not None:
        # the kernel reads rows as if the head dimension were contiguous; CPU projections can hand over
        # transposed views (model.llama.project), so make sure it is
        q, k, v = (t if t.stride(-1) == 1 else t.contiguous() for t in (q, k, v))
        out, lse = _cpu_flash(q, k, v, attn_mask=bias)
        return out, lse.float()
    scores = torch.matmul(q.float(), k.float().transpose(-1, -2)) * q.shape[-1] ** -0.5
    if bias is not None:
        scores = scores + bias.float()
    lse = torch.logsumexp(scores, dim=-1)
    out = torch.matmul(torch.exp(scores - lse[..., None]), v.float())
    return out.to(q.dtype), lse


def merge(o1: torch.Tensor, lse1: torch.Tensor, o2: torch.Tensor, lse2: torch.Tensor) -> torch.Tensor:
    """Combine attention over keys A (o1, lse1) and disjoint keys B (o2, lse2) into attention over A+B.

    lse1 may be -inf (no keys in A) as long as lse2 is finite.
    """
    m = torch.maximum(lse1, lse2)
    w1, w2 = torch.exp(lse1 - m), torch.exp(lse2 - m)
    out = (o1.float() * w1[..., None] + o2.float() * w2[..., None]) / (w1 + w2)[..., None]
    return out.to(o2.dtype)
