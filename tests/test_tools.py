"""Tools: schemas from signatures, validation before calls, concurrent runs, and the loop on the default model."""

import asyncio
import copy
import dataclasses
import enum
import json
import time
from typing import Literal, Optional

import jsonschema
import pydantic
import pytest

from sgagent import ProgramState, user
from sgagent.errors import ToolArgumentsError, ToolDefinitionError, UnknownToolError
from sgagent.tools import FINAL, Tool, ToolCall, ToolResult, ToolSet, tool, tool_loop
from tests.conftest import settle


class Color(enum.Enum):
    red = "red"
    blue = "blue"


class Item(pydantic.BaseModel):
    sku: str
    qty: int = 1


@dataclasses.dataclass
class Point:
    x: float
    y: float


def test_schema_from_a_wide_signature():
    calls = []

    @tool
    def book(city: str, nights: int, unit: Literal["c", "f"] = "c", budget: Optional[float] = None,
             tags: list[str] = [], color: Color = Color.red, items: list[Item] = [], at: Point | None = None,
             meta: dict[str, int] = {}, flag: bool = False):
        """Book a stay.

        Second paragraph is not part of the description.

        Args:
            city: where to stay
            nights: how many
                nights, at least one.
        """
        calls.append((city, nights, unit, budget, tags, color, items, at, meta, flag))
        return "ok"

    assert book.name == "book" and book.description == "Book a stay."
    p = book.parameters
    assert p["required"] == ["city", "nights"] and p["additionalProperties"] is False
    assert p["properties"]["city"] == {"description": "where to stay", "title": "City", "type": "string"}
    assert p["properties"]["nights"]["description"] == "how many nights, at least one."
    assert p["properties"]["unit"]["enum"] == ["c", "f"] and p["properties"]["unit"]["default"] == "c"
    assert {"type": "null"} in p["properties"]["budget"]["anyOf"]
    assert p["properties"]["tags"]["items"] == {"type": "string"}
    assert p["$defs"]["Color"]["enum"] == ["red", "blue"]
    assert p["$defs"]["Item"]["required"] == ["sku"]
    assert set(p["$defs"]["Point"]["required"]) == {"x", "y"}
    assert p["properties"]["meta"]["additionalProperties"] == {"type": "integer"}
    jsonschema.validators.validator_for(p).check_schema(p)
    spec = book.spec()
    assert spec["type"] == "function" and spec["function"]["name"] == "book"

    kw = book.validate({"city": "Oslo", "nights": 2, "color": "blue", "items": [{"sku": "a"}], "at": {"x": 1, "y": 2}})
    assert kw["color"] is Color.blue and kw["items"] == [Item(sku="a")] and kw["at"] == Point(1.0, 2.0)
    assert kw["unit"] == "c" and kw["budget"] is None


async def test_async_tools_and_custom_names():
    @tool(name="lookup-user", timeout=1.0)
    async def find(user_id: int) -> dict:
        """Find a user."""
        await asyncio.sleep(0)
        return {"id": user_id}

    assert find.name == "lookup-user" and find.timeout == 1.0 and find.is_async
    assert await find.run({"user_id": 3}) == {"id": 3}


def test_bad_definitions_are_typed_errors():
    def no_hint(x):
        pass

    def star(*args: int):
        pass

    with pytest.raises(ToolDefinitionError, match="type hint"):
        Tool(no_hint)
    with pytest.raises(ToolDefinitionError, match=r"\*args"):
        Tool(star)
    with pytest.raises(ToolDefinitionError, match="name"):
        Tool(lambda: None, name="has space")

    @tool
    def a(x: int):
        pass

    with pytest.raises(ToolDefinitionError, match="taken"):
        ToolSet([a, a])
    with pytest.raises(ToolDefinitionError, match="taken"):
        ToolSet([Tool(a.fn, name=FINAL)])


