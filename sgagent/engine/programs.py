"""What the engine knows of the programs its requests come from: which program and branch sent a call, how
much service each program has had, and how long its waits between calls (tool calls, other agents, users) last.

The primitives say which program a call belongs to through `calling` (a context variable, so a request made
anywhere under a program's `gen`, `select` or `stream_gen` carries it, and a plain `engine.generate` carries
none); `Program.run` ends the program with `Engine.end_program`. Requests of no program are scheduled and cached
exactly as before.
"""

from __future__ import annotations

import contextlib
import itertools
import statistics
import time
from collections import deque
from contextvars import ContextVar
from dataclasses import dataclass, field

_calls: ContextVar["ProgramCall | None"] = ContextVar("sgagent_program_call", default=None)
_order = itertools.count()

# a first wait has no history of its own: the median of recent waits of all programs, or this before any
DEFAULT_WAIT_S = 1.0
RECENT_WAITS = 256
# how much recent programs grew their context over their lives: the expected growth of a program still running
RECENT_PROGRAMS = 64
# a program that nobody ends (an agent's per-message state) is forgotten after this long without a call
FORGET_IDLE_S = 300.0
SWEEP_EVERY = 256


@dataclass(frozen=True)
class ProgramCall:
    program_id: str
    path: tuple[int, ...] = ()  # the branch (fork indices from the trunk)


@contextlib.contextmanager
def calling(program_id: str, path: tuple[int, ...] = ()):
    """Requests made inside belong to this program and branch."""
    token = _calls.set(ProgramCall(program_id, tuple(path)))
    try:
        yield
    finally:
        _calls.reset(token)


def current_call() -> ProgramCall | None:
    return _calls.get()


@dataclass(eq=False)
class Program:
    id: str
    order: int  # when the engine first saw it: older programs come first among equals
    start: float
    service: int = 0  # tokens the engine computed for its requests
    calls: int = 0  # requests finished
    in_flight: int = 0
    idle_since: float | None = None  # when its last request in flight ended
    waits: list[float] = field(default_factory=list)
    first: int = 0  # prompt tokens of its first call
    peak: int = 0  # the longest sequence (prompt + output) one of its calls has reached

    @property
    def grown(self) -> int:
        return max(0, self.peak - self.first)


class ProgramTable:
    def __init__(self, clock=time.monotonic):
        self.clock = clock
        self.programs: dict[str, Program] = {}
        self.recent_waits: deque[float] = deque(maxlen=RECENT_WAITS)
        self.recent_growth: deque[int] = deque(maxlen=RECENT_PROGRAMS)
        self._calls = 0

    def begin_call(self, call: ProgramCall) -> Program:
        """A request of this program arrives: the wait since its last one ended is over."""
        now = self.clock()
        self._calls += 1
        if self._calls % SWEEP_EVERY == 0:
            self._forget_idle(now)
        p = self.programs.get(call.program_id)
        if p is None:
            p = self.programs[call.program_id] = Program(call.program_id, next(_order), now)
        if p.in_flight == 0 and p.idle_since is not None:
            wait = now - p.idle_since
            p.waits.append(wait)
            self.recent_waits.append(wait)
        p.in_flight += 1
        p.idle_since = None
        return p

    def end_call(self, p: Program, finished: bool) -> None:
        p.in_flight -= 1
        p.calls += finished
        if p.in_flight == 0:
            p.idle_since = self.clock()

    def _forget_idle(self, now: float) -> None:
        for pid in [k for k, p in self.programs.items()
                    if p.in_flight == 0 and p.idle_since is not None and now - p.idle_since > FORGET_IDLE_S]:
            del self.programs[pid]

    def is_open(self, p: Program) -> bool:
        """Not ended (nor forgotten): a pin made for it would be released."""
        return self.programs.get(p.id) is p

    def end(self, program_id: str) -> Program | None:
        p = self.programs.pop(program_id, None)
        if p is not None and p.calls:
            self.recent_growth.append(p.grown)
        return p

    def expected_growth(self) -> int | None:
        """Tokens a program adds to its context over its life (past its first prompt), as recent programs did;
        None before any has ended."""
        return int(statistics.median(self.recent_growth)) if self.recent_growth else None

    def expected_wait(self, p: Program) -> float:
        """How long this program's next wait may last: its longest so far, else what programs wait lately."""
        if p.waits:
            return max(p.waits)
        return statistics.median(self.recent_waits) if self.recent_waits else DEFAULT_WAIT_S
