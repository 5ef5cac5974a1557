"""Continuous batching: which tokens of which requests run in the next step, and who holds which pages.

Every request is driven the same way: the tokens of `req.tokens` past `req.num_computed` are extended
into the KV cache (a whole prompt, a prefill chunk, one decoded token, or a jump-forward run), and when
the last one is in, the next token is sampled. All of this state is touched only from the engine's loop.

Program-aware (EngineConfig.program_scheduling): the waiting queue is ordered by program, not by request. A call
of a program that has had a call served goes before a newcomer's first, and among those the program with the
least attained service (in log2 levels, as Autellix's PLAS discretises it) and then the oldest goes first; the
cached-prefix order holds within that, and a request skipped `starvation_steps` times goes first whatever it is.
Once programs have ended, a newcomer's first call is admitted only where the pool leaves room for the contexts of
the programs already resident to grow as ended programs' did, and its own too (admission by expected growth).
"""

from __future__ import annotations

from dataclasses import dataclass, field

from .batch import ForwardBatch, SeqSlice
from .config import EngineConfig
from .kv_pool import KVPool
from .programs import Program, ProgramTable
from .radix import RadixTree
from .request import SamplingParams
from .retention import Retention

# attained service is bucketed in levels of doubling size from this many tokens (PLAS's priority queues)
SERVICE_QUANTUM = 256


@dataclass(eq=False)
class Req:
    id: str
    prompt_ids: list[int]
    params: SamplingParams
    arrival: int
    logprob_start: int | None = None  # prompt logprobs wanted from this position on
    tokens: list[int] = field(default_factory=list)
    pages: list[int] = field(default_factory=list)
    num_computed: int = 0
    node: object = None  # radix node this request holds a lock on
    inserted: int = 0  # tokens of this request already owned by the tree
    # pages of another request that the step it was admitted in fills with tokens both share (Scheduler._admit):
    # not this request's to free; the tree owns them once that step is published
    borrowed: list[int] = field(default_factory=list)
    cached_tokens: int | None = None
    skipped: int = 0
    prompt_logprobs: list[float] = field(default_factory=list)
    token_logprobs: list[float] = field(default_factory=list)
    token_top_logprobs: list[list[tuple[int, float]]] = field(default_factory=list)
    decode_steps: int = 0
    generator: object = None
    constraint: object = None  # a ConstraintState when the output is constrained
    finished: bool = False
    handle: object = None  # the engine's per-request output side
    program: Program | None = None  # the program that sent it (programs.py), None for a plain request
    path: tuple[int, ...] = ()  # its branch in that program
    images: dict = field(default_factory=dict)  # tag -> PreparedImage for the image rows of its prompt (images.py)

    def __post_init__(self):
        self.tokens = list(self.prompt_ids)

    @property
    def output_ids(self) -> list[int]:
        return self.tokens[len(self.prompt_ids) :]

    @property
    def wants_token(self) -> bool:
        return len(self.tokens) - len(self.prompt_ids) < self.params.max_tokens


@dataclass
class StepItem:
    req: Req
    seq: SeqSlice
    sample: bool
    lp_rows: list[int]
    lp_targets: list[int]


@dataclass
class StepPlan:
    batch: ForwardBatch = field(default_factory=ForwardBatch)
    items: list[StepItem] = field(default_factory=list)
    # (source page, destination page, tokens): K/V of a cached page's first tokens, copied into a newly
    # admitted request's own page before the step runs (RadixTree.partial)
    copies: list[tuple[int, int, int]] = field(default_factory=list)

    def add(self, req: Req, n: int, start: int | None = None) -> None:
        """n tokens of req from `start` (default: all it has computed; more when a copy precedes them)."""
        start = req.num_computed if start is None else start
        seq = self.batch.add(req.tokens[start : start + n], start, req.pages)
        sample = start + n == len(req.tokens) and req.wants_token
        if sample:
            self.batch.logit_rows.append(seq.row + n - 1)
        rows, targets = [], []
        if req.logprob_start is not None:
            lo = max(start, req.logprob_start - 1)
            for p in range(lo, min(start + n, len(req.prompt_ids) - 1)):
                rows.append(seq.row + p - start)
                targets.append(req.tokens[p + 1])
        self.items.append(StepItem(req, seq, sample, rows, targets))

    def __bool__(self) -> bool:
        return bool(self.items)


