"""Batched sampling: greedy, temperature, top-k, top-p, min-p, with per-request seeded generators."""

from __future__ import annotations

import torch

from .request import SamplingParams


def sample(logits: torch.Tensor, params: list[SamplingParams], generators: list) -> torch.Tensor:
    """logits [N, V] float32 (already masked by constraints). Returns token ids [N]."""
    greedy = torch.tensor([p.greedy for p in params])
    out = logits.max(dim=-1).indices  # same first-maximum rule as argmax, and several times faster on CPU
    if bool(greedy.all()):
        return out
    idx = (~greedy).nonzero().flatten()
    sub = [params[i] for i in idx.tolist()]
    x = logits[idx] / torch.tensor([p.temperature for p in sub], device=logits.device)[:, None]
    top_k = [p.top_k for p in sub]
    if any(top_k):
        k = torch.tensor([k if k else x.shape[-1] for k in top_k], device=x.device)
        kth = x.sort(dim=-1, descending=True).values.gather(1, (k - 1)[:, None])
        x = x.masked_fill(x < kth, float("-inf"))
    probs = x.softmax(dim=-1)
    top_p = torch.tensor([p.top_p for p in sub], device=x.device)
    if bool((top_p < 1).any()):
        sp, si = probs.sort(dim=-1, descending=True)
        # drop a token once the mass before it already reaches top_p (the first token always stays)
        drop = (sp.cumsum(-1) - sp) >= top_p[:, None]
        probs = probs.scatter(1, si, sp.masked_fill(drop, 0.0))
    min_p = torch.tensor([p.min_p for p in sub], device=x.device)
    if bool((min_p > 0).any()):
        probs = probs.masked_fill(probs < min_p[:, None] * probs.max(-1, keepdim=True).values, 0.0)
    for row, i in enumerate(idx.tolist()):
        out[i] = torch.multinomial(probs[row], 1, generator=generators[i]).item()
    return out
