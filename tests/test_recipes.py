"""Every recipe runs on the default model at a small size and produces what it says; the CLI runs files."""

from pathlib import Path

import pytest

import sgagent.engine
from sgagent import cli
from sgagent.tools import FINAL
from tests.conftest import assert_quiescent, settle

RECIPES = Path(__file__).parent.parent / "recipes"


def recipe(name: str):
    return cli.load_file(str(RECIPES / f"{name}.py"))


def test_every_recipe_has_a_docstring_and_a_test():
    names = sorted(p.stem for p in RECIPES.glob("*.py") if p.stem != "__init__")
    tested = {n for n in globals() if n.startswith("test_recipe_")}
    assert {f"test_recipe_{n}" for n in names} <= tested, names
    for n in names:
        text = (RECIPES / f"{n}.py").read_text()
        assert text.startswith('"""') and "Shows:" in text or "main job" in text, n


async def test_recipe_few_shot_qa(fresh):
    out = await recipe("few_shot_qa")(fresh, questions=4)
    assert len(out["picked"]) == 4 and set(out["picked"]) <= set("ABCD")
    assert out["cache_hit_rate"] > 0.5  # the examples block is computed once


async def test_recipe_hellaswag(fresh):
    mod = recipe("hellaswag").__globals__
    for method in ("total", "normalized"):
        out = await mod["main"](fresh, items=4, method=method)
        # the pick is the ending the model itself scores best (accuracy is the 135M model's own business)
        for (context, endings, _), pick in zip(mod["ITEMS"], out["picks"]):
            lps = await fresh.score(context, endings)
            scores = [sum(lp) / (len(lp) if method == "normalized" else 1) for lp in lps]
            assert pick == max(range(4), key=scores.__getitem__)


async def test_recipe_json_extraction(fresh):
    out = await recipe("json_extraction")(fresh, docs=2)
    (a, b) = out["people"]
    assert a.age > 0 and b.age > 0 and a.name and b.city  # validated Contact instances
    assert fresh.stats()["jump_forward_tokens"] > 0


async def test_recipe_tree_of_thought(fresh):
    out = await recipe("tree_of_thought")(fresh, width=2, depth=1)
    assert len(out["steps"]) == 1 and out["steps"][0] and isinstance(out["answer"], str)
    assert fresh.stats()["cache_hit_rate"] > 0.3


async def test_recipe_skeleton_of_thought(fresh):
    out = await recipe("skeleton_of_thought")(fresh, points=2)
    assert len(out["outline"].splitlines()) == 2 and len(out["expansions"]) == 2
    assert out["text"].startswith("1. ")


async def test_recipe_judge(fresh):
    out = await recipe("judge")(fresh, criteria=2)
    assert set(out["scores"]) == {"correctness", "clarity"} and all(1 <= v <= 5 for v in out["scores"].values())


async def test_recipe_multi_turn_chat(fresh):
    out = await recipe("multi_turn_chat")(fresh, conversations=2, turns=2)
    assert len(out["replies"]) == 2 and all(len(r) == 2 for r in out["replies"])
    assert out["cache_hit_rate"] > 0.3  # the second turn reuses the first


async def test_recipe_tool_calling(fresh):
    mod = recipe("tool_calling").__globals__
    out = await mod["main"](fresh, max_steps=1)
    for name, args in out["calls"]:
        mod["TOOLS"][name].validate(args)
    assert isinstance(out["answer"], str) and out["reason"] in ("answer", "budget", "length")


async def test_recipe_react(fresh):
    out = await recipe("react")(fresh, max_steps=1)
    assert 1 <= len(out["trace"]) <= 2 and out["trace"][-1][1] == FINAL


async def test_recipe_generative_agents(fresh):
    out = await recipe("generative_agents")(fresh, rounds=1)
    assert len(out["conversations"]) == 2 and all(c[3] and c[4] for c in out["conversations"])


async def test_recipe_showcase(fresh):
    out = await recipe("showcase")(fresh, ideas=2)
    assert out["call"][0] == "get_weather" and out["call"][1]["day"] in ("saturday", "sunday")
    assert out["best"] in ("A", "B") and out["cache_hit_rate"] > 0.3
    await settle(fresh)
    assert_quiescent(fresh)


async def test_cli_runs_a_program_file_with_typed_arguments(tmp_path, engine, monkeypatch):
    f = tmp_path / "prog.py"
    f.write_text("async def main(engine, n: int = 1, word: str = 'x', flag: bool = False):\n"
                 "    r = await engine.generate('Count:', max_tokens=n, temperature=0.0)\n"
                 "    return n, word, flag, r.usage.completion_tokens\n")
    monkeypatch.setattr(sgagent.engine, "Engine", lambda model: engine.with_config(kv_cache_bytes=32 << 20))
    assert await cli.run_file(str(f), None, ["n=3", "word=hi", "flag=true"]) == (3, "hi", True, 3)
    with pytest.raises(SystemExit, match="unknown argument 'm'"):
        await cli.run_file(str(f), None, ["m=1"])
    with pytest.raises(SystemExit, match="no such file"):
        cli.load_file(str(tmp_path / "missing.py"))
