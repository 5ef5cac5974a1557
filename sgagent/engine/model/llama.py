"""Our forward for the Llama family (Llama, Mistral, Qwen2, Qwen3, SmolLM) over a flattened token batch.

All sequences of a step are concatenated into one [T, hidden] tensor, so every linear layer runs once
per step for the whole batch; only attention looks at sequence boundaries (through the backend).
"""

from __future__ import annotations

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from .config import ModelConfig
from .invariance import BLOCK_ROWS, batch_invariant, padded_project
from .quantized import PackedWeight, QuantWeight, pack, packable

# Up to this many rows, a CPU projection runs as W @ x^T: MKL's sgemm is faster that way round for the few rows
# of a decode step (layers 1.1-2.5x, the lm_head 1.4-4.5x at 4-128 rows: `python -m bench.cpu_projection`);
# at prefill sizes the two are within 7%, and x @ W^T gives the contiguous result the rest expects.
SMALL_ROWS = 128


def project(x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None = None) -> torch.Tensor:
    """x @ weight^T (+ bias) for x [T, in]. The result may be a transposed view; callers that need
    contiguous memory ask for it."""
    if x.device.type == "cpu" and x.dim() == 2 and x.shape[0] <= SMALL_ROWS:
        # one row (single-stream decode): mv gives the same values as mm, 30-40% faster in bf16 (it skips the
        # packing mm does for bf16 operands)
        y = torch.mv(weight, x[0])[None] if x.shape[0] == 1 else torch.mm(weight, x.t()).t()
        return y if bias is None else y + bias
    return F.linear(x, weight, bias)


# Up to this many rows, a CPU step multiplies by the GGUF blocks (PackedWeight) where the model has them: there
# reading the weights is most of the cost (all projections 1.75-2.06x faster at 1-64 rows, 1.17-1.29x at 196-320,
# 1.05x at 384); from 448 rows oneDNN's dense bf16 matmul is faster (0.91-0.93x): `python -m bench.gguf_blocks`.
PACKED_ROWS = 384


def multiply(x: torch.Tensor, weight: torch.Tensor, packed: PackedWeight | None, ops, bias=None) -> torch.Tensor:
    """x @ weight^T (+ bias): through the GGUF blocks on CPU steps of few rows when both exist, else project.
    A batch-invariant step (invariance.py) takes the blocks at any row count, else a padded dense linear.
    csrc/decode_layers.cpp's project() makes the same choices (so a decode step's values do not depend on which
    runs it): change the two together."""
    invariant = batch_invariant()
    if packed is not None and ops is not None and x.dim() == 2 and (invariant or x.shape[0] <= PACKED_ROWS):
        return packed(x, ops, bias)
    if invariant and x.dim() == 2:
        return padded_project(x, weight, bias)
    return project(x, weight, bias)


class Linear(nn.Linear):
    packed: PackedWeight | None = None  # the same matrix in GGUF blocks, attached by CausalLM.attach_packed

    def forward(self, x: torch.Tensor, ops=None) -> torch.Tensor:
        return multiply(x, self.weight, self.packed, ops, self.bias)


