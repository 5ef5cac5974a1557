"""Images in prompts on LLaVA and Idefics3 (SmolVLM) folders with random weights: parity with transformers, image
KV shared by content in the radix cache, the vision-encoder cache, primitives, the server, bad input, no leaks."""

import asyncio
import base64
import io

import numpy as np
import openai
import pytest
import torch
from PIL import Image as PILImage

import sgagent
from bench.vlm_models import build_idefics3, build_llava
from conftest import assert_quiescent, settle
from sgagent.errors import ImageTooLargeError, InvalidImageError, InvalidPromptError, UnsupportedInputError

FAMILIES = ["llava", "idefics3"]


def picture(seed: int, w: int = 50, h: int = 70) -> PILImage.Image:
    return PILImage.fromarray((np.random.RandomState(seed).rand(h, w, 3) * 255).astype("uint8"))


def png(pil) -> bytes:
    buf = io.BytesIO()
    pil.save(buf, format="PNG")
    return buf.getvalue()


@pytest.fixture(scope="module")
def folders(tmp_path_factory, engine):
    return {"llava": build_llava(tmp_path_factory.mktemp("llava"), engine.tokenizer),
            "idefics3": build_idefics3(tmp_path_factory.mktemp("idefics3"), engine.tokenizer)}


@pytest.fixture(scope="module")
async def vlms(folders):
    out = {f: sgagent.Engine(str(folders[f]), dtype="float32", kv_cache_bytes=32 << 20) for f in FAMILIES}
    yield out
    for e in out.values():
        await e.aclose()


@pytest.fixture(scope="module")
def refs(folders):
    from transformers import AutoModelForImageTextToText, AutoProcessor

    return {f: (AutoModelForImageTextToText.from_pretrained(str(folders[f]), dtype=torch.float32).eval(),
                AutoProcessor.from_pretrained(str(folders[f]))) for f in FAMILIES}


def transformers_greedy(family, ref, text: str, images: list, n: int):
    model, proc = ref
    pils = [i.pil for i in images]
    inputs = proc(text=[text], images=pils if family == "llava" else [pils], return_tensors="pt",
                  add_special_tokens=False)
    with torch.no_grad():
        out = model.generate(**inputs, max_new_tokens=n, do_sample=False, output_scores=True,
                             return_dict_in_generate=True)
    tokens = out.sequences[0, inputs["input_ids"].shape[1]:].tolist()
    lps = [float(s[0].log_softmax(-1)[t]) for s, t in zip(out.scores, tokens)]
    return inputs["input_ids"][0].tolist(), tokens, lps


def turns(family, a, b):
    """One image; two images in one prompt; an image in the second turn."""
    return {
        "one": [{"role": "user", "content": [{"type": "image", "image": a}, {"type": "text", "text": "What is it?"}]}],
        "two": [{"role": "user", "content": [{"type": "image", "image": a}, {"type": "text", "text": "and"},
                                             {"type": "image", "image": b}, {"type": "text", "text": "differ?"}]}],
        "second_turn": [{"role": "user", "content": "Hello there."}, {"role": "assistant", "content": "Hi."},
                        {"role": "user", "content": [{"type": "image", "image": b},
                                                     {"type": "text", "text": "Describe it."}]}],
    }


@pytest.mark.parametrize("family", FAMILIES)
async def test_greedy_tokens_and_logprobs_match_transformers(family, vlms, refs):
    e = vlms[family]
    a, b = sgagent.image(picture(1)), sgagent.image(picture(2, 64, 40))
    for case, messages in turns(family, a, b).items():
        text = e.render(messages)
        ids, want, want_lps = transformers_greedy(family, refs[family], text, [p["image"] for m in messages
                                                  if isinstance(m["content"], list) for p in m["content"]
                                                  if p["type"] == "image"], 16)
        r = await e.generate(messages=messages, max_tokens=16, temperature=0, ignore_eos=True, logprobs=True)
        assert r.token_ids == want, case
        assert np.allclose(r.logprobs, want_lps, atol=2e-3), case
        assert r.usage.prompt_tokens == len(ids), case
    assert e.stats()["images_encoded"] >= 2
    assert_quiescent(e)


