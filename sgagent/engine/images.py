"""Prompts with images: the model's processor turns each image into pixel inputs and placeholder text; the
placeholders become pseudo token ids that name the image by content.

A placeholder row's id is vocab_size + (tag << 16 | row), tag being 40 bits of the image's pixel hash and row its
index among the image's embedding rows. So the radix tree matches an image by what it shows (the same picture in
two prompts shares its KV; two pictures behind identical placeholder text never do), and any chunk of a prompt
says by itself which embedding rows it holds: a prefill chunk may end inside an image, or a cached prefix take
part of one, and the rows still line up.
"""

from __future__ import annotations

import asyncio
import functools
from collections import OrderedDict
from dataclasses import dataclass, field

import torch

from ..errors import InvalidPromptError, UnsupportedInputError
from ..image_input import Image, image

ROW_BITS = 16
TAG_BITS = 40
MAX_ROWS = 1 << ROW_BITS


@dataclass(eq=False)
class PreparedImage:
    """An image as its model takes it: pixel tensors for the encoder and the placeholder text for the prompt."""

    tag: int
    rows: int  # embedding rows (placeholder tokens) it becomes
    placeholder: str
    pixels: dict[str, torch.Tensor] = field(repr=False)


@dataclass
class MultimodalPrompt:
    """Token ids with pseudo ids in the image rows, and the images those ids name (by tag)."""

    ids: list[int]
    images: dict[int, PreparedImage]

    def __len__(self) -> int:
        return len(self.ids)

    def extended(self, more: list[int]) -> "MultimodalPrompt":
        return MultimodalPrompt(self.ids + list(more), self.images)


def pseudo_id(vocab_size: int, tag: int, row: int) -> int:
    return vocab_size + (tag << ROW_BITS | row)


def split_pseudo(vocab_size: int, ids: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """(tags, rows) of pseudo ids."""
    off = ids - vocab_size
    return off >> ROW_BITS, off & (MAX_ROWS - 1)


# what each family's image processor needs to say how it split an image (Idefics3: its tile grid)
_PROCESSOR_KWARGS = {"llava": {}, "idefics3": {"return_row_col_info": True}}


class ImagePrompts:
    """Per engine: the model folder's processor, and prompt text + images as a MultimodalPrompt."""

    def __init__(self, path, family: str, vocab_size: int, tokenizer, cache_size: int = 64):
        from transformers import AutoProcessor

        self.family, self.vocab_size, self.tokenizer = family, vocab_size, tokenizer
        self.processor = AutoProcessor.from_pretrained(str(path))
        self.image_token = self.processor.image_token
        self.image_token_id = tokenizer.convert_tokens_to_ids(self.image_token)
        self._prepared: OrderedDict[str, PreparedImage] = OrderedDict()  # preprocessing is ~10 ms an image
        self._cache_size = cache_size

    def prepare(self, img: Image) -> PreparedImage:
        hit = self._prepared.get(img.key)
        if hit is not None:
            self._prepared.move_to_end(img.key)
            return hit
        arg = [img.pil] if self.family == "llava" else [[img.pil]]
        out = self.processor.image_processor(arg, return_tensors="pt", **_PROCESSOR_KWARGS[self.family])
        placeholder = self.processor.replace_image_token(out, 0)
        rows = placeholder.count(self.image_token)
        if not 0 < rows < MAX_ROWS:
            raise UnsupportedInputError(f"an image of {rows} embedding rows is more than the engine takes")
        if self.family == "llava":
            pixels = {"pixel_values": out["pixel_values"]}
        else:
            pixels = {"pixel_values": out["pixel_values"][0], "pixel_attention_mask": out["pixel_attention_mask"][0]}
        p = PreparedImage(int(img.key[: TAG_BITS // 4], 16), rows, placeholder, pixels)
        self._prepared[img.key] = p
        if len(self._prepared) > self._cache_size:
            self._prepared.popitem(last=False)
        return p

    def build(self, text: str, images: list, add_special_tokens: bool, max_images: int,
              max_pixels: int) -> MultimodalPrompt:
        """The prompt `text`, whose i-th image token stands for images[i] (Image or anything sgagent.image takes)."""
        if len(images) > max_images:
            raise UnsupportedInputError(f"{len(images)} images in one prompt; this engine takes at most "
                                        f"{max_images} (EngineConfig.max_images_per_prompt)")
        parts = text.split(self.image_token)
        if len(parts) - 1 != len(images):
            raise InvalidPromptError(f"the prompt has {len(parts) - 1} image placeholders ({self.image_token!r}) "
                                     f"for {len(images)} images")
        prepared = [self.prepare(image(x, max_pixels)) for x in images]
        pieces = [parts[0]]
        for p, after in zip(prepared, parts[1:]):
            pieces += [p.placeholder, after]
        ids = self.tokenizer.encode("".join(pieces), add_special_tokens=add_special_tokens)
        slots = [i for i, t in enumerate(ids) if t == self.image_token_id]
        if len(slots) != sum(p.rows for p in prepared):
            raise InvalidPromptError(f"the tokenized prompt has {len(slots)} image tokens where its images need "
                                     f"{sum(p.rows for p in prepared)}")
        k = 0
        for p in prepared:
            for row in range(p.rows):
                ids[slots[k]] = pseudo_id(self.vocab_size, p.tag, row)
                k += 1
        return MultimodalPrompt(ids, {p.tag: p for p in prepared})

    async def build_async(self, *args) -> MultimodalPrompt:
        """build off the event loop: decoding and resizing images takes milliseconds each."""
        return await asyncio.to_thread(functools.partial(self.build, *args))


class VisionCache:
    """The vision encoder's rows per image (by tag), LRU within a byte budget. A step's images that are not held
    are encoded together, in one batch."""

    def __init__(self, encoder, max_bytes: int, device, dtype):
        self.encoder, self.max_bytes, self.device, self.dtype = encoder, max_bytes, device, dtype
        self._rows: OrderedDict[int, torch.Tensor] = OrderedDict()
        self.bytes = 0
        self.hits = self.encoded = self.batches = 0

    def rows(self, images: dict[int, PreparedImage]) -> dict[int, torch.Tensor]:
        out, missing = {}, []
        for tag, img in images.items():
            held = self._rows.get(tag)
            if held is None:
                missing.append(img)
                continue
            self._rows.move_to_end(tag)
            self.hits += 1
            out[tag] = held
        if missing:
            inputs = [{k: v.to(self.device, self.dtype if v.is_floating_point() else None)
                       for k, v in img.pixels.items()} for img in missing]
            for img, rows in zip(missing, self.encoder(inputs)):
                if rows.shape[0] != img.rows:
                    raise RuntimeError(f"the encoder gave {rows.shape[0]} rows for an image of {img.rows} placeholders")
                out[img.tag] = rows
                self._put(img.tag, rows)
            self.encoded += len(missing)
            self.batches += 1
        return out

    def _put(self, tag: int, rows: torch.Tensor) -> None:
        size = rows.numel() * rows.element_size()
        if size > self.max_bytes:
            return
        self._rows[tag] = rows
        self.bytes += size
        while self.bytes > self.max_bytes:
            _, old = self._rows.popitem(last=False)
            self.bytes -= old.numel() * old.element_size()

    def stats(self) -> dict:
        lookups = self.hits + self.encoded
        return {"images_encoded": self.encoded, "image_encoder_batches": self.batches,
                "image_cache_hits": self.hits, "image_cache_hit_rate": self.hits / lookups if lookups else 0.0,
                "image_cache_bytes": self.bytes}
