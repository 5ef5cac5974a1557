"""ProgramState: the prompt a program builds, the variables it generates, and the primitives on it."""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import weakref
from collections.abc import AsyncIterator
from typing import Any

from ..engine.programs import calling
from ..engine.prompts import message_images
from ..errors import SgagentError, UnsupportedInputError
from ..image_input import Image
from ..log import get_logger
from .chat import ChatRenderer
from .roles import Message, content_parts, message_content

SELECT_METHODS = ("normalized", "total")
_END = object()
_state_ids = itertools.count()


def _unreachable(end_program, program_id: str) -> None:
    # a collection can run inside the engine's step, in the middle of its pin bookkeeping: end on the next turn
    try:
        asyncio.get_running_loop().call_soon(end_program, program_id)
    except RuntimeError:
        pass  # no loop (interpreter exit, another thread): the engine forgets idle programs by itself


class ProgramState:
    def __init__(self, engine, program_id: str | None = None, path: tuple[int, ...] = (),
                 parent: "ProgramState | None" = None, *, program_ends: bool = True):
        """program_id: unique among the programs running on the engine (one made up when None); the engine keeps
        a program's KV between its calls and schedules by it. program_ends: once nothing holds this state, its
        program has ended; False where something else ends it (Program.run when its function returns, the agent
        runtime for an agent's states, whose program is the agent)."""
        self.engine = engine
        self.program_id = program_id or f"state-{next(_state_ids)}"
        self.path = path
        self._parent = parent
        self._chat = ChatRenderer(engine)
        self._text = ""
        self._history: list[dict] = []  # completed chat messages
        self._block: list | None = None  # [role, content parts (str, Image)] of an open role block
        self._images: list[Image] = []  # the images of the prompt so far, in order (outside an open block)
        self._vars: dict[str, Any] = {}
        self.info: dict[str, dict] = {}  # per variable: usage, finish reason, select scores...
        self.return_value: Any = None
        self._base_vars: dict[str, Any] = {}
        self.log = get_logger("sgagent.program", program_id=self.program_id, branch=self.branch_name)
        end = getattr(engine, "end_program", None)
        if program_ends and not path and end is not None:
            # a trunk nobody holds makes no more calls (a state dropped half-way, a helper's throwaway state):
            # its program has ended, so its pins go now instead of at their TTL
            weakref.finalize(self, _unreachable, end, self.program_id)

    @property
    def branch_name(self) -> str:
        return "/".join(map(str, self.path)) or "root"

    # -- building the prompt -------------------------------------------------------------------
    def __iadd__(self, item) -> "ProgramState":
        if isinstance(item, Message):
            if self._block is not None:
                raise SgagentError(f"cannot add a {item.role} message inside an open {self._block[0]} block")
            if item.tools is not None:
                if self._history or self._text:
                    raise SgagentError("a message carrying tools must be the first thing in the prompt")
                self._chat.tools = [dict(t) for t in item.tools]
            self._append_message(item.as_dict())
        elif isinstance(item, str):
            self._append_text(item)
        elif isinstance(item, Image):
            self._append_image(item)
        else:
            raise TypeError(f"can add str, an image or a role message to a program state, not {type(item).__name__}")
        return self

    def _append_message(self, msg: dict) -> None:
        self._text += self._chat.message(self._history, msg)
        self._history.append(msg)
        self._images += message_images([msg])

    def _append_text(self, text: str) -> None:
        if self._block is not None:
            self._block[1].append(text)
        else:
            self._text += text

    def _append_image(self, img: Image) -> None:
        """An image where the prompt is: in a role block, a content part; in plain text, the model's image token."""
        if self._block is not None:
            self._block[1].append(img)
            return
        if getattr(self.engine, "vision", None) is None:
            raise UnsupportedInputError("this engine's model is text-only: it takes no images")
        self._text += self.engine.vision.image_token
        self._images.append(img)

    def _block_content(self):
        return content_parts(message_content(self._block[1]))

    def _block_text(self) -> str:
        vision = getattr(self.engine, "vision", None)
        token = vision.image_token if vision is not None else ""
        return "".join(token if isinstance(p, Image) else p for p in self._block[1])

    def system(self):
        return self._role_block("system")

    def user(self):
        return self._role_block("user")

    def assistant(self):
        return self._role_block("assistant")

    @contextlib.asynccontextmanager
    async def _role_block(self, role: str):
        if self._block is not None:
            raise SgagentError(f"role blocks do not nest (a {self._block[0]} block is open)")
        self._block = [role, []]
        try:
            yield self
        finally:
            content = self._block_content()
            self._block = None
        self._append_message({"role": role, "content": content})

    def text(self) -> str:
        """The prompt so far, as the model sees it."""
        if self._block is None:
            return self._text
        return self._text + self._chat.role_prefix(self._history, self._block[0]) + self._block_text()

    def messages(self) -> list[dict]:
        out = [dict(m) for m in self._history]
        if self._block is not None:
            out.append({"role": self._block[0], "content": self._block_content()})
        return out

    def images(self) -> list[Image]:
        """The prompt's images, in order."""
        extra = [p for p in self._block[1] if isinstance(p, Image)] if self._block is not None else []
        return self._images + extra

    def token_ids(self) -> list[int]:
        # a chat template writes its own special tokens; plain text gets the tokenizer's (e.g. BOS)
        if self.images():
            raise SgagentError("a prompt with images is a MultimodalPrompt: await state.to_prompt()")
        return self.engine.tokenizer.encode(self.text(), add_special_tokens=not self._history)

    async def to_prompt(self):
        """The prompt as the engine takes it: token ids, or with images a MultimodalPrompt."""
        images = self.images()
        if not images:
            return self.token_ids()
        return await self.engine.multimodal_prompt(self.text(), images, add_special_tokens=not self._history)

    def __getitem__(self, name: str):
        return self._vars[name]

    def __contains__(self, name: str) -> bool:
        return name in self._vars

    def get(self, name: str, default=None):
        return self._vars.get(name, default)

    def variables(self) -> dict[str, Any]:
        return dict(self._vars)

    def _set(self, name: str | None, value, info: dict) -> None:
        if name is not None:
            self._vars[name] = value
            self.info[name] = info

    # -- primitives ----------------------------------------------------------------------------
    async def gen(self, name: str | None = None, *, max_tokens: int = 128, stop=None, temperature: float = 1.0,
                  top_p: float = 1.0, top_k: int = 0, min_p: float = 0.0, seed: int | None = None,
                  regex: str | None = None, json_schema=None, choices: list[str] | None = None,
                  grammar: str | None = None, **extra):
        """Generate at the end of the prompt; the text is appended and stored under `name`. At most one
        constraint: regex, json_schema (the variable holds the parsed value), choices, or a Lark/GBNF grammar."""
        prompt = await self.to_prompt()
        with self._call():
            r = await self.engine.generate(
                prompt, max_tokens=max_tokens, stop=stop or [], temperature=temperature, top_p=top_p, top_k=top_k,
                min_p=min_p, seed=seed, regex=regex, json_schema=json_schema, choices=choices, grammar=grammar,
                **extra)
        self._append_text(r.text)
        value = r.parsed if json_schema is not None else r.text
        self._set(name, value, {"request_id": r.request_id, "usage": r.usage, "finish_reason": r.finish_reason})
        self.log.info("gen", var=name, request_id=r.request_id, prompt_tokens=r.usage.prompt_tokens,
                      cached_tokens=r.usage.cached_tokens, completion_tokens=r.usage.completion_tokens)
        return value

    async def stream_gen(self, name: str | None = None, **sampling) -> AsyncIterator:
        """Like gen, yielding text as it is decoded; the state has the whole text once the loop ends. With
        json_schema= it yields partial values, then the validated one (Engine.stream), which the variable holds."""
        prompt = await self.to_prompt()
        done, last = [], None
        stream = self.engine.stream(prompt, result=done, **sampling)
        try:
            with self._call():  # the request is made on the first step; later steps run in the caller's context
                item = await anext(stream, _END)
            while item is not _END:
                last = item
                yield item
                item = await anext(stream, _END)
        finally:
            await stream.aclose()
        text = done[0].text
        self._append_text(text)
        self._set(name, last if sampling.get("json_schema") is not None else text, {"streamed": True})

    async def select(self, name: str | None = None, choices: list[str] = (), method: str = "normalized") -> str:
        """Pick the choice the model finds most likely after the prompt; all scored in one batch.

        method "normalized": mean log-probability per token (the default); "total": summed log-probability.
        """
        choices = list(choices)
        if not choices:
            raise ValueError("select needs at least one choice")
        if method not in SELECT_METHODS:
            raise ValueError(f"method must be one of {SELECT_METHODS}")
        with self._call():
            token_lps = await self.engine.score(await self.to_prompt(), choices)
        totals = [sum(lp) for lp in token_lps]
        scores = totals if method == "total" else [t / len(lp) for t, lp in zip(totals, token_lps)]
        best = max(range(len(choices)), key=lambda i: (scores[i], -i))
        self._append_text(choices[best])
        self._set(name, choices[best], {"scores": dict(zip(choices, scores)), "method": method,
                                        "token_logprobs": token_lps})
        self.log.info("select", var=name, choice=choices[best], score=round(scores[best], 4))
        return choices[best]

    def _call(self):
        """The engine's requests made inside belong to this program and branch (engine/programs.py)."""
        return calling(self.program_id, self.path)

    def fork(self, n: int) -> list["ProgramState"]:
        """n states that share everything so far; run them with sgagent.join or sgagent.gather."""
        if self._block is not None:
            raise SgagentError("fork outside role blocks")
        out = []
        for i in range(n):
            b = ProgramState(self.engine, self.program_id, self.path + (i,), parent=self)
            b._text, b._history, b._vars = self._text, list(self._history), dict(self._vars)
            b._images = list(self._images)
            b._chat.tools = self._chat.tools
            b._base_vars = dict(self._vars)
            out.append(b)
        return out

    def _join_back(self, branches: list["ProgramState"]) -> None:
        names = []
        for b in branches:
            for k, v in b._vars.items():
                if k not in names and (k not in b._base_vars or b._base_vars[k] is not v):
                    names.append(k)
        for k in names:
            self._vars[k] = [b._vars.get(k) for b in branches]