@pytest.mark.parametrize("bad", [
    {}, {"n": "seven"}, {"n": 1, "extra": 2}, {"n": 1, "mode": "fast"}, {"n": [1]}, "not an object", None,
])
async def test_invalid_arguments_never_reach_the_tool(bad):
    seen = []

    @tool
    def count(n: int, mode: Literal["up", "down"] = "up"):
        seen.append(n)
        return n

    with pytest.raises(ToolArgumentsError, match="count"):
        await count.run(bad)
    r = await ToolSet([count]).call(ToolCall("count", bad))
    assert not r.ok and r.error.startswith("ToolArgumentsError") and "error" in json.loads(r.content())
    assert seen == []
    assert (await count.run({"n": 2})) == 2 and seen == [2]


async def test_calls_run_concurrently_and_failures_become_results():
    @tool
    async def slow(seconds: float) -> str:
        await asyncio.sleep(seconds)
        return f"slept {seconds}"

    @tool
    def boom(reason: str) -> str:
        raise RuntimeError(reason)

    @tool(timeout=0.2)
    def stuck(x: int) -> int:
        time.sleep(1.0)  # a blocking tool: it runs in a thread and is abandoned at its timeout
        return x

    ts = ToolSet([slow, boom, stuck])
    calls = [ToolCall("slow", {"seconds": 0.4}) for _ in range(5)] + [
        ToolCall("boom", {"reason": "disk full"}), ToolCall("stuck", {"x": 1}), ToolCall("nope", {})]
    t0 = time.perf_counter()
    results = await ts.run(calls)
    elapsed = time.perf_counter() - t0
    assert elapsed < 0.9, elapsed  # five 0.4 s calls together, not one after another
    assert [r.value for r in results[:5]] == ["slept 0.4"] * 5
    assert results[5].error == "RuntimeError: disk full"
    assert results[6].error.startswith("TimeoutError")
    assert results[7].error.startswith("UnknownToolError")
    with pytest.raises(UnknownToolError, match="nope"):
        ts.parse({"name": "nope", "arguments": {}})
    # a huge result is cut before it reaches the prompt, and says so
    big = ToolResult(calls[0], value=["row"] * 5000)
    assert len(big.content()) > 20000
    cut = big.content(ts.max_result_chars)
    assert cut.startswith('["row", ') and cut.endswith("more characters cut]") and len(cut) < 4100


def test_step_schema_fixes_names_and_merges_defs():
    class Item2(pydantic.BaseModel):
        n: int

    @tool
    def a(item: Item):
        pass

    @tool
    def b(item: Item2):  # a different model under the same title would clash without prefixes
        pass

    Item2.__name__ = "Item"
    ts = ToolSet([a, b])
    schema = ts.step_schema(parallel=3)
    validator = jsonschema.validators.validator_for(schema)(schema)
    assert validator.is_valid([{"name": "a", "arguments": {"item": {"sku": "x"}}},
                               {"name": "b", "arguments": {"item": {"n": 1}}}])
    assert not validator.is_valid([{"name": "b", "arguments": {"item": {"sku": "x"}}}])
    assert not validator.is_valid([{"name": "c", "arguments": {}}])
    assert not validator.is_valid([])
    assert validator.is_valid({"name": FINAL, "arguments": {"answer": "42"}})
    only_answer = ts.step_schema(allow_calls=False)
    assert not jsonschema.validators.validator_for(only_answer)(only_answer).is_valid(
        {"name": "a", "arguments": {"item": {"sku": "x"}}})


# -- on the default model ----------------------------------------------------------------------------------
@tool
def get_weather(city: str, unit: Literal["celsius", "fahrenheit"] = "celsius") -> dict:
    """Current weather in a city.

    Args:
        city: the city name
        unit: temperature unit
    """
    return {"city": city, "temperature": 21 if unit == "celsius" else 70, "unit": unit}


@tool
def add(a: int, b: int) -> int:
    """Add two integers."""
    return a + b


@tool
async def search(query: str, limit: int = 3) -> list[str]:
    """Search the web and return result titles."""
    return [f"{query} result {i}" for i in range(min(limit, 10))]  # the model picks limit: it may be huge


TOOLS = ToolSet([get_weather, add, search])
TASKS = ["What is the weather in Paris?", "What is 17 plus 25?", "Find news about Mars rovers.",
         "Is it warm in Tokyo today, in fahrenheit?", "Add 3 and 4, then tell me the weather in Rome."]


