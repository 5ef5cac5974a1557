"""KV retention across a program's waits: when a program's call ends and the program goes on to await something
that is not the engine, the KV of that call's path stays pinned in the radix tree until its next call, its end,
or a time-to-live; pins drop at once when the program ends (done, failed or cancelled).

Pins are soft. Running requests and a program's next call that kept its KV may drop them (newest wait first: the
program that began waiting last is the one expected back last) when the pool has no other room; a newcomer's first
call and a call whose KV was lost may not, unless they starve or the engine would otherwise have nothing to run
(one program's recomputation must not cost the KV of others). A pin's TTL stops once the program's next call is
queued: the wait it covers is over. A branch's pin holds the trunk below it too, so a
fork's trunk stays while its branches are between calls; the trunk's next call (after the join) drops the
branches' pins with its own.
"""

from __future__ import annotations

import time
from dataclasses import dataclass

from ..log import get_logger
from .programs import Program, ProgramTable

_log = get_logger("sgagent.retention")

# a pin lives TTL_FACTOR times the program's expected wait, within these bounds (seconds)
TTL_FACTOR = 2.0
TTL_MIN_S, TTL_MAX_S = 0.25, 60.0


@dataclass(eq=False)
class Pin:
    program: Program
    path: tuple[int, ...]
    node: object
    since: float
    expires: float
    tokens: int  # depth of the pinned path


class Retention:
    def __init__(self, tree, programs: ProgramTable, clock=time.monotonic):
        self.tree = tree
        self.programs = programs
        self.clock = clock
        # (program id, branch) -> its pin, in the order the waits began (hold re-inserts): the newest is last
        self.pins: dict[tuple[str, tuple[int, ...]], Pin] = {}
        self.counters = dict.fromkeys(["pins_made", "pins_dropped", "pins_expired", "pin_hits", "pin_hit_tokens"], 0)

    def hold(self, program: Program, path: tuple[int, ...], node) -> None:
        """Pin node's path for a call of `program` at `path` that just ended."""
        if node is None or node is self.tree.root:
            return
        key = (program.id, path)
        old = self.pins.pop(key, None)
        now = self.clock()
        ttl = min(max(TTL_FACTOR * self.programs.expected_wait(program), TTL_MIN_S), TTL_MAX_S)
        self.tree.pin(node)
        self.pins[key] = Pin(program, path, node, now, now + ttl, self.tree.depth(node))
        self.counters["pins_made"] += 1
        if old is not None:
            self.tree.unpin(old.node)

    def arrived(self, program: Program, path: tuple[int, ...]) -> None:
        """A call of program at path is queued: its wait is over, so the pins it will resume (its own, its trunk's,
        its branches') no longer expire; the engine's queue, not the program, keeps it from them now. They may
        still be dropped under pressure."""
        for key, pin in self.pins.items():
            if key[0] == program.id and (key[1][: len(path)] == path or path[: len(key[1])] == key[1]):
                pin.expires = float("inf")

    def resume(self, program: Program, path: tuple[int, ...], matched: int) -> None:
        """A call of program at path was admitted (its path is locked now): its own pin, and those of branches
        under it that have joined back, are no longer needed. matched: the tokens it found cached."""
        own = self.pins.get((program.id, path))
        if own is not None:
            self.counters["pin_hits"] += matched >= own.tokens
            self.counters["pin_hit_tokens"] += min(matched, own.tokens)
        n = len(path)
        for key in [k for k in self.pins if k[0] == program.id and len(k[1]) >= n and k[1][:n] == path]:
            self._unpin(key)

    def end(self, program_id: str) -> None:
        """The program ended: its pins go now, and what only it used is evicted first."""
        for key in [k for k in self.pins if k[0] == program_id]:
            node = self.pins[key].node
            self._unpin(key)
            self.tree.mark_done(node)

    def expire(self) -> None:
        now = self.clock()
        for key in [k for k, p in self.pins.items() if p.expires <= now]:
            self.counters["pins_expired"] += 1
            self._unpin(key)

    def drop_for(self, need: int) -> None:
        """Drop pins, newest wait first, until `need` pages are free or evictable (or no pin is left)."""
        while self.tree.pool.num_free + self.tree.evictable_pages < need and self.pins:
            key = next(reversed(self.pins))
            pin = self.pins[key]
            _log.debug("retention.pin_dropped", program_id=pin.program.id, branch=pin.path, tokens=pin.tokens,
                       waited_s=round(self.clock() - pin.since, 3))
            self.counters["pins_dropped"] += 1
            self._unpin(key)

    def _unpin(self, key) -> None:
        self.tree.unpin(self.pins.pop(key).node)

    def stats(self) -> dict:
        return dict(self.counters, pins=len(self.pins), pinned_pages=self.tree.pinned_pages)
