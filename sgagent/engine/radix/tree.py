"""A radix tree over token ids whose edges own KV pages of the pool.

Keys are whole pages: a node's key holds len(pages) * page_size tokens, and only whole pages are ever
shared in place. A finished sequence's partial last page is kept too, as a leaf whose key is shorter than
a page ("tail"): nobody attends to a tail page directly, a request that shares its first tokens copies
them into a page of its own (see `partial`). The same copy reuses the first tokens of a whole page whose
later tokens differ. Nodes locked by running requests (lock_ref > 0 on the node and all its ancestors)
are never evicted; tails are never locked; unlocked leaves go in LRU order when the pool needs room.

Pins (pin_ref) are soft locks for programs that await something other than the engine (retention.py): a pinned
path is not evicted, but the scheduler may drop a pin to make room. A node marked `done` (its program ended) is
evicted before every other unpinned node: nobody is expected to come back for it.
"""

from __future__ import annotations

import heapq
import itertools

from ...log import get_logger

_log = get_logger("sgagent.radix")
_clock = itertools.count()


class Node:
    __slots__ = ("children", "parent", "key", "pages", "lock_ref", "pin_ref", "done", "last_access")

    def __init__(self, parent: "Node | None", key: list[int], pages: list[int]):
        self.children: dict[tuple, Node] = {}
        self.parent = parent
        self.key = key
        self.pages = pages
        self.lock_ref = 0
        self.pin_ref = 0
        self.done = False
        self.last_access = next(_clock)

    def touch(self) -> None:
        self.last_access = next(_clock)
        self.done = False

    @property
    def held(self) -> bool:
        return self.lock_ref > 0 or self.pin_ref > 0

    def __lt__(self, other: "Node") -> bool:
        # eviction order: ended programs' nodes first, then least recently used
        return (not self.done, self.last_access) < (not other.done, other.last_access)


