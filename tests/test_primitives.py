"""Program primitives: rendering, select vs transformers, fork sharing, multi-turn reuse, cancellation."""

import asyncio
import re
from pathlib import Path

import anyio
import pytest

import sgagent
from sgagent import assistant, program, system, user
from conftest import settle, hf_logprobs

LONG_SYSTEM = "You are a meticulous assistant. " + " ".join(
    f"Rule {i}: always double-check step {i} before answering." for i in range(20))


async def test_state_renders_like_the_chat_template(fresh):
    @program
    async def chat(s):
        s += system("Be brief.")
        s += user("Hi!")
        s += assistant("Hello.")
        async with s.user():
            s += "What is "
            s += "2 + 2?"
        async with s.assistant():
            in_block = s.text()
            await s.gen("a", max_tokens=8, temperature=0)
        return in_block

    st = await chat.run(engine=fresh)
    msgs = st.messages()
    assert [m["role"] for m in msgs] == ["system", "user", "assistant", "user", "assistant"]
    assert msgs[3]["content"] == "What is 2 + 2?" and msgs[4]["content"] == st["a"]
    assert st.text() == fresh.render(msgs, add_generation_prompt=False)
    assert st.return_value == fresh.render(msgs[:4], add_generation_prompt=True)


async def test_select_agrees_with_transformers(fresh, hf_model):
    @program
    async def pick(s):
        s += user("Is the sun hot or cold? Answer with one word.")
        async with s.assistant():
            await s.select("a", choices=["Hot", "Cold", "Lukewarm and mild"])
            return s.info["a"]

    for method in ("normalized", "total"):
        st = await pick.run(engine=fresh)
        info = st.return_value
        prompt = fresh.tokenize(messages=[{"role": "user", "content": "Is the sun hot or cold? Answer with one word."}])
        ref = {}
        for c in ["Hot", "Cold", "Lukewarm and mild"]:
            lps = hf_logprobs(hf_model, prompt, fresh.tokenizer.encode(c, add_special_tokens=False))
            ref[c] = sum(lps) / len(lps)
        for c, v in info["scores"].items():
            assert v == pytest.approx(ref[c], abs=1e-3)
        assert st["a"] == max(ref, key=ref.get)

    @program
    async def pick_total(s):
        s += "The capital of France is"
        return await s.select("c", choices=[" Paris", " the city of Lyon in the south"], method="total")

    st = await pick_total.run(engine=fresh)
    assert st.return_value == " Paris" and st.info["c"]["method"] == "total"


async def test_fork_of_eight_computes_prefix_once_and_matches_alone(engine):
    on = engine.with_config(kv_cache_bytes=96 << 20)
    off = engine.with_config(kv_cache_bytes=96 << 20, radix_cache=False)

    @program
    async def fan(s):
        s += system(LONG_SYSTEM)
        s += user("Give me a number.")
        branches = s.fork(8)

        async def one(b, i):
            b += user(f"Now add {i} to it.")
            async with b.assistant():
                b.prompt = b.token_ids()
                await b.gen("out", max_tokens=8, temperature=0)

        async with sgagent.join(branches) as g:
            for i, b in enumerate(branches):
                g.start(one(b, i))
        return branches

    try:
        st = await fan.run(engine=on)
        branches = st.return_value
        trunk = len(on.tokenize(messages=[{"role": "system", "content": LONG_SYSTEM},
                                          {"role": "user", "content": "Give me a number."}], add_generation_prompt=False))
        s = on.stats()
        tails = sum(len(b.prompt) for b in branches) - 8 * trunk
        assert trunk > 300
        assert s["prefill_tokens"] <= trunk + tails + 8 * on.config.page_size, (s["prefill_tokens"], trunk, tails)
        assert len(st["out"]) == 8 and st["out"] == [b["out"] for b in branches]
        for b in branches:  # each branch's prompt, run alone on an engine without reuse
            alone = await off.generate(b.prompt, max_tokens=8, temperature=0)
            assert alone.text == b["out"]
    finally:
        await on.aclose()
        await off.aclose()


