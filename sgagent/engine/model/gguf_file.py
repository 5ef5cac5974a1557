"""Reading a GGUF file: its config, and its tensors dequantized under Hugging Face names."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch

from ...errors import UnsupportedArchitectureError
from .config import ARCHITECTURES, ModelConfig

_LAYER_NAMES = {
    "attn_q": "self_attn.q_proj",
    "attn_k": "self_attn.k_proj",
    "attn_v": "self_attn.v_proj",
    "attn_output": "self_attn.o_proj",
    "attn_q_norm": "self_attn.q_norm",
    "attn_k_norm": "self_attn.k_norm",
    "ffn_gate": "mlp.gate_proj",
    "ffn_up": "mlp.up_proj",
    "ffn_down": "mlp.down_proj",
    "attn_norm": "input_layernorm",
    "ffn_norm": "post_attention_layernorm",
}
_GLOBAL_NAMES = {"token_embd": "model.embed_tokens", "output_norm": "model.norm", "output": "lm_head"}


def open_reader(path: Path):
    import gguf

    return gguf.GGUFReader(str(path))


def _field(reader, key, default=None):
    f = reader.fields.get(key)
    if f is None:
        return default
    return f.contents()


def read_config(path: Path, reader=None) -> ModelConfig:
    r = reader or open_reader(path)
    arch = _field(r, "general.architecture")
    if arch not in ARCHITECTURES:
        raise UnsupportedArchitectureError(f"GGUF architecture {arch!r} is not supported")
    heads = _field(r, f"{arch}.attention.head_count")
    hidden = _field(r, f"{arch}.embedding_length")
    names = {t.name for t in r.tensors}
    vocab = _field(r, f"{arch}.vocab_size") or len(r.fields["tokenizer.ggml.tokens"].data)
    eos = _field(r, "tokenizer.ggml.eos_token_id")
    return ModelConfig(
        model_type=arch,
        vocab_size=int(vocab),
        hidden_size=int(hidden),
        num_layers=int(_field(r, f"{arch}.block_count")),
        num_heads=int(heads),
        num_kv_heads=int(_field(r, f"{arch}.attention.head_count_kv", heads)),
        head_dim=int(_field(r, f"{arch}.attention.key_length", hidden // heads)),
        intermediate_size=int(_field(r, f"{arch}.feed_forward_length")),
        rms_norm_eps=float(_field(r, f"{arch}.attention.layer_norm_rms_epsilon", 1e-6)),
        rope_theta=float(_field(r, f"{arch}.rope.freq_base", 10000.0)),
        max_position=int(_field(r, f"{arch}.context_length", 4096)),
        tie_embeddings="output.weight" not in names,
        eos_token_ids=[] if eos is None else [int(eos)],
        bos_token_id=_field(r, "tokenizer.ggml.bos_token_id"),
    )


def _unpermute(w: np.ndarray, n_head: int) -> np.ndarray:
    # llama.cpp's converter interleaves the rotary halves of q/k rows for llama-style models; undo it
    return w.reshape(n_head, w.shape[0] // n_head // 2, 2, *w.shape[1:]).swapaxes(1, 2).reshape(w.shape)


def _hf_rows(name: str, rows: np.ndarray, cfg: ModelConfig) -> np.ndarray:
    """A matrix's rows in transformers' order: q/k of llama-style models unpermuted. The permutation moves whole
    rows, so it applies alike to dequantized values and to rows of GGUF blocks."""
    if cfg.model_type in ("llama", "mistral"):
        if name.endswith("q_proj.weight"):
            return _unpermute(rows, cfg.num_heads)
        if name.endswith("k_proj.weight"):
            return _unpermute(rows, cfg.num_kv_heads)
    return rows


def _hf_name(gguf_name: str) -> str | None:
    base, _, suffix = gguf_name.rpartition(".")
    if base.startswith("blk."):
        _, layer, part = base.split(".", 2)
        hf = _LAYER_NAMES.get(part)
        return None if hf is None else f"model.layers.{layer}.{hf}.{suffix}"
    hf = _GLOBAL_NAMES.get(base)
    return None if hf is None else f"{hf}.{suffix}"


def read_tensors(path: Path, cfg: ModelConfig, reader=None) -> dict[str, torch.Tensor]:
    from gguf.quants import dequantize

    r = reader or open_reader(path)
    out = {}
    for t in r.tensors:
        name = _hf_name(t.name)
        if name is None:
            continue  # e.g. rope_freqs: recomputed from the config
        arr = dequantize(t.data, t.tensor_type).reshape(tuple(int(d) for d in reversed(t.shape)))
        out[name] = torch.from_numpy(np.array(_hf_rows(name, arr, cfg), dtype=np.float32, copy=True))
    return out


def read_block_quantized(path: Path, cfg: ModelConfig, reader=None) -> dict:
    """The Q4_1/Q8_0 matrices as their GGUF rows (model/quantized.py), under Hugging Face names, q/k unpermuted
    like read_tensors' (_hf_rows)."""
    from .quantized import BLOCK_BYTES, QuantWeight

    r = reader or open_reader(path)
    out = {}
    for t in r.tensors:
        name = _hf_name(t.name)
        if name is None or int(t.tensor_type) not in BLOCK_BYTES or len(t.shape) != 2:
            continue
        out[name] = QuantWeight(int(t.tensor_type), np.array(_hf_rows(name, np.asarray(t.data), cfg), copy=True))
    return out
