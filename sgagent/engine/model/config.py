"""ModelConfig: the architecture facts our forward needs, read from HF config.json or GGUF metadata."""

from __future__ import annotations

from dataclasses import dataclass, field

from ...errors import UnsupportedArchitectureError

# model_type -> (qkv bias, per-head q/k RMSNorm)
ARCHITECTURES = {
    "llama": (False, False),
    "mistral": (False, False),
    "qwen2": (True, False),
    "qwen3": (False, True),
}


@dataclass
class ModelConfig:
    model_type: str
    vocab_size: int
    hidden_size: int
    num_layers: int
    num_heads: int
    num_kv_heads: int
    head_dim: int
    intermediate_size: int
    rms_norm_eps: float
    rope_theta: float
    max_position: int
    tie_embeddings: bool
    rope_scaling: dict | None = None
    eos_token_ids: list[int] = field(default_factory=list)
    bos_token_id: int | None = None

    @property
    def qkv_bias(self) -> bool:
        return ARCHITECTURES[self.model_type][0]

    @property
    def qk_norm(self) -> bool:
        return ARCHITECTURES[self.model_type][1]

    @classmethod
    def from_hf(cls, hf) -> "ModelConfig":
        """From a transformers PretrainedConfig (or anything with the same attributes)."""
        mt = getattr(hf, "model_type", None)
        if mt not in ARCHITECTURES:
            raise UnsupportedArchitectureError(
                f"model_type {mt!r} is not supported; supported: {sorted(ARCHITECTURES)}"
            )
        rope = getattr(hf, "rope_parameters", None) or getattr(hf, "rope_scaling", None) or {}
        theta = rope.get("rope_theta", getattr(hf, "rope_theta", 10000.0))
        rtype = rope.get("rope_type", rope.get("type", "default"))
        scaling = None if rtype in (None, "default") else dict(rope)
        heads = hf.num_attention_heads
        head_dim = getattr(hf, "head_dim", None) or hf.hidden_size // heads
        eos = hf.eos_token_id
        eos = [] if eos is None else ([eos] if isinstance(eos, int) else list(eos))
        max_pos = hf.max_position_embeddings
        sw = getattr(hf, "sliding_window", None)
        if sw and getattr(hf, "use_sliding_window", mt == "mistral"):
            # we attend over the full context; capping it at the window keeps outputs exact
            max_pos = min(max_pos, sw)
        return cls(
            model_type=mt,
            vocab_size=hf.vocab_size,
            hidden_size=hf.hidden_size,
            num_layers=hf.num_hidden_layers,
            num_heads=heads,
            num_kv_heads=getattr(hf, "num_key_value_heads", None) or heads,
            head_dim=head_dim,
            intermediate_size=hf.intermediate_size,
            rms_norm_eps=hf.rms_norm_eps,
            rope_theta=float(theta),
            max_position=max_pos,
            tie_embeddings=bool(getattr(hf, "tie_word_embeddings", False)),
            rope_scaling=scaling,
            eos_token_ids=eos,
            bos_token_id=getattr(hf, "bos_token_id", None),
        )