async def test_multi_turn_reuses_previous_turns(fresh):
    @program
    async def chat(s, turns):
        s += system(LONG_SYSTEM)
        cached = []
        for t in turns:
            s += user(t)
            async with s.assistant():
                await s.gen("r", max_tokens=10, temperature=0)
            cached.append(s.info["r"]["usage"].cached_tokens)
        return cached

    st = await chat.run(engine=fresh, turns=["Hi.", "Tell me a colour.", "Another one.", "Thanks."])
    cached = st.return_value
    assert cached[0] == 0
    assert all(b > a for a, b in zip(cached, cached[1:])), cached


async def test_stream_gen_appends_what_it_yields(fresh):
    @program
    async def s1(s):
        s += user("Count to five.")
        pieces = []
        async with s.assistant():
            async for p in s.stream_gen("c", max_tokens=20, temperature=0):
                pieces.append(p)
        return pieces

    st = await s1.run(engine=fresh)
    assert len(st.return_value) > 2 and "".join(st.return_value) == st["c"]
    assert st.messages()[-1]["content"] == st["c"]


async def test_branch_error_cancels_others_and_leaks_nothing(fresh):
    class Boom(Exception):
        pass

    @program
    async def failing(s):
        s += "Once upon a time"
        branches = s.fork(4)

        async def one(b, i):
            if i == 2:
                await asyncio.sleep(0.3)
                raise Boom()
            await b.gen("x", max_tokens=400, ignore_eos=True)

        async with sgagent.join(branches) as g:
            for i, b in enumerate(branches):
                g.start(one(b, i))

    with pytest.raises(Boom):
        await failing.run(engine=fresh)
    await settle(fresh)
    assert fresh.stats()["aborted"] >= 3


async def test_timeouts_cancel_programs_and_their_branches(fresh):
    @program
    async def slow(s):
        s += "A long story:"
        bs = s.fork(3)
        await sgagent.gather(*(b.gen("x", max_tokens=500, ignore_eos=True) for b in bs))

    with pytest.raises(TimeoutError):
        with anyio.fail_after(0.5):
            await slow.run(engine=fresh)
    with pytest.raises(TimeoutError):
        async with asyncio.timeout(0.4):
            await slow.run(engine=fresh)
    await settle(fresh)


async def test_run_batch_orders_results_and_reports_errors(fresh):
    @program
    async def p(s, i):
        if i == 3:
            raise ValueError("bad input")
        s += f"Number {i}:"
        await s.gen("x", max_tokens=3, temperature=0)
        return i

    states = await sgagent.run_batch(p, [{"i": i} for i in range(6)], engine=fresh, concurrency=2,
                                     progress=True, return_exceptions=True)
    assert [getattr(s, "return_value", None) for s in states] == [0, 1, 2, None, 4, 5]
    assert isinstance(states[3], ValueError)
    with pytest.raises(ValueError):
        await sgagent.run_batch(p, [{"i": i} for i in range(6)], engine=fresh, progress=False)
    await settle(fresh)


async def test_readme_examples_run(engine, monkeypatch, capsys):
    readme = (Path(__file__).parents[1] / "README.md").read_text()
    blocks = re.findall(r"```python\n(.*?)```", readme, re.S)
    assert len(blocks) >= 3
    made = []

    def make_engine(*a, **kw):
        e = engine.with_config(kv_cache_bytes=64 << 20)
        made.append(e)
        return e

    monkeypatch.setattr(sgagent, "Engine", make_engine)
    for code in blocks:
        code = code.replace("asyncio.run(main())", "")
        ns: dict = {}
        exec(compile(code, "README.md", "exec"), ns)
        await ns["main"]()
    out = capsys.readouterr().out
    assert "cache_hit_rate" in out or "0." in out
    assert made and all(e._closed for e in made)
