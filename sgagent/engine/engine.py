"""Engine: the async front of the embedded inference engine.

One task on the caller's event loop owns all scheduling state. Each step it plans a batch, runs the
model in a worker thread (so the loop keeps serving other tasks), then applies the results. Callers
only enqueue requests and await their futures or stream queues.
"""

from __future__ import annotations

import asyncio
import dataclasses
import itertools
import time
from collections.abc import AsyncIterator

import torch

from ..errors import (
    ConstraintError,
    EngineClosedError,
    IncompleteGenerationError,
    InvalidPromptError,
    PromptTooLongError,
    RequestAbortedError,
    UnsupportedInputError,
)
from ..log import get_logger
from . import compute
from .config import EngineConfig
from .constrained.partial import text_or_values
from .images import ImagePrompts, MultimodalPrompt
from .model.source import resolve
from .output import OutputText
from .programs import current_call
from .prompts import Prompting, message_images
from .request import GenerateResult, SamplingParams, Usage, new_request_id, split_sampling
from .runner import ModelRunner
from .scheduler import Req, Scheduler, StepPlan

_DONE = object()
# event-loop turns a step waits for arriving requests (see Engine._settle): it stops after this many turns in a row
# bring none (a fork's branch request arrives on the third turn after its parent resolves), or at the cap
SETTLE_QUIET_TURNS = 4
SETTLE_MAX_TURNS = 32


class _Handle:
    """The caller's side of a request: a future for the result and a queue of stream deltas."""

    def __init__(self, tokenizer, stop, stream: bool):
        loop = asyncio.get_running_loop()
        self.future: asyncio.Future = loop.create_future()
        self.queue: asyncio.Queue | None = asyncio.Queue() if stream else None
        self.out = OutputText(tokenizer, stop)