@pytest.mark.parametrize("family", FAMILIES)
async def test_same_image_reuses_kv_and_different_images_never_share(family, vlms):
    e = vlms[family].with_config(kv_cache_bytes=32 << 20)
    try:
        img = sgagent.image(png(picture(3)))
        first = await e.multimodal_prompt("<image>", [img])
        rows = sum(p.rows for p in first.images.values())
        questions = [f"Question {i}: what is in the picture?" for i in range(8)]
        runs = [await e.generate(f"<image>{q}", images=[img], max_tokens=4, temperature=0) for q in questions]
        # the first computes the image; the other seven find its rows (and what precedes them) in the cache
        assert all(r.usage.cached_tokens >= rows for r in runs[1:])
        assert e.stats()["images_encoded"] == 1
        # the same placeholder text over another picture: nothing past the text before the image is shared
        other = await e.generate(f"<image>{questions[0]}", images=[picture(4)], max_tokens=4, temperature=0)
        assert other.usage.cached_tokens < rows
        assert e.stats()["images_encoded"] == 2
        off = vlms[family].with_config(radix_cache=False, kv_cache_bytes=32 << 20)
        try:
            for q, r in zip(questions, runs):
                again = await off.generate(f"<image>{q}", images=[img], max_tokens=4, temperature=0)
                assert again.token_ids == r.token_ids and again.usage.cached_tokens == 0
            # without the radix cache the encoder's output is still reused by content
            assert off.stats()["images_encoded"] == 1 and off.stats()["image_cache_hits"] >= 7
        finally:
            await off.aclose()
        await settle(e)
    finally:
        await e.aclose()


@pytest.mark.parametrize("family", FAMILIES)
async def test_chunked_prefill_splitting_an_image_changes_nothing(family, vlms):
    img = sgagent.image(picture(5))
    messages = turns(family, img, img)["one"]
    ref = await vlms[family].generate(messages=messages, max_tokens=8, temperature=0, ignore_eos=True)
    small = vlms[family].with_config(max_batch_tokens=7, radix_cache=False, kv_cache_bytes=16 << 20)
    try:
        r = await small.generate(messages=messages, max_tokens=8, temperature=0, ignore_eos=True)
        assert r.token_ids == ref.token_ids
        assert small.counters["steps"] > r.usage.prompt_tokens // 7  # the prompt did run in chunks
    finally:
        await small.aclose()


async def test_programs_with_images_fork_select_constrain_and_batch(vlms):
    e = vlms["idefics3"]
    img = sgagent.image(picture(6))

    @sgagent.program
    async def ask(s, question: str):
        s += sgagent.user([img, question])
        async with s.assistant():
            await s.gen("answer", max_tokens=6, temperature=0)
        s += sgagent.user("Yes or no?")
        async with s.assistant():
            await s.select("verdict", choices=["yes", "no"])
        branches = s.fork(2)
        await sgagent.gather(*(b.gen("n", regex=r"[0-9]{2}", temperature=0) for b in branches))
        return [b["n"] for b in branches]

    states = await sgagent.run_batch(ask, [{"question": f"Is there a {w}?"} for w in ("cat", "dog", "car")],
                                     engine=e, progress=False)
    for st in states:
        assert st["verdict"] in ("yes", "no")
        assert all(len(n) == 2 and n.isdigit() for n in st.return_value)
        assert len(st.images()) == 1
    direct = await e.generate(messages=[{"role": "user", "content": [{"type": "image", "image": img},
                                                                     {"type": "text", "text": "Is there a cat?"}]}],
                              max_tokens=6, temperature=0)
    assert states[0]["answer"] == direct.text
    await settle(e)