class Scheduler:
    def __init__(self, cfg: EngineConfig, pool: KVPool):
        self.cfg = cfg
        self.pool = pool
        self.ps = pool.page_size
        self.tree = RadixTree(pool, self.ps) if cfg.radix_cache else None
        self.programs = ProgramTable()
        self.retention = Retention(self.tree, self.programs) if self.tree is not None and cfg.kv_retention else None
        self.waiting: list[Req] = []
        self.running: list[Req] = []
        self.preemptions = 0
        self.prompt_tokens = 0
        self.cached_tokens = 0
        self.copied_tokens = 0  # of the cached tokens, those reused by copying part of a page

    # -- queue ---------------------------------------------------------------------------------
    def add(self, req: Req) -> None:
        if req.program is not None:
            req.program.first = req.program.first or len(req.prompt_ids)
            if self.retention is not None:
                self.retention.arrived(req.program, req.path)
        self.waiting.append(req)

    def has_work(self) -> bool:
        return bool(self.waiting or self.running)

    def drop(self, req: Req, retain: bool = False) -> None:
        """Take a request out (finished or aborted) and give back what it holds. retain: it finished and its
        program goes on, so its path stays pinned while the program waits (retention.py)."""
        if req.program is not None:
            req.program.peak = max(req.program.peak, len(req.tokens))
        if req in self.waiting:
            self.waiting.remove(req)
        elif req in self.running:
            self.running.remove(req)
            self._release(req, retain)

    def end_program(self, program_id: str) -> None:
        if self.programs.end(program_id) is not None and self.retention is not None:
            self.retention.end(program_id)

    # -- pages ---------------------------------------------------------------------------------
    def _pages_for(self, n_tokens: int) -> int:
        return (n_tokens + self.ps - 1) // self.ps

    def _room(self) -> int:
        """Pages free or held only by unpinned cache."""
        return self.pool.num_free + (self.tree.evictable_pages if self.tree is not None else 0)

    def _resident(self) -> set[Program]:
        """Programs whose KV is in the pool for them: running, or pinned while they wait."""
        out = {r.program for r in self.running if r.program is not None}
        if self.retention is not None:
            out.update(pin.program for pin in self.retention.pins.values())
        return out

    def _make_room(self, need: int, drop_pins: bool = True) -> bool:
        """need free pages, evicting unheld cache; and dropping pins first if that is not enough and allowed."""
        if need > self.pool.num_free and self.tree is not None:
            if drop_pins and self.retention is not None:
                self.retention.drop_for(need)
            self.tree.evict(need - self.pool.num_free)
        return self.pool.num_free >= need

    def _publish(self, req: Req) -> None:
        """Give the request's computed whole pages to the tree, so others can match them."""
        full = req.num_computed // self.ps
        if self.tree is None or full * self.ps <= req.inserted:
            return
        tree_pages, node = self.tree.insert(req.tokens[: full * self.ps], req.pages[:full])
        dups = [p for p, t in zip(req.pages[:full], tree_pages) if p != t and p not in req.borrowed]
        self.pool.free(dups)
        req.pages[:full] = tree_pages
        req.borrowed = []  # they lie before the first token of the step that filled them, so within `full`
        self.tree.lock(node)
        if req.node is not None:
            self.tree.unlock(req.node)
        req.node, req.inserted = node, full * self.ps

    def _release(self, req: Req, retain: bool = False) -> None:
        if self.tree is None:
            self.pool.free(req.pages)
        else:
            self._publish(req)
            p = req.program
            if retain and self.retention is not None and p is not None and self.programs.is_open(p):
                self.retention.hold(p, req.path, req.node)  # before the unlock below, so nothing evicts it between
            own = req.inserted // self.ps
            if req.num_computed > req.inserted:  # a computed partial last page: the tree may keep it as a tail
                tail = req.tokens[req.inserted : req.num_computed]
                if self.tree.insert_tail(req.node or self.tree.root, tail, req.pages[own]):
                    own += 1
            if req.node is not None:
                self.tree.unlock(req.node)
            self.pool.free([p for p in req.pages[own:] if p not in req.borrowed])
        req.pages, req.node, req.inserted, req.num_computed, req.borrowed = [], None, 0, 0, []

    def _preempt(self, req: Req) -> None:
        self.running.remove(req)
        self._release(req)
        self.waiting.insert(0, req)
        self.preemptions += 1

    def _ensure_pages(self, req: Req, upto: int, planned: set) -> bool:
        """Pages for req up to token `upto`, evicting cache and then preempting younger requests."""
        need = self._pages_for(upto) - len(req.pages)
        while not self._make_room(need):
            victims = [r for r in self.running if r is not req and r not in planned]
            if not victims:
                return False
            self._preempt(victims[-1])
        req.pages.extend(self.pool.alloc(need))
        return True

    # -- the step ------------------------------------------------------------------------------
    def schedule(self) -> tuple[StepPlan, list[Req]]:
        """The next step's plan, and requests that can never fit (to be failed by the caller)."""
        plan, planned, budget, unfit = StepPlan(), set(), self.cfg.max_batch_tokens, []
        if self.retention is not None:
            self.retention.expire()
        for req in list(self.running):
            if req not in self.running:
                continue  # preempted for an older request in this loop
            left = len(req.tokens) - req.num_computed
            n = left if left == 1 else min(left, budget)  # decodes always run; chunks share the budget
            if n <= 0:
                continue
            if not self._ensure_pages(req, req.num_computed + n, planned):
                self._preempt(req)
                if not self.running and not plan:
                    unfit.append(req)  # alone and still too big for the whole pool
                continue
            plan.add(req, n)
            planned.add(req)
            budget -= n
        self._admit(plan, budget)
        return plan, unfit

    def _order(self) -> list[Req]:
        window = self.waiting[:256]
        if self.tree is None and not self.cfg.program_scheduling:
            return window
        starving = [r for r in window if r.skipped >= self.cfg.starvation_steps]
        rest = [r for r in window if r.skipped < self.cfg.starvation_steps]
        rest.sort(key=self._rank)
        return starving + rest

    def _rank(self, req: Req) -> tuple:
        cached = -self.tree.match_len(self._match_limit(req)) if self.tree is not None else 0
        if not self.cfg.program_scheduling:
            return (cached, req.arrival)
        p = req.program
        if not self._continuing(req):
            return (1, 0, 0, cached, req.arrival)
        return (0, (p.service // SERVICE_QUANTUM).bit_length(), p.order, cached, req.arrival)

    @staticmethod
    def _continuing(req: Req) -> bool:
        """A call of a program that has had a call served (not a newcomer's first)."""
        return req.program is not None and req.program.calls > 0

    def _match_limit(self, req: Req) -> list[int]:
        # at least one token must run to give logits; prompt logprobs need their positions computed
        end = len(req.tokens) - 1
        if req.logprob_start is not None:
            end = min(end, req.logprob_start - 1)
        return req.tokens[: max(end, 0)]

    def _admit(self, plan: StepPlan, budget: int) -> None:
        ends = {id(it.req): it.seq.kv_len for it in plan.items}  # how far this step takes each planned request
        sharing = [r for r in self.running if r.num_computed < len(r.prompt_ids)]
        # newcomers wait: a program's call is held back by pins, or the room left is what the resident programs
        # are expected to grow into (their contexts grow by each call's output and what the program adds)
        held_back = False
        growth = self.programs.expected_growth() if self.cfg.program_scheduling else None
        if growth is not None:
            resident = self._resident()
            reserve = sum(self._pages_for(max(0, growth - p.grown)) for p in resident)
        for req in self._order():
            if budget <= 0 or len(self.running) >= self.cfg.max_running_requests:
                break
            starving, continuing = req.skipped >= self.cfg.starvation_steps, self._continuing(req)
            if held_back and not starving and not continuing:
                continue  # the room a held-back program's call waits for is not a newcomer's to take
            pages, node, src, copied, borrowed = [], None, 0, 0, []
            if self.tree is not None:
                key = self._match_limit(req)
                cached = self.tree.match_len(key)
                # a request computing the same uncached prefix: share the pages this step fills for it, or where
                # it computes them in a later step, wait and match them then
                k = cached + self.ps
                head = req.tokens[:k]
                peer = next((r for r in sharing if r.tokens[:k] == head), None) if len(head) == k else None
                if peer is not None and id(peer) not in ends:
                    continue
                pages, node = self.tree.match(key)
                if peer is not None:
                    borrowed = self._borrowable(key, peer, pages, ends[id(peer)])
                    if not borrowed:
                        continue
                self.tree.lock(node)
                if not borrowed:
                    src, copied = self.tree.partial(node, key, len(pages) * self.ps)
            matched = len(pages) * self.ps
            start = matched + copied + len(borrowed) * self.ps
            n = min(len(req.tokens) - start, budget)
            need = self._pages_for(start + n) - len(pages) - len(borrowed)
            # Pins are dropped for running work and for a program's next call that kept its KV through its wait
            # (it needs room only for what is new), not for a call that must compute its context again (it would
            # drop the KV of others, who would then drop more) nor a newcomer's first call; the starving and a
            # step that would otherwise run nothing drop them too.
            drop_pins = (starving or not (self.running or plan)
                         or (continuing and 2 * start >= len(req.tokens)))
            # a newcomer's first call comes in only with room to grow as programs lately did, beside the growth
            # of the programs resident: admitted into less, it and they compute their contexts again later
            newcomer = (growth is not None and not continuing and req.program is not None
                        and req.program not in resident)
            if (newcomer and not starving and (self.running or plan)
                    and need + self._pages_for(growth) + reserve > self._room()):
                if node is not None:
                    self.tree.unlock(node)
                held_back = True
                continue
            if not self._make_room(need, drop_pins):
                if node is not None:
                    self.tree.unlock(node)
                if drop_pins or self.retention is None or not self.retention.pins:
                    break
                held_back = held_back or continuing
                continue  # held back by pins: a program's call behind it may still go
            req.pages = pages + borrowed + self.pool.alloc(need)
            # copied and borrowed tokens count as computed once the step (which copies, or fills, them) has run
            req.node, req.inserted, req.num_computed, req.borrowed = node, matched, matched, borrowed
            if copied:
                plan.copies.append((src, req.pages[len(pages)], copied))
            if req.cached_tokens is None:
                req.cached_tokens = min(start, len(req.prompt_ids))
                self.prompt_tokens += len(req.prompt_ids)
                self.cached_tokens += req.cached_tokens
                self.copied_tokens += min(copied, max(0, len(req.prompt_ids) - matched))
            if self.retention is not None and req.program is not None:
                self.retention.resume(req.program, req.path, start)
            if newcomer:
                resident.add(req.program)
                reserve += self._pages_for(growth)
            self.waiting.remove(req)
            self.running.append(req)
            plan.add(req, n, start)
            ends[id(req)] = start + n
            budget -= n
            sharing.append(req)
        for req in self.waiting:
            req.skipped += 1

    def _borrowable(self, key: list[int], peer: Req, pages: list[int], end: int) -> list[int]:
        """The whole pages of `peer` after the cached `pages` that this step fills (up to token `end`) with tokens
        of `key` (a request's matchable tokens) too: the request can attend to them in the same step, since
        each layer stores the step's K/V before any of its attention reads.

        Shared tokens past the last whole page are computed again by the request (a page is never shared part
        way). Where that is more than half a page and more than the request's own tail, waiting a step for the
        peer's pages costs less: few-shot's 63 questions on a prefix ending 14 tokens into a page would compute
        882 tokens again for 9-token tails (both prefill steps 1.1 s vs 0.66 s waiting), while tree-of-thought's
        branches, 3-9 tokens again each, keep their decodes in step with their siblings instead of one behind."""
        n, limit = len(pages), min(end, len(key), len(peer.tokens))
        common = n * self.ps
        while common < limit and key[common] == peer.tokens[common]:
            common += 1
        last = common // self.ps
        again = common - last * self.ps
        if last <= n or peer.pages[:n] != pages or again > max(self.ps // 2, len(key) - common):
            return []
        return peer.pages[n:last]

    def after_step(self, plan: StepPlan) -> None:
        for item in plan.items:
            item.req.num_computed = item.seq.kv_len
            self._publish(item.req)
