"""Vision-language models: what turns an image's pixels into rows of the language model's input embeddings.

Two families, as transformers defines them: LLaVA (a CLIP or SigLIP tower read at an inner layer, a two-layer
projector) and Idefics3 / SmolVLM (a SigLIP tower over each tile of the image, pixel shuffle, one projection). The
language model is our CausalLM; this module only splits a checkpoint between the two and encodes images.
"""

from __future__ import annotations

import re

import torch
from torch import nn

from ...errors import UnsupportedArchitectureError
from .vision import VisionTower, activation

FAMILIES = ("llava", "idefics3")

# checkpoint names (transformers 5's and the older layout of saved checkpoints) -> ours: the language model's
# under CausalLM's names, the rest under the encoder's
_RENAMES = [
    (r"^(model\.)?language_model\.model\.", "text.model."),
    (r"^(model\.)?language_model\.lm_head\.", "text.lm_head."),
    (r"^model\.language_model\.", "text.model."),
    (r"^model\.text_model\.", "text.model."),
    (r"^lm_head\.", "text.lm_head."),
    (r"^(model\.)?vision_tower\.(vision_model\.)?", "vision.vision_tower."),
    (r"^(model\.)?multi_modal_projector\.", "vision.multi_modal_projector."),
    (r"^(model\.)?vision_model\.", "vision.vision_model."),
    (r"^(model\.)?connector\.modality_projection\.proj\.", "vision.connector."),
]


def split_checkpoint(tensors: dict[str, torch.Tensor]) -> tuple[dict, dict]:
    """(the language model's tensors, the vision encoder's), under the names CausalLM and VisionEncoder load."""
    text, vision = {}, {}
    for name, t in tensors.items():
        for pattern, repl in _RENAMES:
            new, n = re.subn(pattern, repl, name)
            if n:
                break
        else:
            raise ValueError(f"unexpected tensor {name!r} in a vision-language checkpoint")
        side, _, rest = new.partition(".")
        (text if side == "text" else vision)[rest.replace("encoder.layers.", "layers.")] = t
    return text, vision


class LlavaEncoder(nn.Module):
    """Tower hidden states at vision_feature_layer (several: concatenated), CLS dropped under the "default"
    strategy, then linear_1 / act / linear_2 into the text model's width."""

    def __init__(self, hf):
        super().__init__()
        v = hf.vision_config
        layers = hf.vision_feature_layer
        layers = [layers] if isinstance(layers, int) else list(layers)
        self.take = [i if i >= 0 else v.num_hidden_layers + 1 + i for i in layers]
        self.vision_tower = VisionTower(v, depth=max(self.take))
        self.drop_cls = hf.vision_feature_select_strategy == "default"
        bias = getattr(hf, "multimodal_projector_bias", True)
        width = hf.text_config.hidden_size
        self.multi_modal_projector = nn.Module()
        self.multi_modal_projector.linear_1 = nn.Linear(v.hidden_size * len(layers), width, bias=bias)
        self.multi_modal_projector.linear_2 = nn.Linear(width, width, bias=bias)
        self.act = activation(hf.projector_hidden_act)

    def forward(self, inputs: list[dict]) -> list[torch.Tensor]:
        pixels = torch.cat([x["pixel_values"] for x in inputs])
        states = self.vision_tower(pixels, take=self.take)
        if self.drop_cls:
            states = [s[:, 1:] for s in states]
        p = self.multi_modal_projector
        out = p.linear_2(self.act(p.linear_1(torch.cat(states, dim=-1))))
        return list(out)


class Idefics3Encoder(nn.Module):
    """Each tile through the tower, its patches pixel-shuffled (scale_factor^2 neighbours into one row) and
    projected; an image's rows are its tiles' in order."""

    def __init__(self, hf):
        super().__init__()
        v = hf.vision_config
        self.scale = hf.scale_factor
        self.vision_model = VisionTower(v)
        self.connector = nn.Linear(v.hidden_size * self.scale**2, hf.text_config.hidden_size, bias=False)

    def _shuffle(self, x: torch.Tensor) -> torch.Tensor:
        b, n, d = x.shape
        side, s = int(n**0.5), self.scale
        x = x.view(b, side, side // s, d * s).permute(0, 2, 1, 3)
        x = x.reshape(b, side // s, side // s, d * s * s).permute(0, 2, 1, 3)
        return x.reshape(b, n // (s * s), d * s * s)

    def forward(self, inputs: list[dict]) -> list[torch.Tensor]:
        counts = [len(x["pixel_values"]) for x in inputs]
        tiles = torch.cat([x["pixel_values"] for x in inputs])  # one tile size (the tower's side) for all
        masks = torch.cat([x["pixel_attention_mask"] for x in inputs]).bool()
        out = self.connector(self._shuffle(self.vision_model(tiles, masks)))
        return [t.reshape(-1, t.shape[-1]) for t in out.split(counts)]


def family_of(hf) -> str | None:
    mt = getattr(hf, "model_type", None)
    return mt if mt in FAMILIES else None


def build_encoder(hf, tensors: dict[str, torch.Tensor]) -> nn.Module:
    """The family's encoder with the checkpoint's vision weights (split_checkpoint's second dict) loaded."""
    enc = {"llava": LlavaEncoder, "idefics3": Idefics3Encoder}[family_of(hf)](hf)
    own = enc.state_dict()
    # layers past the one a LLaVA projector reads, a SigLIP pooling head: in the checkpoint, never run
    kept = {k: v for k, v in tensors.items() if k in own}
    missing = sorted(set(own) - set(kept))
    if missing:
        raise UnsupportedArchitectureError(f"the vision weights miss {missing[:5]}")
    enc.load_state_dict(kept)
    return enc
