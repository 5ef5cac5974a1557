"""The radix tree against a plain reference model, under random operation sequences (hypothesis)."""

import random

from hypothesis import settings, strategies as st
from hypothesis.stateful import RuleBasedStateMachine, invariant, precondition, rule

from sgagent.engine.radix import RadixTree

PS = 3
CAPACITY = 48


class FakePool:
    def __init__(self, n):
        self.free_pages = set(range(1, n + 1))
        self.capacity = n

    @property
    def num_free(self):
        return len(self.free_pages)

    def alloc(self, n):
        out = [self.free_pages.pop() for _ in range(n)]
        return out

    def free(self, pages):
        for p in pages:
            assert p not in self.free_pages, "page freed twice"
            self.free_pages.add(p)


seqs = st.lists(st.integers(0, 2), min_size=0, max_size=14)


class RadixMachine(RuleBasedStateMachine):
    def __init__(self):
        super().__init__()
        self.pool = FakePool(CAPACITY)
        self.tree = RadixTree(self.pool, PS)
        self.ref: dict[tuple, int] = {}  # every cached whole-page prefix -> the page holding its last page
        self.tails: dict[tuple, int] = {}  # every cached prefix ending in a partial page -> that page
        self.holders = []  # (node, tokens) locked by "requests"
        self.pinned = []  # (node, tokens) pinned for "programs" awaiting a tool
        self.private = []  # pages held outside the tree

    def _ref_match(self, tokens):
        pages, k = [], PS
        while k <= len(tokens) and tuple(tokens[:k]) in self.ref:
            pages.append(self.ref[tuple(tokens[:k])])
            k += PS
        return pages

    def _ref_partial(self, tokens, i):
        """Longest agreement of a cached page just after tokens[:i] with tokens[i:], below a whole page."""
        best = 0
        for key in list(self.tails) + [k for k in self.ref if len(k) == i + PS]:
            if len(key) > i and list(key[:i]) == list(tokens[:i]):
                n = 0
                while n < PS - 1 and i + n < min(len(key), len(tokens)) and key[i + n] == tokens[i + n]:
                    n += 1
                best = max(best, n)
        return best

    def _content(self, page):
        return next([k for k, p in d.items() if p == page][0] for d in (self.ref, self.tails) if page in d.values())

    @rule(tokens=seqs, hold=st.sampled_from(["no", "lock", "pin"]))
    def request(self, tokens, hold):
        """What the scheduler does: match, lock, copy what a partial match gives, compute the rest into
        private pages, publish, keep or release (keeping the partial last page as a tail)."""
        pages, node = self.tree.match(tokens)
        assert pages == self._ref_match(tokens)
        self.tree.lock(node)
        i = len(pages) * PS
        src, n = self.tree.partial(node, tokens, i)
        assert n == self._ref_partial(tokens, i)
        if n:
            assert list(self._content(src)[: i + n]) == list(tokens[: i + n])
        full = len(tokens) // PS
        need = full - len(pages)
        if need > self.pool.num_free:
            self.tree.evict(need - self.pool.num_free)
            self._sync_after_evict()
        if need > self.pool.num_free:
            self.tree.unlock(node)
            return
        mine = pages + self.pool.alloc(need)
        tree_pages, new = self.tree.insert(tokens[: full * PS], mine)
        self.pool.free([p for p, t in zip(mine, tree_pages) if p != t])
        for k in range(1, full + 1):
            if tuple(tokens[: k * PS]) not in self.ref:  # a new page replaces the tails it covers
                self._drop_ref_tails(tokens[: k * PS], (k - 1) * PS)
            self.ref.setdefault(tuple(tokens[: k * PS]), tree_pages[k - 1])
        assert tree_pages == self._ref_match(tokens[: full * PS])
        self.tree.lock(new)
        self.tree.unlock(node)
        if hold == "lock":
            self.holders.append((new, list(tokens[: full * PS])))
        else:
            if hold == "pin":  # a program's call ended; it keeps its path while it waits
                self.tree.pin(new)
                self.pinned.append((new, list(tokens[: full * PS])))
            self.tree.unlock(new)
        if len(tokens) > full * PS and self.pool.num_free:
            self._keep_tail(new, tokens, full * PS)

    def _drop_ref_tails(self, tokens, i):
        for key in [k for k in self.tails if len(k) > i and tuple(tokens[: len(k)]) == k and k[:i] == tuple(tokens[:i])]:
            del self.tails[key]

    def _keep_tail(self, node, tokens, i):
        page = self.pool.alloc(1)[0]
        whole = tuple(tokens)
        covered = any(len(k) > i and k[: len(whole)] == whole for k in list(self.ref) + list(self.tails)
                      if len(k) <= i + PS)
        took = self.tree.insert_tail(node, tokens[i:], page)
        assert took == (not covered)
        if took:
            self._drop_ref_tails(tokens, i)
            self.tails[whole] = page
        else:
            self.pool.free([page])

    @precondition(lambda self: self.holders)
    @rule(i=st.integers(0, 100))
    def release(self, i):
        node, _ = self.holders.pop(i % len(self.holders))
        self.tree.unlock(node)

    @precondition(lambda self: self.pinned)
    @rule(i=st.integers(0, 100), done=st.booleans())
    def unpin(self, i, done):
        node, _ = self.pinned.pop(i % len(self.pinned))
        self.tree.unpin(node)
        if done:  # its program ended: what only it used goes first
            self.tree.mark_done(node)

    @rule(n=st.integers(0, 20))
    def evict(self, n):
        evictable = self.tree.evictable_pages
        freed = self.tree.evict(n)
        assert freed >= min(n, evictable) or freed == evictable
        self._sync_after_evict()

    @rule(tokens=seqs)
    def match_only(self, tokens):
        assert self.tree.match_len(tokens) == len(self._ref_match(tokens)) * PS

    def _sync_after_evict(self):
        present = set()
        for n in self.tree._nodes():
            path, x = [], n
            while x is not self.tree.root:
                path[:0] = x.key
                x = x.parent
            if len(n.key) >= PS:
                for k in range(len(path) - len(n.key) + PS, len(path) + 1, PS):
                    present.add(tuple(path[:k]))
        tails = set()
        for n in self.tree._nodes():
            if len(n.key) < PS:
                path, x = [], n
                while x is not self.tree.root:
                    path[:0] = x.key
                    x = x.parent
                tails.add(tuple(path))
        assert tails <= set(self.tails)
        for key in set(self.tails) - tails:
            del self.tails[key]
        gone = set(self.ref) - present
        # nothing a holder has locked or pinned may go
        for _, toks in self.holders + self.pinned:
            for k in range(PS, len(toks) + 1, PS):
                assert tuple(toks[:k]) not in gone, "a locked prefix was evicted"
        for key in gone:
            del self.ref[key]
        assert present == set(self.ref)

    @invariant()
    def pages_are_accounted(self):
        owned = [p for n in self.tree._nodes() for p in n.pages]
        assert len(owned) == len(set(owned)), "a page owned twice"
        assert not set(owned) & self.pool.free_pages
        assert len(owned) == self.tree.cached_pages
        assert self.pool.num_free + self.tree.cached_pages == CAPACITY
        expected_locked = sum(len(n.pages) for n in self.tree._nodes() if n.lock_ref > 0)
        assert self.tree.locked_pages == expected_locked
        assert self.tree.pinned_pages == sum(len(n.pages) for n in self.tree._nodes() if n.pin_ref > 0)
        assert self.tree.held_pages == sum(len(n.pages) for n in self.tree._nodes() if n.held)
        for n in self.tree._nodes():
            if len(n.key) < PS:  # a tail: one partial page, a leaf, never locked
                assert n.key and len(n.pages) == 1 and not n.children and n.lock_ref == 0
            else:
                assert len(n.key) == len(n.pages) * PS
            assert all(n.lock_ref >= c.lock_ref for c in n.children.values())
        assert len(self.ref) + len(self.tails) == self.tree.cached_pages