class RMSNorm(nn.Module):
    def __init__(self, dim: int, eps: float):
        super().__init__()
        self.weight = nn.Parameter(torch.ones(dim))
        self.eps = eps

    def forward(self, x: torch.Tensor, ops=None) -> torch.Tensor:
        """ops: the engine's C++ ops on CPU (cpu_ops), which do this in one pass over [T, H] rows; or None."""
        if ops is not None and x.dim() == 2:
            return ops.rms_norm(x, self.weight, self.eps)
        if x.dtype == torch.float32:
            return F.rms_norm(x, self.weight.shape, self.weight, self.eps)
        # half precision: normalise in float32, round, then scale, in transformers' order
        return self.weight * F.rms_norm(x.float(), self.weight.shape, None, self.eps).to(x.dtype)


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
        # rotate_half(x) = cat(-x2, x1) = roll(x, d/2) with the first half negated: the sign lives in sin
        sign = torch.cat((-torch.ones(d // 2), torch.ones(d // 2)))
        self.sin = emb.sin() * scale * sign

    def to(self, device):
        self.cos, self.sin = self.cos.to(device), self.sin.to(device)
        return self


def add_norm(x: torch.Tensor, delta: torch.Tensor, norm: RMSNorm, ops=None) -> tuple[torch.Tensor, torch.Tensor]:
    """The residual update and the norm after it: (x + delta, norm(x + delta)), in one pass with the CPU ops."""
    if ops is not None and x.dim() == 2:
        return ops.add_rms_norm(x, delta, norm.weight, norm.eps)
    x = x + delta
    return x, norm(x, ops)


def rope(x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor) -> torch.Tensor:
    """x [T, heads, D] rotated by the per-row cos/sin [T, 1, D] (sin carrying rotate_half's sign)."""
    return torch.addcmul(x * cos, x.roll(x.shape[-1] // 2, -1), sin)


class Attention(nn.Module):
    def __init__(self, cfg: ModelConfig, layer: int):
        super().__init__()
        self.layer = layer
        self.h, self.hkv, self.d = cfg.num_heads, cfg.num_kv_heads, cfg.head_dim
        # q, k and v in one projection (one weight read, one matmul); load() concatenates the checkpoint's three
        self.qkv_proj = Linear(cfg.hidden_size, (self.h + 2 * self.hkv) * self.d, bias=cfg.qkv_bias)
        self.o_proj = Linear(self.h * self.d, cfg.hidden_size, bias=False)
        if cfg.qk_norm:
            self.q_norm = RMSNorm(self.d, cfg.rms_norm_eps)
            self.k_norm = RMSNorm(self.d, cfg.rms_norm_eps)
        else:
            self.q_norm = self.k_norm = None

    def forward(self, x, cos, sin, attn, meta, ops=None):
        """cos, sin: [T, D] for each row's position. ops: the CPU ops (rotation and split in one pass) or None."""
        T, h, hkv = x.shape[0], self.h, self.hkv
        qkv = self.qkv_proj(x, ops)
        if ops is not None and self.q_norm is None:
            q, k, v = ops.rope_qkv(qkv, cos, sin, h, hkv)
            return self.o_proj(attn(self.layer, q, k, v, meta), ops)
        qkv = qkv.view(T, h + 2 * hkv, self.d)
        qk, v = qkv[:, : h + hkv], qkv[:, h + hkv :]
        if self.q_norm is not None:
            qk = torch.cat((self.q_norm(qk[:, :h]), self.k_norm(qk[:, h:])), dim=1)
        qk = rope(qk, cos[:, None], sin[:, None])  # q and k heads rotated together
        return self.o_proj(attn(self.layer, qk[:, :h], qk[:, h:], v, meta), ops)


class MLP(nn.Module):
    def __init__(self, cfg: ModelConfig):
        super().__init__()
        self.gate_up_proj = Linear(cfg.hidden_size, 2 * cfg.intermediate_size, bias=False)  # gate and up, fused
        self.down_proj = Linear(cfg.intermediate_size, cfg.hidden_size, bias=False)

    def forward(self, x, ops=None):
        gate_up = self.gate_up_proj(x, ops)
        if ops is not None and gate_up.dim() == 2:
            return self.down_proj(ops.silu_mul(gate_up), ops)
        gate, up = gate_up.chunk(2, dim=-1)
        return self.down_proj(F.silu(gate) * up)


class DecoderLayer(nn.Module):
    def __init__(self, cfg: ModelConfig, layer: int):
        super().__init__()
        self.self_attn = Attention(cfg, layer)
        self.mlp = MLP(cfg)
        self.input_layernorm = RMSNorm(cfg.hidden_size, cfg.rms_norm_eps)
        self.post_attention_layernorm = RMSNorm(cfg.hidden_size, cfg.rms_norm_eps)

    def forward(self, x, h, cos, sin, attn, meta, next_norm: RMSNorm, ops=None):
        """x: the residual stream; h: input_layernorm(x), which the layer before computed with its last add.
        Returns the stream after this layer and next_norm of it (the next layer's input norm, or the final)."""
        x, h = add_norm(x, self.self_attn(h, cos, sin, attn, meta, ops), self.post_attention_layernorm, ops)
        return add_norm(x, self.mlp(h, ops), next_norm, ops)


class Backbone(nn.Module):
    def __init__(self, cfg: ModelConfig):
        super().__init__()
        self.embed_tokens = nn.Embedding(cfg.vocab_size, cfg.hidden_size)
        self.layers = nn.ModuleList(DecoderLayer(cfg, i) for i in range(cfg.num_layers))
        self.norm = RMSNorm(cfg.hidden_size, cfg.rms_norm_eps)


# fused parameter -> the checkpoint's parts, concatenated along the output dimension in this order
FUSED = {
    "self_attn.qkv_proj": ("self_attn.q_proj", "self_attn.k_proj", "self_attn.v_proj"),
    "mlp.gate_up_proj": ("mlp.gate_proj", "mlp.up_proj"),
}


def _fuse(tensors: dict, fused: dict[str, tuple[str, ...]], cat=torch.cat) -> dict:
    out = dict(tensors)
    for name in tensors:
        for whole, parts in fused.items():
            suffix = "." + parts[0] + "."
            if suffix not in name:
                continue
            prefix, kind = name.split(suffix)
            keys = [f"{prefix}.{p}.{kind}" for p in parts]
            if all(k in out for k in keys):
                out[f"{prefix}.{whole}.{kind}"] = cat([out.pop(k) for k in keys])
    return out


def _cat_blocks(parts: list[QuantWeight]) -> QuantWeight | None:
    if len({p.qtype for p in parts}) != 1:
        return None  # a fused matrix needs one block type: this one keeps only its dense weight
    return QuantWeight(parts[0].qtype, np.concatenate([p.rows for p in parts]))


class CausalLM(nn.Module):
    packed: PackedWeight | None = None  # the lm_head in GGUF blocks (attach_packed)
    # CPU steps of decodes run all layers in one C++ call (csrc/decode_layers.cpp) where they can; False: layer by
    # layer from Python (the same ops and values: tests compare the two)
    native_layers: bool = True

    def __init__(self, cfg: ModelConfig, hf_config=None):
        super().__init__()
        self.cfg = cfg
        self.model = Backbone(cfg)
        self.lm_head = None if cfg.tie_embeddings else nn.Linear(cfg.hidden_size, cfg.vocab_size, bias=False)
        self.rotary = Rotary(cfg, cfg.max_position, hf_config)
        self._operands: dict[bool, tuple] = {}  # _layer_operands, by whether GGUF blocks are taken

    def load(self, tensors: dict[str, torch.Tensor]) -> None:
        """Checkpoint tensors under transformers' names; q/k/v and gate/up are fused here."""
        tensors = _fuse(tensors, FUSED)
        tensors = {k: v for k, v in tensors.items() if not k.endswith("rotary_emb.inv_freq")}
        if self.lm_head is None:
            tensors.pop("lm_head.weight", None)
        missing, unexpected = self.load_state_dict(tensors, strict=False)
        if missing or unexpected:
            raise ValueError(f"weights do not fit the architecture: missing={missing[:5]} unexpected={unexpected[:5]}")

    def attach_packed(self, blocks: dict[str, QuantWeight]) -> int:
        """Give each projection (and the lm_head) its matrix in GGUF blocks where the file had one, fused like the
        dense weights; the dense copies stay for steps of many rows. Returns how many matrices got one."""
        blocks = _fuse(blocks, FUSED, _cat_blocks)
        self._operands.clear()
        attached = 0
        targets = {f"{n}.weight": (m, m.weight) for n, m in self.named_modules() if isinstance(m, Linear)}
        targets["model.embed_tokens.weight" if self.lm_head is None else "lm_head.weight"] = (self, self.lm_weight)
        for name, (module, dense) in targets.items():
            w = blocks.get(name)
            if w is not None and packable(w) and w.shape == tuple(dense.shape):
                module.packed = pack(w)
                attached += 1
        return attached

    @property
    def lm_weight(self) -> torch.Tensor:
        return self.model.embed_tokens.weight if self.lm_head is None else self.lm_head.weight

    def to_device(self, device, dtype):
        self.to(device=device, dtype=dtype)
        self.rotary.to(device)
        return self

    @torch.inference_mode()
    def forward(self, input_ids: torch.Tensor, positions: torch.Tensor, attn, meta, ops=None,
                embeds: torch.Tensor | None = None) -> torch.Tensor:
        """ops: the engine's C++ CPU ops (cpu_ops) for the norms, rotary and activation, or None for plain torch.
        embeds: the input embeddings when they are not all the tokens' (image rows). Returns the final norm of
        the last hidden states."""
        x = self.model.embed_tokens(input_ids) if embeds is None else embeds
        cos = self.rotary.cos[positions].to(x.dtype)
        sin = self.rotary.sin[positions].to(x.dtype)
        layers = self.model.layers
        h = layers[0].input_layernorm(x, ops)
        native = self._native_decode(x, attn, meta, ops)
        if native is not None:
            cfg = self.cfg
            # an invariant step: dense rows in blocks as padded_project multiplies them
            small, pad = (0, BLOCK_ROWS) if batch_invariant() else (SMALL_ROWS, 0)
            return ops.decode_layers(x, h, cos, sin, *native[0], cfg.rms_norm_eps, cfg.num_heads, cfg.num_kv_heads,
                                     cfg.intermediate_size, small, pad, *native[1])[1]
        for i, layer in enumerate(layers):
            x, h = layer(x, h, cos, sin, attn, meta, layers[i + 1].input_layernorm if i + 1 < len(layers)
                         else self.model.norm, ops)
        return h

    def _native_decode(self, x: torch.Tensor, attn, meta, ops):
        """(this model's operands, the attention's arguments) for the C++ decode_layers op, when this step can run
        there: CPU ops, a model of the plain kind (no q/k norms) and a step the attention runs wholly in its C++
        kernel; else None."""
        if ops is None or not self.native_layers or x.dim() != 2 or self.cfg.qk_norm:
            return None
        args = attn.native_decode(meta)
        blocks = batch_invariant() or x.shape[0] <= PACKED_ROWS
        return None if args is None else (self._layer_operands(blocks), args)

    def _layer_operands(self, blocks: bool) -> tuple[list, list, list, list]:
        """Per layer the four projections' operands, as multiply() would pick them (GGUF tiles and their block type
        where blocks is true and the layer has them, else the dense weight and 0), their biases (empty where
        none), and the two norms after them (see csrc/decode_layers.cpp). Built once per kind."""
        if blocks not in self._operands:
            weights, qtypes, biases, norms, layers = [], [], [], [], self.model.layers
            none = torch.empty(0)
            for i, layer in enumerate(layers):
                a, m = layer.self_attn, layer.mlp
                for lin in (a.qkv_proj, a.o_proj, m.gate_up_proj, m.down_proj):
                    packed = lin.packed if blocks else None
                    weights.append(lin.weight if packed is None else packed.tiles)
                    qtypes.append(0 if packed is None else packed.qtype)
                    biases.append(none if lin.bias is None else lin.bias)
                nxt = layers[i + 1].input_layernorm if i + 1 < len(layers) else self.model.norm
                norms += [layer.post_attention_layernorm.weight, nxt.weight]
            self._operands[blocks] = (weights, qtypes, biases, norms)
        return self._operands[blocks]

    @torch.inference_mode()
    def scores(self, hidden: torch.Tensor, ops=None) -> torch.Tensor:
        """The lm_head's output in the model's dtype, possibly a transposed view (see project); by the GGUF blocks
        when ops are given and the model has them."""
        return multiply(hidden, self.lm_weight, self.packed, ops)

    @torch.inference_mode()
    def logits(self, hidden: torch.Tensor, ops=None) -> torch.Tensor:
        """float32 [rows, vocab], contiguous. ops: the CPU ops, whose conversion reads a transposed view fast."""
        y = self.scores(hidden, ops)
        return ops.rows_to_float(y) if ops is not None and y.dim() == 2 else y.float().contiguous()