class Engine(Prompting):
    def __init__(self, model: str | None = None, config: EngineConfig | None = None, *, _share=None,
                 **overrides):
        cfg = dataclasses.replace(config or EngineConfig(), **overrides)
        if model is not None:
            cfg.model = model
        self.config = cfg
        self.log = get_logger("sgagent.engine")
        t0 = time.perf_counter()
        self._parent = None  # with_config's source: its compiled constraints are shared, not rebuilt
        if _share is None:
            src = resolve(cfg.model)
            self.tokenizer = src.load_tokenizer()
            self.runner = compute.call(ModelRunner, src, cfg)
        else:
            self._parent = _share
            src, self.tokenizer = _share._src, _share.tokenizer
            self.runner = compute.call(ModelRunner, src, cfg, _share.runner.model)
        self.vision = None  # a vision-language model's image prompting (images.py)
        if src.family is not None:
            self.vision = _share.vision if _share is not None else ImagePrompts(
                src.path, src.family, src.config.vocab_size, self.tokenizer)
            if not self.tokenizer.chat_template:  # LLaVA folders keep the template with the processor
                self.tokenizer.chat_template = self.vision.processor.chat_template
        if cfg.max_batch_tokens is None:
            cfg.max_batch_tokens = 8192 if self.runner.device.type == "cuda" else 2048
        self._src = src
        self.model_path = str(src.path)
        mc = src.config
        self.model_config = mc
        self.max_context = min(cfg.max_context or mc.max_position, mc.max_position)
        self.eos_ids = set(mc.eos_token_ids)
        if self.tokenizer.eos_token_id is not None:
            self.eos_ids.add(self.tokenizer.eos_token_id)
        self.scheduler = Scheduler(cfg, self.runner.pool)
        self._arrivals = itertools.count()
        self._task: asyncio.Task | None = None
        self._wake: asyncio.Event | None = None
        self._in_flight: StepPlan | None = None
        self._deferred: list[Req] = []
        self._closed = False
        self._constraints = None  # built on first constrained request
        self.counters = dict.fromkeys(
            ["requests", "finished", "aborted", "failed", "steps", "prefill_tokens", "decode_tokens",
             "computed_tokens", "attended_pairs", "jump_forward_tokens"], 0)
        self.log.info("engine.ready", model=self.model_path, device=str(self.runner.device),
                      kv_pages=self.runner.pool.capacity, page_size=cfg.page_size,
                      radix=cfg.radix_cache, seconds=round(time.perf_counter() - t0, 2))

    def with_config(self, **overrides) -> "Engine":
        """A second engine on the same loaded weights and tokenizer, with its own KV pool and scheduler;
        compiled constraints come from this engine's cache while it is open (and constraint_* settings match).

        dtype, device and gguf_blocks must stay the same (the weights are shared as they are).
        """
        if any(k in overrides for k in ("model", "dtype", "device", "gguf_blocks")):
            raise ValueError("with_config shares the weights: model, dtype, device and gguf_blocks cannot change")
        return Engine(config=dataclasses.replace(self.config, **overrides), _share=self)

    # -- lifecycle -----------------------------------------------------------------------------
    async def __aenter__(self) -> "Engine":
        return self

    async def __aexit__(self, *exc) -> None:
        await self.aclose()

    async def aclose(self) -> None:
        """Stop the engine: pending requests fail with EngineClosedError, the loop task ends."""
        self._closed = True
        if self._constraints is not None:
            self._constraints.close()
        for req in list(self.scheduler.waiting) + list(self.scheduler.running):
            self._fail(req, EngineClosedError("the engine was closed"))
        if self._wake is not None:
            self._wake.set()
        if self._task is not None:
            await self._task
            self._task = None

    def _start(self) -> None:
        if self._closed:
            raise EngineClosedError("the engine is closed")
        if self._task is None or self._task.done():
            self._wake = asyncio.Event()
            self._task = asyncio.get_running_loop().create_task(self._run(), name="sgagent-engine")

    # -- requests ------------------------------------------------------------------------------
    def _make_req(self, prompt, messages, params: SamplingParams, stream: bool,
                  logprob_start: int | None = None, constraint=None) -> Req:
        ids = self.tokenize(prompt, messages)
        if not ids:
            raise InvalidPromptError("the prompt is empty")
        if len(ids) >= self.max_context:
            raise PromptTooLongError(
                f"prompt has {len(ids)} tokens; the context holds {self.max_context} (prompt + at least 1 new)"
            )
        pool = self.runner.pool
        if (len(ids) + 1 + pool.page_size - 1) // pool.page_size > pool.capacity:
            raise PromptTooLongError(f"prompt of {len(ids)} tokens does not fit the KV pool "
                                     f"({pool.capacity} pages of {pool.page_size}); raise kv_cache_bytes")
        req = Req(new_request_id(), ids, params, next(self._arrivals), logprob_start=logprob_start)
        if isinstance(prompt, MultimodalPrompt):
            req.images = prompt.images
        if params.seed is not None:
            req.generator = torch.Generator(device=self.runner.device).manual_seed(params.seed)
        req.constraint = constraint
        if constraint is not None and self.config.jump_forward:
            req.tokens.extend(constraint.start(room=params.max_tokens))
        req.handle = _Handle(self.tokenizer, params.stop, stream)
        if (call := current_call()) is not None:
            req.program, req.path = self.scheduler.programs.begin_call(call), call.path
        return req

    def _end_call(self, req: Req, finished: bool) -> None:
        if req.program is not None:
            self.scheduler.programs.end_call(req.program, finished)

    def end_program(self, program_id: str) -> None:
        """A program returned, failed or was cancelled (Program.run says so): its pinned KV is released now."""
        self.scheduler.end_program(program_id)

    def _submit(self, req: Req) -> None:
        self._start()
        self.counters["requests"] += 1
        self.scheduler.add(req)
        self._wake.set()

    async def generate(self, prompt=None, *, messages=None, images: list | None = None,
                       logprob_start: int | None = None, **sampling) -> GenerateResult:
        """Generate from a prompt (text, token ids or a MultimodalPrompt) or chat messages. Sampling keywords:
        SamplingParams. On a vision-language model, images= go with a text prompt (its i-th image token stands
        for the i-th), and messages may hold image content parts ({"type": "image", "image": ...})."""
        req = await self._prepare(prompt, messages, sampling, stream=False, logprob_start=logprob_start,
                                  images=images)
        self._submit(req)
        try:
            return await req.handle.future
        except asyncio.CancelledError:
            self.abort(req)
            raise

    def stream(self, prompt=None, *, messages=None, result: list | None = None, text: bool = False,
               **sampling) -> AsyncIterator:
        """Yield text pieces as they are decoded; the GenerateResult (finish reason, usage) is appended to
        `result` when given, since an async generator cannot return a value.

        With json_schema= (and not text=True) it yields partial values instead, each a prefix-consistent view of
        the final one (constrained/partial.py: dicts, or a pydantic model built from the fields complete so far),
        and last the validated value itself."""
        return text_or_values(self._stream, prompt, messages, result, text, sampling)

    async def _stream(self, prompt, messages, result: list | None, sampling: dict) -> AsyncIterator[str]:
        req = await self._prepare(prompt, messages, sampling, stream=True, images=sampling.pop("images", None))
        self._submit(req)
        try:
            while (piece := await req.handle.queue.get()) is not _DONE:
                yield piece
            final = req.handle.future.result()  # re-raises a failure
            if result is not None:
                result.append(final)
        finally:
            if not req.finished:
                self.abort(req)

    async def _prepare(self, prompt, messages, sampling: dict, stream: bool, logprob_start=None,
                       images=None) -> Req:
        params, spec = split_sampling(sampling)
        prompt, messages = await self._with_images(prompt, messages, images)
        constraint = await self._constraint_state(spec) if spec else None
        return self._make_req(prompt, messages, params, stream, logprob_start, constraint)

    async def multimodal_prompt(self, text: str, images: list, add_special_tokens: bool = True) -> MultimodalPrompt:
        """text whose i-th image token (the processor's, e.g. "<image>") stands for images[i], as token ids with
        the image rows in; for generate, score and stream like any prompt."""
        if self.vision is None:
            raise UnsupportedInputError(f"{self.model_path} is a text-only model: it takes no images")
        return await self.vision.build_async(text, list(images), add_special_tokens, self.config.max_images_per_prompt,
                                             self.config.max_image_pixels)

    async def _with_images(self, prompt, messages, images):
        """(prompt, messages) with any images folded into a MultimodalPrompt."""
        found = message_images(messages) if messages is not None else []
        if not images and not found:
            return prompt, messages
        if images and (messages is not None or not isinstance(prompt, str)):
            raise InvalidPromptError("images= goes with a text prompt; in messages, images are content parts")
        if messages is not None:
            return await self.multimodal_prompt(self.render(messages), found, add_special_tokens=False), None
        return await self.multimodal_prompt(prompt, images), None

    def _compiler(self, build: bool = True):
        """The constraint compiler in use: the with_config source's while it is open and configured alike,
        else this engine's own."""
        if self._parent is not None and not self._parent._closed and self._same_constraint_config(self._parent):
            return self._parent._compiler(build)
        if self._constraints is None and build:
            from .constrained import ConstraintCompiler

            self._constraints = ConstraintCompiler(self.tokenizer, self.eos_ids, self.config,
                                                   vocab_size=self.model_config.vocab_size)
        return self._constraints

    def _same_constraint_config(self, other: "Engine") -> bool:
        return all(getattr(self.config, f.name) == getattr(other.config, f.name)
                   for f in dataclasses.fields(self.config) if f.name.startswith("constraint_"))

    async def _constraint_state(self, spec: dict):
        return await self._compiler().state_for(spec)

    async def score(self, prompt=None, continuations: list[str] = (), *, messages=None) -> list[list[float]]:
        """Log-probabilities of each continuation's tokens after the prompt, all scored in one batch."""
        prompt, messages = await self._with_images(prompt, messages, None)
        base = self.tokenize(prompt, messages)
        conts = [self.tokenizer.encode(c, add_special_tokens=False) for c in continuations]
        if any(not c for c in conts):
            raise InvalidPromptError("a continuation is empty")
        params = SamplingParams(max_tokens=0)
        full = prompt.extended if isinstance(prompt, MultimodalPrompt) else (lambda c: base + c)
        results = await asyncio.gather(*(
            self.generate(full(c), logprob_start=len(base), **dataclasses.asdict(params)) for c in conts
        ))
        return [r.prompt_logprobs for r in results]

    def abort(self, req: Req) -> None:
        """Drop a request now; its pages go back at once, or right after the step in flight."""
        if req.finished:
            return
        req.finished = True
        self.counters["aborted"] += 1
        self._end_call(req, False)
        self._drop_when_safe(req)
        if not req.handle.future.done():
            req.handle.future.set_exception(RequestAbortedError(f"{req.id} was cancelled"))
            req.handle.future.exception()  # mark retrieved: the canceller does not await it
        if req.handle.queue is not None:
            req.handle.queue.put_nowait(_DONE)

    # -- the loop ------------------------------------------------------------------------------
    async def _settle(self) -> None:
        """Let requests that are on their way join the next step. A program sends its next requests a few
        event-loop turns after what it awaited resolves (a fork's branches each pass through gather and a task);
        scheduling at once would leave them to the step after, and a request admitted a step late decodes a step
        out of phase with its siblings to the end (tree-of-thought: two to four extra steps a level)."""
        quiet, seen = 0, self.counters["requests"]
        for _ in range(SETTLE_MAX_TURNS):
            await asyncio.sleep(0)
            quiet = quiet + 1 if self.counters["requests"] == seen else 0
            if quiet >= SETTLE_QUIET_TURNS:
                return
            seen = self.counters["requests"]

    async def _run(self) -> None:
        sched = self.scheduler
        settle = False
        while True:
            while not sched.has_work():
                if self._closed:
                    return
                self._wake.clear()
                await self._wake.wait()
                settle = True
            if settle:
                await self._settle()
                settle = False
            plan, unfit = sched.schedule()
            for req in unfit:
                self._finish(req, "length") if req.output_ids else self._fail(
                    req, PromptTooLongError(f"{req.id} does not fit the KV pool"))
            if not plan:
                await asyncio.sleep(0.001)
                continue
            self._in_flight = plan
            try:
                out = await compute.run(self.runner.step, plan)
            except Exception as e:  # a failed step fails its requests, not the engine
                self.log.exception("engine.step_failed", requests=[it.req.id for it in plan.items])
                self._in_flight = None
                self._drop_deferred()
                for it in plan.items:
                    self._fail(it.req, RequestAbortedError(f"step failed: {e!r}"))
                continue
            self._in_flight = None
            sched.after_step(plan)
            self._drop_deferred()
            done = self.counters["finished"] + self.counters["failed"]
            self._apply(plan, out)
            settle = self.counters["finished"] + self.counters["failed"] != done  # their callers may send more

    def _drop_deferred(self) -> None:
        for req in self._deferred:
            self.scheduler.drop(req)
        self._deferred.clear()

    def _apply(self, plan: StepPlan, out) -> None:
        c = self.counters
        c["steps"] += 1
        k = 0
        for i, it in enumerate(plan.items):
            req = it.req
            c["computed_tokens"] += it.seq.q_len
            if req.program is not None:
                req.program.service += it.seq.q_len
            c["prefill_tokens"] += max(0, min(it.seq.kv_len, len(req.prompt_ids)) - it.seq.prefix_len)
            # (query, key) pairs under the causal mask: the attention share of the step's work, for benchmarks
            c["attended_pairs"] += it.seq.q_len * it.seq.prefix_len + it.seq.q_len * (it.seq.q_len + 1) // 2
            req.prompt_logprobs.extend(out.prompt_logprobs[i])
            if not it.sample:
                if not req.finished and req.num_computed == len(req.tokens) and not req.wants_token:
                    self._finish(req, "length")  # max_tokens=0: prefill / scoring only
                continue
            token, lp = out.tokens[k], out.logprobs[k]
            top = out.top[k] if out.top is not None else None
            k += 1
            if req.finished:
                continue
            c["decode_tokens"] += 1
            req.decode_steps += 1
            req.tokens.append(token)
            if lp is not None:
                req.token_logprobs.append(lp)
            if top is not None:
                req.token_top_logprobs.append(top)
            self._after_token(req, token)

    def _after_token(self, req: Req, token: int) -> None:
        p = req.params
        # under a constraint EOS is only sampled where the FSM allows the end, so it ends even with ignore_eos
        if token in p.stop_token_ids or (token in self.eos_ids and (not p.ignore_eos or req.constraint is not None)):
            return self._finish(req, "stop", strip_last=True)
        if req.constraint is not None:
            room = min(p.max_tokens - len(req.output_ids), self.max_context - len(req.tokens) - 1)
            try:
                tail = req.constraint.advance(token, self.config.jump_forward, max(room, 0))
            except ConstraintError as e:  # e.g. llguidance's per-step limits: this request fails, not the step
                return self._fail(req, e)
            if len(tail) > 1 or tail[0] != token:
                req.tokens[-1:] = tail
                self.counters["jump_forward_tokens"] += len(tail) - 1
            if req.constraint.is_done():
                return self._finish(req, "stop")
        h = req.handle
        # the text is needed before the end only to find stop strings or to stream it; _finish decodes it anyway
        if (h.out.stop or h.queue is not None) and h.out.update(req.output_ids):
            return self._finish(req, "stop")
        if not req.wants_token or len(req.tokens) >= self.max_context:
            return self._finish(req, "length")
        if h.queue is not None:
            piece = h.out.delta(final=False)
            if piece:
                h.queue.put_nowait(piece)

    def _finish(self, req: Req, reason: str, strip_last: bool = False) -> None:
        if req.finished:
            return
        req.finished = True
        self.scheduler.drop(req, retain=True)
        self._end_call(req, True)
        self.counters["finished"] += 1
        h = req.handle
        out_ids = req.output_ids
        h.out.update(out_ids[:-1] if strip_last else out_ids)
        parsed = None
        if req.constraint is not None:
            if not req.constraint.is_complete():
                return self._resolve(req, error=IncompleteGenerationError(
                    f"{req.id} stopped ({reason}) before its constraint was complete; it ends {h.out.text[-120:]!r}",
                    text=h.out.text))
            try:
                parsed = req.constraint.finish(h.out.text)
            except Exception as e:
                return self._resolve(req, error=e)
        result = GenerateResult(
            request_id=req.id,
            text=h.out.text,
            token_ids=out_ids,
            usage=Usage(len(req.prompt_ids), req.cached_tokens or 0, len(out_ids)),
            finish_reason=reason,
            logprobs=req.token_logprobs if req.params.logprobs else None,
            top_logprobs=req.token_top_logprobs if req.params.top_logprobs else None,
            prompt_logprobs=req.prompt_logprobs if req.logprob_start is not None else None,
            parsed=parsed,
            decode_steps=req.decode_steps,
        )
        self.log.debug("request.finished", request_id=req.id, reason=reason, prompt_tokens=len(req.prompt_ids),
                       cached_tokens=result.usage.cached_tokens, completion_tokens=len(out_ids),
                       hit_rate=round(self.scheduler.cached_tokens / max(1, self.scheduler.prompt_tokens), 4),
                       tree_nodes=self.scheduler.tree.num_nodes if self.scheduler.tree else 0)
        self._resolve(req, result=result)

    def _fail(self, req: Req, error: Exception) -> None:
        if req.finished:
            return
        req.finished = True
        self.counters["failed"] += 1
        self._end_call(req, False)
        self._drop_when_safe(req)
        self._resolve(req, error=error)

    def _drop_when_safe(self, req: Req) -> None:
        """Give back req's pages now, or right after the step in flight if that step is using them."""
        if self._in_flight is not None and any(it.req is req for it in self._in_flight.items):
            self._deferred.append(req)
        else:
            self.scheduler.drop(req)

    def _resolve(self, req: Req, result=None, error=None) -> None:
        h = req.handle
        if not h.future.done():
            if error is not None:
                h.future.set_exception(error)
                if h.queue is not None:
                    h.future.exception()  # the stream re-raises it itself
            else:
                h.future.set_result(result)
        if h.queue is not None:
            if error is None:
                piece = h.out.delta(final=True)
                if piece:
                    h.queue.put_nowait(piece)
            h.queue.put_nowait(_DONE)

    # -- introspection -------------------------------------------------------------------------
    def flush_cache(self) -> bool:
        """Drop every cached prefix (SGLang's /flush_cache, a benchmark's cold start); refused while requests run."""
        s = self.scheduler
        if s.running or s.waiting:
            return False
        if s.tree is not None:
            s.tree.reset()
        return True

    def stats(self) -> dict:
        s, pool, tree = self.scheduler, self.runner.pool, self.scheduler.tree
        cached = tree.cached_pages if tree else 0
        out = dict(self.counters)
        out.update(
            running=len(s.running),
            waiting=len(s.waiting),
            prompt_tokens=s.prompt_tokens,
            cached_tokens=s.cached_tokens,
            copied_tokens=s.copied_tokens,
            cache_hit_rate=s.cached_tokens / s.prompt_tokens if s.prompt_tokens else 0.0,
            pages_total=pool.capacity,
            pages_free=pool.num_free,
            pages_cached=cached,
            pages_locked=tree.locked_pages if tree else 0,
            pages_used=pool.capacity - pool.num_free - cached,
            evicted_pages=tree.evicted_pages if tree else 0,
            tree_nodes=tree.num_nodes if tree else 0,
            preemptions=s.preemptions,
            deterministic=self.runner.deterministic,
            programs=len(s.programs.programs),
        )
        if s.retention is not None:
            out.update(s.retention.stats())
        if (compiler := self._compiler(build=False)) is not None:
            out.update(compiler.stats())
        if self.runner.vision is not None:
            out.update(self.runner.vision.stats())
        return out