RadixMachine.TestCase.settings = settings(max_examples=150, stateful_step_count=40, deadline=None)
TestRadixMachine = RadixMachine.TestCase


def test_split_keeps_pages_and_lru_evicts_oldest_first():
    pool = FakePool(20)
    tree = RadixTree(pool, 2)
    a = pool.alloc(3)
    tree.insert([1, 1, 2, 2, 3, 3], a)
    b = pool.alloc(3)
    got, _ = tree.insert([1, 1, 2, 2, 4, 4], b)
    assert got[:2] == a[:2] and got[2] == b[2]
    pool.free(b[:2])
    assert tree.match_len([1, 1, 2, 2, 9]) == 4 and tree.num_nodes == 3
    tree.match([1, 1, 2, 2, 4, 4])  # touch the second branch: the first is now least recent
    assert tree.evict(1) == 1
    assert tree.match_len([1, 1, 2, 2, 3, 3]) == 4 and tree.match_len([1, 1, 2, 2, 4, 4]) == 6
    # a partial last page is never matched in place (RadixTree.partial finds it for a copy)
    assert tree.match_len([1, 1, 2]) == 2


def test_random_workload_never_loses_pages():
    rng = random.Random(0)
    pool = FakePool(64)
    tree = RadixTree(pool, 4)
    for _ in range(3000):
        toks = [rng.randrange(3) for _ in range(rng.randrange(0, 40))]
        pages, node = tree.match(toks)
        tree.lock(node)
        full = len(toks) // 4
        need = full - len(pages)
        if need > pool.num_free:
            tree.evict(need - pool.num_free)
        if need <= pool.num_free:
            mine = pages + pool.alloc(need)
            got, new = tree.insert(toks[: full * 4], mine)
            pool.free([p for p, t in zip(mine, got) if p != t])
            tree.lock(new)
            tree.unlock(new)
        tree.unlock(node)
        assert pool.num_free + tree.cached_pages == 64 and tree.locked_pages == 0


def test_pinned_paths_stay_and_ended_programs_go_first():
    pool = FakePool(20)
    tree = RadixTree(pool, 2)
    _, waiting = tree.insert([1, 1, 2, 2], pool.alloc(2))  # a program awaiting a tool
    mine = pool.alloc(2)
    got, ended = tree.insert([1, 1, 3, 3], mine)  # shares [1, 1]; its program has ended
    pool.free([p for p, t in zip(mine, got) if p != t])
    _, other = tree.insert([5, 5, 6, 6], pool.alloc(2))  # someone else's, least recently used of the three
    tree.match([1, 1, 3, 3])  # the ended one is the most recently used
    tree.pin(waiting)
    assert tree.pinned_pages == 2 and tree.evictable_pages == 3  # [1, 1] is held by the pin below [2, 2]
    tree.mark_done(ended)
    assert tree.evict(1) == 1 and tree.match_len([1, 1, 3, 3]) == 2  # ended first, though most recent
    assert tree.match_len([5, 5, 6, 6]) == 4
    assert tree.evict(10) == 2 and tree.match_len([1, 1, 2, 2]) == 4  # all but the pinned path
    tree.unpin(waiting)
    assert tree.pinned_pages == 0 and tree.evict(10) == 2 and tree.cached_pages == 0
