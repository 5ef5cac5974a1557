"""Random-weight vision-language model folders (LLaVA and Idefics3/SmolVLM) for tests and benchmarks.

No VLM weights ship with sgagent and none may be downloaded, so these folders are written the way
transformers saves a real checkpoint: config.json, safetensors, the processor's configs and chat template,
on SmolLM2's tokenizer with each family's special tokens added. Sizes: "tiny" for parity tests, "bench" for
a vision encoder that costs real time (a ViT-B-like tower over 336 px, as LLaVA-1.5's).
"""

from __future__ import annotations

from pathlib import Path

import torch

# LLaVA-1.5's own template (images of a message first, then its text), without the training-only tags
LLAVA_TEMPLATE = (
    "{% for message in messages %}{% if message['role'] != 'system' %}{{ message['role'].upper() + ': ' }}{% endif %}"
    "{% for content in message['content'] | selectattr('type', 'equalto', 'image') %}{{ '<image>\n' }}{% endfor %}"
    "{% for content in message['content'] | selectattr('type', 'equalto', 'text') %}{{ content['text'] + ' ' }}"
    "{% endfor %}{% endfor %}{% if add_generation_prompt %}{{ 'ASSISTANT:' }}{% endif %}"
)

# SmolVLM's own template
SMOLVLM_TEMPLATE = (
    "<|im_start|>{% for message in messages %}{{ message['role'] | capitalize }}"
    "{% if message['content'][0]['type'] == 'image' %}{{ ':' }}{% else %}{{ ': ' }}{% endif %}"
    "{% for line in message['content'] %}{% if line['type'] == 'text' %}{{ line['text'] }}"
    "{% elif line['type'] == 'image' %}{{ '<image>' }}{% endif %}{% endfor %}<end_of_utterance>\n{% endfor %}"
    "{% if add_generation_prompt %}{{ 'Assistant:' }}{% endif %}"
)

SIZES = {
    # text model, vision tower, image side in pixels, patch
    "tiny": dict(text=dict(hidden_size=64, intermediate_size=128, num_hidden_layers=2, num_attention_heads=4,
                           num_key_value_heads=2),
                 vision=dict(hidden_size=32, intermediate_size=64, num_hidden_layers=3, num_attention_heads=2),
                 image=32, patch=8),
    "bench": dict(text=dict(hidden_size=576, intermediate_size=1536, num_hidden_layers=8, num_attention_heads=9,
                            num_key_value_heads=3),
                  vision=dict(hidden_size=768, intermediate_size=3072, num_hidden_layers=12, num_attention_heads=12),
                  image=336, patch=14),
}


def _tokenizer(base, extra: list[str]):
    import copy

    tok = copy.deepcopy(base)
    tok.add_special_tokens({"additional_special_tokens": extra})
    return tok


def _randomize(model, std: float = 0.2) -> None:
    """Weights larger than the init gives, so greedy paths are sharp and differ from image to image."""
    torch.manual_seed(0)
    with torch.no_grad():
        for name, p in model.named_parameters():
            if p.dim() >= 2 and "norm" not in name:
                p.normal_(0, std if p.shape[-1] <= 256 else std / 4)


def _text_config(size: dict, tok) -> dict:
    return dict(model_type="llama", vocab_size=len(tok), max_position_embeddings=4096, tie_word_embeddings=False,
                eos_token_id=tok.eos_token_id, **size["text"])


def build_llava(path: Path, base_tokenizer, size: str = "tiny") -> Path:
    """A LLaVA-1.5-style folder: CLIP tower, two-layer projector, Llama-family text model."""
    from transformers import CLIPImageProcessor, LlavaConfig, LlavaForConditionalGeneration, LlavaProcessor

    s = SIZES[size]
    tok = _tokenizer(base_tokenizer, ["<image>"])
    cfg = LlavaConfig(
        text_config=_text_config(s, tok),
        vision_config=dict(model_type="clip_vision_model", image_size=s["image"], patch_size=s["patch"],
                           hidden_act="quick_gelu", **s["vision"]),
        image_token_id=tok.convert_tokens_to_ids("<image>"), vision_feature_layer=-2,
        vision_feature_select_strategy="default", projector_hidden_act="gelu",
    )
    model = LlavaForConditionalGeneration(cfg).eval()
    _randomize(model)
    side = s["image"]
    images = CLIPImageProcessor(size={"shortest_edge": side}, crop_size={"height": side, "width": side})
    proc = LlavaProcessor(image_processor=images, tokenizer=tok, patch_size=s["patch"],
                          vision_feature_select_strategy="default", num_additional_image_tokens=1,
                          chat_template=LLAVA_TEMPLATE)
    model.save_pretrained(path)
    proc.save_pretrained(path)
    return Path(path)


def build_idefics3(path: Path, base_tokenizer, size: str = "tiny", splitting: bool = True) -> Path:
    """A SmolVLM-style folder: SigLIP tower, pixel-shuffle connector, SmolLM2-shaped text model; images split into
    tiles of the tower's side plus a global view, as its processor does."""
    from transformers import Idefics3Config, Idefics3ForConditionalGeneration, Idefics3ImageProcessor, Idefics3Processor

    s = SIZES[size]
    side, scale = s["image"], 2
    rows_cols = [f"<row_{r}_col_{c}>" for r in range(1, 7) for c in range(1, 7)]
    tok = _tokenizer(base_tokenizer, ["<fake_token_around_image>", "<image>", "<global-img>", "<end_of_utterance>",
                                      *rows_cols])
    cfg = Idefics3Config(
        text_config=_text_config(s, tok),
        vision_config=dict(image_size=side, patch_size=s["patch"], **s["vision"]),
        image_token_id=tok.convert_tokens_to_ids("<image>"), scale_factor=scale,
    )
    model = Idefics3ForConditionalGeneration(cfg).eval()
    _randomize(model)
    seq_len = (side // s["patch"]) ** 2 // scale**2
    images = Idefics3ImageProcessor(do_image_splitting=splitting, size={"longest_edge": 2 * side},
                                    max_image_size={"longest_edge": side})
    proc = Idefics3Processor(image_processor=images, tokenizer=tok, image_seq_len=seq_len,
                             chat_template=SMOLVLM_TEMPLATE)
    model.save_pretrained(path)
    proc.save_pretrained(path)
    return Path(path)