async def test_bad_image_input_fails_typed_and_leaks_nothing(vlms, engine):
    e = vlms["llava"]
    with pytest.raises(InvalidImageError):
        sgagent.image(b"not an image at all")
    with pytest.raises(InvalidImageError):
        sgagent.image("https://example.com/cat.png")
    with pytest.raises(ImageTooLargeError):
        sgagent.image(png(picture(1)), max_pixels=100)
    with pytest.raises(InvalidImageError):
        await e.generate("<image>hi", images=[b"\x89PNG broken"], max_tokens=2)
    with pytest.raises(InvalidPromptError):
        await e.generate("no placeholder here", images=[picture(1)], max_tokens=2)
    with pytest.raises(UnsupportedInputError):
        await engine.generate(messages=[{"role": "user", "content": [{"type": "image", "image": picture(1)}]}])
    strict = e.with_config(max_images_per_prompt=1, max_image_pixels=1000)
    try:
        with pytest.raises(UnsupportedInputError):
            await strict.generate("<image><image>", images=[picture(1), picture(2)], max_tokens=2)
        with pytest.raises(ImageTooLargeError):
            await strict.generate("<image>", images=[picture(1, 100, 100)], max_tokens=2)
    finally:
        await strict.aclose()
    # successes, failures and cancellations mixed: every page and lock comes back
    tasks = [asyncio.create_task(e.generate(f"<image>q{i}", images=[picture(i % 3)], max_tokens=20, temperature=0))
             for i in range(6)]
    tasks.append(asyncio.create_task(e.generate("<image>", images=[b"junk"], max_tokens=2)))
    await asyncio.sleep(0.05)
    tasks[1].cancel()
    tasks[4].cancel()
    done = await asyncio.gather(*tasks, return_exceptions=True)
    assert sum(isinstance(d, sgagent.GenerateResult) for d in done) >= 4
    assert isinstance(done[-1], InvalidImageError)
    await settle(e)


async def test_server_takes_data_url_images_from_the_openai_client(vlms, tmp_path):
    from sgagent.server import start

    e = vlms["idefics3"]
    (tmp_path / "pic.png").write_bytes(png(picture(7)))
    srv = await start(e, model="vlm", image_dir=str(tmp_path))
    client = openai.AsyncOpenAI(base_url=srv.url, api_key="unused", max_retries=0, timeout=600)
    try:
        url = "data:image/png;base64," + base64.b64encode(png(picture(7))).decode()
        content = [{"type": "image_url", "image_url": {"url": url}}, {"type": "text", "text": "What is it?"}]
        r = await client.chat.completions.create(model="vlm", messages=[{"role": "user", "content": content}],
                                                 max_tokens=8, temperature=0)
        ref = await e.generate(messages=[{"role": "user", "content": [
            {"type": "image", "image": picture(7)}, {"type": "text", "text": "What is it?"}]}],
            max_tokens=8, temperature=0)
        assert r.choices[0].message.content == ref.text
        assert r.usage.prompt_tokens == ref.usage.prompt_tokens
        local = [{"type": "image_url", "image_url": {"url": f"file://{tmp_path / 'pic.png'}"}}, content[1]]
        r2 = await client.chat.completions.create(model="vlm", messages=[{"role": "user", "content": local}],
                                                  max_tokens=8, temperature=0)
        assert r2.choices[0].message.content == ref.text
        for bad in ("https://example.com/a.png", "file:///etc/passwd", "data:image/png;base64,AAAA"):
            parts = [{"type": "image_url", "image_url": {"url": bad}}, content[1]]
            with pytest.raises(openai.BadRequestError):
                await client.chat.completions.create(model="vlm", messages=[{"role": "user", "content": parts}],
                                                     max_tokens=2)
    finally:
        await client.close()
        await srv.stop()
    await settle(e)


async def test_readme_image_example_runs(vlms, tmp_path, monkeypatch, capsys):
    import re
    from pathlib import Path

    readme = (Path(__file__).parents[1] / "README.md").read_text()
    (code,) = [b for b in re.findall(r"```py\n(.*?)```", readme, re.S) if "image(" in b]
    picture(8).save(tmp_path / "cat.png")
    monkeypatch.chdir(tmp_path)
    made = []

    def make_engine(*a, **kw):
        made.append(vlms["idefics3"].with_config(kv_cache_bytes=16 << 20))
        return made[-1]

    monkeypatch.setattr(sgagent, "Engine", make_engine)
    ns: dict = {}
    exec(compile(code.replace("asyncio.run(main())", ""), "README.md", "exec"), ns)
    await ns["main"]()
    out = [line for line in capsys.readouterr().out.splitlines() if not line.startswith("20")]  # not log lines
    assert re.search(r"\[('yes'|'no'), ('yes'|'no')\]$", out[0])
    assert float(out[-1].split()[-1]) > 0  # the second call found the picture's KV
    assert made and all(e._closed for e in made)
