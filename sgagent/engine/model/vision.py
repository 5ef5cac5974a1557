"""Vision towers: the ViT encoders of CLIP, SigLIP and Idefics3 (SigLIP at variable resolution), batched over images.

All three are the same pre-norm transformer over patch embeddings; they differ in a class token and a norm before
the layers (CLIP), a patch-embedding bias (SigLIP) and how positions are numbered (Idefics3 buckets the patches of
a smaller or padded image onto the full grid). Attention is bidirectional, in torch's SDPA.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn

from ...errors import UnsupportedArchitectureError

ACTIVATIONS = {
    "quick_gelu": lambda x: x * torch.sigmoid(1.702 * x),
    "gelu": F.gelu,
    "gelu_pytorch_tanh": lambda x: F.gelu(x, approximate="tanh"),
    "gelu_new": lambda x: 0.5 * x * (1.0 + torch.tanh(math.sqrt(2.0 / math.pi) * (x + 0.044715 * x.pow(3)))),
}

# vision_config.model_type -> (class token and pre-norm, patch-embedding bias, bucketed positions)
TOWERS = {
    "clip_vision_model": (True, False, False),
    "siglip_vision_model": (False, True, False),
    "idefics3_vision": (False, True, True),
}


def activation(name: str):
    if name not in ACTIVATIONS:
        raise UnsupportedArchitectureError(f"activation {name!r} is not supported; supported: {sorted(ACTIVATIONS)}")
    return ACTIVATIONS[name]


class VisionAttention(nn.Module):
    def __init__(self, dim: int, heads: int):
        super().__init__()
        self.heads = heads
        self.q_proj, self.k_proj, self.v_proj, self.out_proj = (nn.Linear(dim, dim) for _ in range(4))

    def forward(self, x: torch.Tensor, mask: torch.Tensor | None) -> torch.Tensor:
        b, n, d = x.shape
        q, k, v = (p(x).view(b, n, self.heads, -1).transpose(1, 2) for p in (self.q_proj, self.k_proj, self.v_proj))
        out = F.scaled_dot_product_attention(q, k, v, attn_mask=mask)
        return self.out_proj(out.transpose(1, 2).reshape(b, n, d))


class VisionMLP(nn.Module):
    def __init__(self, dim: int, inner: int, act):
        super().__init__()
        self.fc1, self.fc2, self.act = nn.Linear(dim, inner), nn.Linear(inner, dim), act

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc2(self.act(self.fc1(x)))


class VisionLayer(nn.Module):
    def __init__(self, dim: int, heads: int, inner: int, eps: float, act):
        super().__init__()
        self.layer_norm1, self.layer_norm2 = nn.LayerNorm(dim, eps=eps), nn.LayerNorm(dim, eps=eps)
        self.self_attn = VisionAttention(dim, heads)
        self.mlp = VisionMLP(dim, inner, act)

    def forward(self, x: torch.Tensor, mask: torch.Tensor | None) -> torch.Tensor:
        x = x + self.self_attn(self.layer_norm1(x), mask)
        return x + self.mlp(self.layer_norm2(x))


class VisionEmbeddings(nn.Module):
    def __init__(self, cfg, class_token: bool, bias: bool):
        super().__init__()
        dim, self.patch = cfg.hidden_size, cfg.patch_size
        self.side = cfg.image_size // cfg.patch_size  # patches per side of the grid the positions were trained on
        self.patch_embedding = nn.Conv2d(cfg.num_channels, dim, cfg.patch_size, cfg.patch_size, bias=bias)
        self.class_embedding = nn.Parameter(torch.zeros(dim)) if class_token else None
        self.position_embedding = nn.Embedding(self.side**2 + int(class_token), dim)

    def forward(self, pixels: torch.Tensor, patch_mask: torch.Tensor | None, bucketed: bool) -> torch.Tensor:
        x = self.patch_embedding(pixels.to(self.patch_embedding.weight.dtype)).flatten(2).transpose(1, 2)
        if bucketed:
            return x + self.position_embedding(self._bucketed_positions(patch_mask))
        if x.shape[1] != self.side**2:
            raise UnsupportedArchitectureError(
                f"images of {pixels.shape[-2]}x{pixels.shape[-1]} px do not fit this tower's "
                f"{self.side * self.patch} px grid (the processor should have resized them)")
        if self.class_embedding is not None:
            x = torch.cat([self.class_embedding.expand(x.shape[0], 1, -1).to(x.dtype), x], dim=1)
        return x + self.position_embedding.weight[None, : x.shape[1]]

    def _bucketed_positions(self, patch_mask: torch.Tensor) -> torch.Tensor:
        """Idefics3 / NaViT: each real patch's fractional place in its image, bucketed onto the trained grid;
        padding patches take position 0 (they are masked out of attention)."""
        b, rows, cols = patch_mask.shape
        dev = patch_mask.device
        bounds = torch.arange(1 / self.side, 1.0, 1 / self.side, device=dev)
        h = patch_mask[:, :, 0].sum(1)
        w = patch_mask[:, 0, :].sum(1)
        fh = (torch.arange(rows, device=dev, dtype=torch.float32)[None] * (1.0 / h)[:, None]).clamp(max=1 - 1e-6)
        fw = (torch.arange(cols, device=dev, dtype=torch.float32)[None] * (1.0 / w)[:, None]).clamp(max=1 - 1e-6)
        ids = (torch.bucketize(fh, bounds, right=True)[:, :, None] * self.side
               + torch.bucketize(fw, bounds, right=True)[:, None, :]).reshape(b, -1)
        return torch.where(patch_mask.reshape(b, -1), ids, torch.zeros_like(ids))


class VisionTower(nn.Module):
    """Runs `depth` of its layers (a LLaVA projector reads an inner layer: the ones after it are never run).
    forward returns the hidden states after each run layer asked for by `take` (indices as in transformers'
    hidden_states, 0 being the embeddings), or the post-layernormed last one when take is None."""

    def __init__(self, cfg, depth: int | None = None):
        super().__init__()
        kind = getattr(cfg, "model_type", None)
        if kind not in TOWERS:
            raise UnsupportedArchitectureError(f"vision tower {kind!r} is not supported; supported: {sorted(TOWERS)}")
        class_token, bias, self.bucketed = TOWERS[kind]
        eps, act = cfg.layer_norm_eps, activation(cfg.hidden_act)
        self.patch_size = cfg.patch_size
        self.embeddings = VisionEmbeddings(cfg, class_token, bias)
        self.pre_layrnorm = nn.LayerNorm(cfg.hidden_size, eps=eps) if class_token else None
        depth = cfg.num_hidden_layers if depth is None else depth
        self.layers = nn.ModuleList(VisionLayer(cfg.hidden_size, cfg.num_attention_heads, cfg.intermediate_size, eps,
                                                act) for _ in range(depth))
        self.post_layernorm = nn.LayerNorm(cfg.hidden_size, eps=eps)

    def forward(self, pixels: torch.Tensor, pixel_mask: torch.Tensor | None = None,
                take: list[int] | None = None) -> list[torch.Tensor] | torch.Tensor:
        patch_mask = None
        if self.bucketed:
            if pixel_mask is None:
                pixel_mask = torch.ones(pixels.shape[0], *pixels.shape[2:], dtype=torch.bool, device=pixels.device)
            p = self.patch_size
            patch_mask = pixel_mask.unfold(1, p, p).unfold(2, p, p).sum((-1, -2)) > 0
        x = self.embeddings(pixels, patch_mask, self.bucketed)
        if self.pre_layrnorm is not None:
            x = self.pre_layrnorm(x)
        mask = None
        if patch_mask is not None and not bool(patch_mask.all()):
            mask = patch_mask.reshape(x.shape[0], 1, 1, -1)
        states = [x]
        for layer in self.layers:
            x = layer(x, mask)
            if take is not None:
                states.append(x)
        if take is None:
            return self.post_layernorm(x)
        return [states[i] for i in take]
