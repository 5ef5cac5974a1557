"""Which sequences of a step share a prefix of KV pages, so its attention is computed once for all of them.

Sequences that share a prefix through the radix tree point at the same physical pages. Attending to
those pages once per group (queries of every member stacked) and merging with each member's own tail
by log-sum-exp gives the same result as attending per sequence, without gathering the shared K/V once
per member: on a CPU that gather, not the arithmetic, is most of a decode step's attention.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

# What a group costs beyond its tokens, in gathered tokens: groups smaller than this saving are not worth forming.
# Plain torch: two extra attention calls and a merge.
GROUP_OVERHEAD_TOKENS = 256
# The C++ kernel (paged_tasks.h): a task per group that hands each member's rows their partial result, no extra
# calls; its members would otherwise read the shared pages where they lie, so a group saves their memory traffic
# and the per-page work (transposing keys, widening values), not a gather.
NATIVE_GROUP_OVERHEAD_TOKENS = 32
# ...up to this many query rows per K/V head in a group (members x grouped heads x queries each): past that the
# kernel's per-row dot products cost more than SDPA's blocked matmuls on the gathered prefix. Decoding 64 tokens
# on a cached prefix: 8 requests on 1,456 tokens (24 rows) 1.91 s in the kernel, 2.20 s by SDPA, 2.48 s ungrouped;
# 32 on 776 (96 rows) 3.09 s, 2.92 s, 3.56 s; few-shot's 64 (192 rows) 1.68 s vs 1.42 s by SDPA.
NATIVE_GROUP_ROWS = 64


@dataclass
class PrefixGroup:
    members: list[int]  # positions in the list of page tables given
    pages: int  # leading pages every member shares


def _common_pages(a: Sequence[int], b: Sequence[int], limit: int) -> int:
    n = 0
    while n < limit and a[n] == b[n]:
        n += 1
    return n


def prefix_groups(page_tables: Sequence[Sequence[int]], query_starts: Sequence[int], page_size: int,
                  overhead_tokens: int = GROUP_OVERHEAD_TOKENS) -> list[PrefixGroup]:
    """Partition sequences into groups sharing leading pages, minimising the tokens gathered.

    Sequences sorted by page table put every group's members next to each other, so the best
    partition is a split of that order into runs; found by dynamic programming over run ends.
    query_starts[i] is the position of sequence i's first new token: the page holding it, and any after
    it, are never counted as shared, so new tokens are never written into a shared page. overhead_tokens: what
    forming a group costs, in tokens read.
    """
    n = len(page_tables)
    if n < 2:
        return []
    order = sorted(range(n), key=lambda i: page_tables[i])
    full = [query_starts[i] // page_size for i in order]  # pages wholly before the first new token
    adj = [
        _common_pages(page_tables[order[j]], page_tables[order[j + 1]], min(full[j], full[j + 1]))
        for j in range(n - 1)
    ]
    lens = [query_starts[i] + 1 for i in order]  # tokens each would gather alone (its newest counted once)
    best = [0] * (n + 1)
    cut: list[tuple[int, int]] = [(0, 0)] * (n + 1)  # (start of the last run, its shared pages)
    for j in range(1, n + 1):
        best[j], cut[j] = best[j - 1] + lens[j - 1], (j - 1, 0)
        shared, total = 1 << 30, lens[j - 1]
        for i in range(j - 2, -1, -1):  # run order[i:j]
            shared = min(shared, adj[i])
            if shared == 0:
                break
            total += lens[i]
            cost = best[i] + overhead_tokens + total - (j - i - 1) * shared * page_size
            if cost < best[j]:
                best[j], cut[j] = cost, (i, shared)
    groups = []
    j = n
    while j > 0:
        i, shared = cut[j]
        if shared:
            groups.append(PrefixGroup(sorted(order[i:j]), shared))
        j = i
    return groups