async def test_tool_loop_calls_are_always_well_formed(engine):
    e = engine.with_config(kv_cache_bytes=128 << 20)
    seen: list[ToolCall] = []
    checked = {t.name: t for t in TOOLS}

    async def one(i: int):
        s = ProgramState(e, f"tool-loop-{i}")
        s += TOOLS.system(e)
        s += user(TASKS[i % len(TASKS)])
        must = 1 if i % 5 == 0 else 0  # some runs may not answer before calling a tool
        r = await tool_loop(s, TOOLS, max_steps=2, min_steps=must, parallel=2 if i % 4 == 3 else 1,
                            max_tokens=64, temperature=0.8, seed=i)
        assert len(r.steps) >= must
        for c in r.calls:
            checked[c.name].validate(c.arguments)  # raises if the FSM let a bad call through
            seen.append(c)
        for step in r.steps:
            assert all(res.ok for res in step.results), [res.error for res in step.results]
        assert isinstance(r.answer, str) and r.reason in ("answer", "budget", "length")
        return r

    results = await asyncio.gather(*(one(i) for i in range(100)))
    assert len(results) == 100
    assert len(seen) >= 50 and {c.name for c in seen} >= {"get_weather", "add"}, [c.name for c in seen]
    assert sum(r.reason == "answer" for r in results) >= 1
    s = e.stats()
    assert s["cached_tokens"] > 0.5 * s["prompt_tokens"]  # same system prompt and tools: mostly reused
    await settle(e)
    await e.aclose()


async def test_min_steps_must_fit_the_budget():
    with pytest.raises(ValueError, match="min_steps"):
        await tool_loop(None, TOOLS, max_steps=1, min_steps=2)
    assert FINAL not in json.dumps(TOOLS.step_schema(allow_answer=False))


def test_an_answer_cut_at_max_tokens_is_kept_and_a_cut_call_is_not():
    from sgagent.tools.loop import _cut_answer

    head = '{ "name": "final_answer", "arguments": {"answer": '
    assert _cut_answer(head + '"Warm, about 21 \\u00') == "Warm, about 21 "
    assert _cut_answer(head + '"say \\"hi') == 'say "hi'
    assert _cut_answer('{"name": "add", "arguments": {"a": 1') is None


async def test_tool_errors_go_back_to_the_model(fresh):
    @tool
    def flaky(city: str) -> str:
        """Look up a city; it fails."""
        raise ConnectionError("upstream down")

    ts = ToolSet([flaky])
    s = ProgramState(fresh, "flaky")
    s += ts.system(fresh)
    s += user("Look up Paris.")
    r = await tool_loop(s, ts, max_steps=1, max_tokens=64, temperature=0.0)
    if r.steps:  # the model chose to call the tool: its failure is the tool message it read next
        assert r.steps[0].results[0].error == "ConnectionError: upstream down"
        assert any(m["role"] == "tool" and "upstream down" in m["content"] for m in s.messages())
    assert isinstance(r.answer, str)
    await settle(fresh)


async def test_templates_with_tool_support_render_the_tool_list(engine):
    tok = copy.deepcopy(engine.tokenizer)
    tok.chat_template = (
        "{% if tools %}<|im_start|>system\nTOOLS:{% for t in tools %} {{ t.function.name }}{% endfor %}"
        "<|im_end|>\n{% endif %}{% for m in messages %}<|im_start|>{{ m.role }}\n{{ m.content }}<|im_end|>\n"
        "{% endfor %}{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}")

    class TemplateEngine:
        tokenizer = tok
        chat_template_has_tools = True
        render = engine.render.__func__

    te = TemplateEngine()
    te.render = lambda msgs, add_generation_prompt=True, tools=None: type(engine).render(
        te, msgs, add_generation_prompt, tools)
    s = ProgramState(te, "tpl")
    s += TOOLS.system(te, "Be brief.")
    s += user("hi")
    assert s.text().startswith("<|im_start|>system\nTOOLS: get_weather add search<|im_end|>")
    assert "Be brief." in s.text()
    with pytest.raises(Exception, match="first"):
        s += TOOLS.system(te)