class RadixTree:
    def __init__(self, pool, page_size: int):
        self.pool = pool
        self.ps = page_size
        self.root = Node(None, [], [])
        self.root.lock_ref = 1  # never evicted
        self.cached_pages = 0  # pages the tree owns
        self.locked_pages = 0  # of those, pages on a locked path
        self.pinned_pages = 0  # pages on a pinned path
        self.held_pages = 0  # pages on a locked or pinned path: not evictable
        self.evicted_pages = 0
        self.num_nodes = 0

    # -- lookup ------------------------------------------------------------------------------
    def _page_key(self, tokens, i: int) -> tuple:
        return tuple(tokens[i : i + self.ps])

    def _common_pages(self, key: list[int], tokens, start: int) -> int:
        ps, n = self.ps, 0
        limit = min(len(key), len(tokens) - start) // ps
        while n < limit and key[n * ps : (n + 1) * ps] == tokens[start + n * ps : start + (n + 1) * ps]:
            n += 1
        return n

    def match_len(self, tokens) -> int:
        """Tokens of the longest cached whole-page prefix, without touching the tree."""
        node, i = self.root, 0
        while len(tokens) - i >= self.ps:
            child = node.children.get(self._page_key(tokens, i))
            if child is None:
                break
            n = self._common_pages(child.key, tokens, i)
            i += n * self.ps
            if n * self.ps < len(child.key):
                break
            node = child
        return i

    def match(self, tokens) -> tuple[list[int], Node]:
        """Longest cached whole-page prefix: its pages and the node it ends at (split there if needed)."""
        node, i, pages = self.root, 0, []
        while len(tokens) - i >= self.ps:
            child = node.children.get(self._page_key(tokens, i))
            if child is None:
                break
            n = self._common_pages(child.key, tokens, i)
            if n * self.ps < len(child.key):
                child = self._split(child, n)
            child.touch()
            pages.extend(child.pages)
            i += n * self.ps
            node = child
        return pages, node

    def partial(self, node: Node, tokens, start: int) -> tuple[int, int]:
        """After a whole-page match ending at `node` (tokens[:start] matched): the cached page whose first
        tokens agree longest with tokens[start:], as (page, tokens in common); (0, 0) when none does.

        The caller may copy those tokens' K/V into its own page; the source page is intact until the next
        model step writes to the pool, whether or not it is evicted in between.
        """
        want = tokens[start : start + self.ps]
        best, page, owner = 0, 0, None
        for child in node.children.values():
            k = child.key
            n = 0
            while n < len(want) and n < len(k) and k[n] == want[n]:
                n += 1
            n = min(n, self.ps - 1)  # a whole page in common would have been matched in place
            if n > best:
                best, page, owner = n, child.pages[0], child
        if owner is not None:
            owner.touch()
        return page, best

    def _split(self, node: Node, n_pages: int) -> Node:
        """Cut node after n_pages; the returned upper part takes node's place."""
        cut = n_pages * self.ps
        upper = Node(node.parent, node.key[:cut], node.pages[:n_pages])
        upper.lock_ref, upper.pin_ref = node.lock_ref, node.pin_ref
        upper.last_access, upper.done = node.last_access, node.done
        node.parent.children[self._page_key(upper.key, 0)] = upper
        node.key, node.pages, node.parent = node.key[cut:], node.pages[n_pages:], upper
        upper.children[self._page_key(node.key, 0)] = node
        self.num_nodes += 1
        return upper

    # -- insert ------------------------------------------------------------------------------
    def insert(self, tokens, pages: list[int]) -> tuple[list[int], Node]:
        """Add a whole-page sequence. Returns the tree's pages for it and its last node.

        Where the tree already held a prefix, its own pages win; the caller frees its duplicates
        (those of its pages not in the returned list).
        """
        assert len(tokens) == len(pages) * self.ps
        node, i, out = self.root, 0, []
        while i < len(tokens):
            child = node.children.get(self._page_key(tokens, i))
            if child is None:
                self._drop_tails_covered(node, tokens[i : i + self.ps])
                new = Node(node, list(tokens[i:]), list(pages[i // self.ps :]))
                node.children[self._page_key(tokens, i)] = new
                self.num_nodes += 1
                self.cached_pages += len(new.pages)
                out.extend(new.pages)
                return out, new
            n = self._common_pages(child.key, tokens, i)
            if n * self.ps < len(child.key):
                child = self._split(child, n)
            child.touch()
            out.extend(child.pages)
            i += n * self.ps
            node = child
        return out, node

    def insert_tail(self, node: Node, tail, page: int) -> bool:
        """Keep a partial last page (len(tail) < page_size tokens, following `node`'s path) as a tail leaf.

        Returns whether the tree took the page; it does not when a cached page already starts with `tail`,
        and then the caller frees it. Tails that `tail` extends are dropped.
        """
        assert 0 < len(tail) < self.ps
        tail = list(tail)
        for child in node.children.values():
            if child.key[: len(tail)] == tail:
                child.touch()
                return False
        self._drop_tails_covered(node, tail)
        node.children[tuple(tail)] = Node(node, tail, [page])
        self.num_nodes += 1
        self.cached_pages += 1
        return True

    def _drop_tails_covered(self, node: Node, tokens) -> None:
        """Tails under node that are a prefix of tokens: the page about to hold those tokens replaces them."""
        for key, child in list(node.children.items()):
            if len(child.key) < self.ps and list(tokens[: len(child.key)]) == child.key:
                assert not child.children and not child.held
                del node.children[key]
                self.pool.free(child.pages)
                self.num_nodes -= 1
                self.cached_pages -= 1

    # -- locks and pins ----------------------------------------------------------------------
    def lock(self, node: Node) -> None:
        self._count("lock_ref", "locked_pages", node, 1)

    def unlock(self, node: Node) -> None:
        self._count("lock_ref", "locked_pages", node, -1)

    def pin(self, node: Node) -> None:
        self._count("pin_ref", "pinned_pages", node, 1)

    def unpin(self, node: Node) -> None:
        self._count("pin_ref", "pinned_pages", node, -1)

    def _count(self, ref: str, pages: str, node: Node, delta: int) -> None:
        """Add delta to `ref` on node and its ancestors, keeping the page counts of locked/pinned and held
        nodes in step."""
        while node is not self.root:
            was_held, was_on = node.held, getattr(node, ref) > 0
            setattr(node, ref, getattr(node, ref) + delta)
            on = getattr(node, ref)
            assert on >= 0, f"radix {ref} released twice"
            n = len(node.pages)
            if was_on != (on > 0):
                setattr(self, pages, getattr(self, pages) + (n if on else -n))
            if was_held != node.held:
                self.held_pages += n if node.held else -n
            node = node.parent

    def mark_done(self, node: Node) -> None:
        """The path to node belongs to a program that ended: its own part (up to where another path branches
        off, or a lock or pin holds it) goes first when the pool needs room."""
        for c in node.children.values():
            if len(c.key) < self.ps:  # its partial last page
                c.done = True
        while node is not self.root and not node.held and len(node.children) <= 1:
            node.done = True
            node = node.parent

    def depth(self, node: Node) -> int:
        """Tokens on the path from the root to node."""
        n = 0
        while node is not self.root:
            n, node = n + len(node.key), node.parent
        return n

    @property
    def evictable_pages(self) -> int:
        return self.cached_pages - self.held_pages

    # -- eviction ----------------------------------------------------------------------------
    def evict(self, n_pages: int) -> int:
        """Free at least n_pages from unheld leaves, ended programs' first, then least recently used. Returns
        pages freed."""
        heap = [n for n in self._nodes() if not n.children and not n.held]
        heapq.heapify(heap)
        freed = 0
        while heap and freed < n_pages:
            leaf = heapq.heappop(heap)
            self.pool.free(leaf.pages)
            freed += len(leaf.pages)
            self.cached_pages -= len(leaf.pages)
            parent = leaf.parent
            del parent.children[self._page_key(leaf.key, 0)]
            self.num_nodes -= 1
            if parent is not self.root and not parent.children and not parent.held:
                heapq.heappush(heap, parent)
        self.evicted_pages += freed
        if freed:
            _log.debug("radix.evict", pages=freed, cached_pages=self.cached_pages, tree_nodes=self.num_nodes)
        return freed

    def _nodes(self):
        stack = list(self.root.children.values())
        while stack:
            n = stack.pop()
            yield n
            stack.extend(n.children.values())

    def reset(self) -> None:
        """Drop everything unlocked (e.g. for a benchmark's cold start)."""
        self.evict(self.cached_pages)
