"""Our forward for the Llama family (Llama, Mistral, Qwen2, Qwen3, SmolLM) over a flattened token batch.

All sequences of a step are concatenated into one [T, hidden] tensor, so every linear layer runs once
per step for the whole batch; only attention looks at sequence boundaries (through the backend).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from .config import ModelConfig

# Up to this many rows, a CPU projection runs as W @ x^T: MKL's sgemm is faster that way round for the few rows
# of a decode step (layers 1.1-2.5x, the lm_head 1.4-4.5x at 4-128 rows: `python -m bench.cpu_projection`);
# at prefill sizes the two are within 7%, and x @ W^T gives the contiguous result the rest expects.
SMALL_ROWS = 128


def project(x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None = None) -> torch.Tensor:
    """x @ weight^T (+ bias) for x [T, in]. The result may be a transposed view; callers that need
    contiguous memory ask for it."""
    if x.device.type == "cpu" and x.dim() == 2 and x.shape[0] <= SMALL_ROWS:
        y = torch.mm(weight, x.t()).t()
        return y if bias is None else y + bias
    return F.linear(x, weight, bias)


class Linear(nn.Linear):
    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return project(x, self.weight, self.bias)


class RMSNorm(nn.Module):
    def __init__(self, dim: int, eps: float):
        super().__init__()
        self.weight = nn.Parameter(torch.ones(dim))
        self.eps = eps

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        dtype = x.dtype
        x = x.float()
        x = x * torch.rsqrt(x.pow(2).mean(-1, keepdim=True) + self.eps)
        return self.weight * x.to(dtype)


def _rotate_half(x):
    a, b = x.chunk(2, dim=-1)
    return torch.cat((-b, a), dim=-1)


class Rotary:
    """cos/sin tables for every position, computed once in float32."""

    def __init__(self, cfg: ModelConfig, max_pos: int, hf_config=None):
        d = cfg.head_dim
        scale = 1.0
        if cfg.rope_scaling and hf_config is not None:
            from transformers.modeling_rope_utils import ROPE_INIT_FUNCTIONS

            inv_freq, scale = ROPE_INIT_FUNCTIONS[cfg.rope_scaling.get("rope_type", "default")](hf_config, "cpu")
        else:
            inv_freq = 1.0 / (cfg.rope_theta ** (torch.arange(0, d, 2, dtype=torch.int64).float() / d))
        freqs = torch.outer(torch.arange(max_pos, dtype=torch.float32), inv_freq.float())
        emb = torch.cat((freqs, freqs), dim=-1)
        self.cos = emb.cos() * scale
        self.sin = emb.sin() * scale

    def to(self, device):
        self.cos, self.sin = self.cos.to(device), self.sin.to(device)
        return self


class Attention(nn.Module):
    def __init__(self, cfg: ModelConfig, layer: int):
        super().__init__()
        self.layer = layer
        self.h, self.hkv, self.d = cfg.num_heads, cfg.num_kv_heads, cfg.head_dim
        b = cfg.qkv_bias
        self.q_proj = Linear(cfg.hidden_size, self.h * self.d, bias=b)
        self.k_proj = Linear(cfg.hidden_size, self.hkv * self.d, bias=b)
        self.v_proj = Linear(cfg.hidden_size, self.hkv * self.d, bias=b)
        self.o_proj = Linear(self.h * self.d, cfg.hidden_size, bias=False)
        if cfg.qk_norm:
            self.q_norm = RMSNorm(self.d, cfg.rms_norm_eps)
            self.k_norm = RMSNorm(self.d, cfg.rms_norm_eps)
        else:
            self.q_norm = self.k_norm = None

    def forward(self, x, cos, sin, attn, meta):
        T = x.shape[0]
        q = self.q_proj(x).view(T, self.h, self.d)
        k = self.k_proj(x).view(T, self.hkv, self.d)
        v = self.v_proj(x).view(T, self.hkv, self.d)
        if self.q_norm is not None:
            q, k = self.q_norm(q), self.k_norm(k)
        q = q * cos + _rotate_half(q) * sin
        k = k * cos + _rotate_half(k) * sin
        return self.o_proj(attn(self.layer, q, k, v, meta))


class MLP(nn.Module):
    def __init__(self, cfg: ModelConfig):
        super().__init__()
        self.gate_proj = Linear(cfg.hidden_size, cfg.intermediate_size, bias=False)
        self.up_proj = Linear(cfg.hidden_size, cfg.intermediate_size, bias=False)
        self.down_proj = Linear(cfg.intermediate_size, cfg.hidden_size, bias=False)

    def forward(self, x):
        return self.down_proj(F.silu(self.gate_proj(x)) * self.up_proj(x))


class DecoderLayer(nn.Module):
    def __init__(self, cfg: ModelConfig, layer: int):
        super().__init__()
        self.self_attn = Attention(cfg, layer)
        self.mlp = MLP(cfg)
        self.input_layernorm = RMSNorm(cfg.hidden_size, cfg.rms_norm_eps)
        self.post_attention_layernorm = RMSNorm(cfg.hidden_size, cfg.rms_norm_eps)

    def forward(self, x, cos, sin, attn, meta):
        x = x + self.self_attn(self.input_layernorm(x), cos, sin, attn, meta)
        return x + self.mlp(self.post_attention_layernorm(x))


class Backbone(nn.Module):
    def __init__(self, cfg: ModelConfig):
        super().__init__()
        self.embed_tokens = nn.Embedding(cfg.vocab_size, cfg.hidden_size)
        self.layers = nn.ModuleList(DecoderLayer(cfg, i) for i in range(cfg.num_layers))
        self.norm = RMSNorm(cfg.hidden_size, cfg.rms_norm_eps)


class CausalLM(nn.Module):
    def __init__(self, cfg: ModelConfig, hf_config=None):
        super().__init__()
        self.cfg = cfg
        self.model = Backbone(cfg)
        self.lm_head = None if cfg.tie_embeddings else nn.Linear(cfg.hidden_size, cfg.vocab_size, bias=False)
        self.rotary = Rotary(cfg, cfg.max_position, hf_config)

    def load(self, tensors: dict[str, torch.Tensor]) -> None:
        tensors = {k: v for k, v in tensors.items() if not k.endswith("rotary_emb.inv_freq")}
        if self.lm_head is None:
            tensors.pop("lm_head.weight", None)
        missing, unexpected = self.load_state_dict(tensors, strict=False)
        if missing or unexpected:
            raise ValueError(f"weights do not fit the architecture: missing={missing[:5]} unexpected={unexpected[:5]}")

    def to_device(self, device, dtype):
        self.to(device=device, dtype=dtype)
        self.rotary.to(device)
        return self

    @torch.inference_mode()
    def forward(self, input_ids: torch.Tensor, positions: torch.Tensor, attn, meta) -> torch.Tensor:
        x = self.model.embed_tokens(input_ids)
        cos = self.rotary.cos[positions].to(x.dtype)[:, None, :]
        sin = self.rotary.sin[positions].to(x.dtype)[:, None, :]
        for layer in self.model.layers:
            x = layer(x, cos, sin, attn, meta)
        return self.model.norm(x)

    @torch.inference_mode()
    def logits(self, hidden: torch.Tensor) -> torch.Tensor:
        w = self.model.embed_tokens.weight if self.lm_head is None else self.lm_head.weight
        return project(hidden, w).float().contiguous()
