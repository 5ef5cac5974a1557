"""Issue 21: N questions about each of a few images (llava-bench's shape), as programs under run_batch.

The model is a random-weight LLaVA-1.5-shaped folder (bench/vlm_models.py "bench": a ViT-B/14 tower at 336 px, so
576 image rows and ~100 GFLOP an image, before an 8-layer SmolLM2-wide text model). Systems, each on a cold engine:
  reuse      radix cache and vision-encoder cache on (the default)
  no_radix   radix cache off, encoder cache on: each question prefills its image rows again, never re-encodes
  no_reuse   both off: each question encodes and prefills its image again
and transformers' generate on the same prompts one at a time as the floor. Ratios are no_reuse / reuse and
no_radix / reuse; the encoder cache's hit rate comes from the engines' stats.

python -m bench.multimodal [--runs 3] [--small]
"""

from __future__ import annotations

import statistics
import tempfile
import time

import numpy as np

import sgagent

from .common import cli, cold_run, machine, report
from .vlm_models import build_llava

SYSTEMS = {"reuse": {}, "no_radix": {"radix_cache": False},
           "no_reuse": {"radix_cache": False, "image_cache_bytes": 0}}
NEW_TOKENS = 16


def pictures(n: int) -> list[sgagent.Image]:
    rs = np.random.RandomState(0)
    from PIL import Image

    return [sgagent.image(Image.fromarray((rs.rand(480, 640, 3) * 255).astype("uint8"))) for _ in range(n)]


def questions(n: int) -> list[str]:
    return [f"Question {i}: what is unusual about this picture, and why?" for i in range(n)]


@sgagent.program
async def ask(s, img, question: str):
    s += sgagent.user([img, question])
    async with s.assistant():
        await s.gen("answer", max_tokens=NEW_TOKENS, temperature=0, ignore_eos=True)


def transformers_floor(path, items) -> float:
    import torch
    from transformers import AutoModelForImageTextToText, AutoProcessor

    model = AutoModelForImageTextToText.from_pretrained(str(path), dtype=torch.float32).eval()
    proc = AutoProcessor.from_pretrained(str(path))
    t0 = time.perf_counter()
    for img, q in items:
        text = proc.apply_chat_template([{"role": "user", "content": [{"type": "image"}, {"type": "text", "text": q}]}],
                                        add_generation_prompt=True)
        inputs = proc(text=[text], images=[img.pil], return_tensors="pt", add_special_tokens=False)
        with torch.no_grad():
            model.generate(**inputs, max_new_tokens=NEW_TOKENS, min_new_tokens=NEW_TOKENS, do_sample=False)
    return time.perf_counter() - t0


async def main(runs: int, small: bool) -> None:
    n_images, per_image = (2, 2) if small else (4, 8)
    size = "tiny" if small else "bench"
    print(f"# multimodal: {n_images} images x {per_image} questions, {size} LLaVA, on {machine()}")
    with tempfile.TemporaryDirectory() as d:
        from sgagent.engine.model.source import resolve

        path = build_llava(d, resolve(None).load_tokenizer(), size=size)  # SmolLM2's tokenizer, <image> added
        base = sgagent.Engine(str(path), kv_cache_bytes=1 << 30)
        imgs, qs = pictures(n_images), questions(per_image)
        items = [(img, q) for q in qs for img in imgs]  # interleaved: a batch mixes images, as a server sees them

        async def batch(e):
            await sgagent.run_batch(ask, [{"img": i, "question": q} for i, q in items], engine=e, progress=False)

        times, stats = {}, {}
        for name, overrides in SYSTEMS.items():
            got = [await cold_run(base, batch, **overrides) for _ in range(runs)]
            times[name] = statistics.median(t for t, _ in got)
            stats[name] = got[-1][1]
        floor = transformers_floor(path, items[: max(2, len(items) // 4)]) * len(items) / max(2, len(items) // 4)
        await base.aclose()
    s = stats["reuse"]
    report("multimodal_llava", programs=len(items), reuse_s=times["reuse"], no_radix_s=times["no_radix"],
           no_reuse_s=times["no_reuse"], ratio=times["no_reuse"] / times["reuse"],
           ratio_no_radix=times["no_radix"] / times["reuse"], hit_rate=s["cache_hit_rate"],
           images_encoded=s["images_encoded"], encoder_hit_rate_no_radix=stats["no_radix"]["image_cache_hit_rate"],
           images_encoded_no_reuse=stats["no_reuse"]["images_encoded"], transformers_s=floor,
           vs_transformers=floor / times["reuse"], runs=runs)


if __name__ == "__main__":
    cli(main)
