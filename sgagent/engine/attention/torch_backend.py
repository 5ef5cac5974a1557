"""Attention in plain torch over the paged pool (CPU and any device).

K/V are gathered page by page (a page is one contiguous block of the pool); on CPU, short sequences' own
pages skip the gather when the engine's C++ ops (cpu_ops) are built: they read them in place. Short
sequences of a step (decodes, and the few tokens a jump-forward appends) run as one padded call over each
sequence's own pages; prefixes that several of them share through the radix tree are attended once per
group (see prefix_groups): by the C++ kernel itself, which resumes each member's rows from the group's result,
or for groups of many rows by SDPA on the gathered prefix, merged in by log-sum-exp. Longer extends (prefill
chunks) on a cached prefix run one call each, since their query and key lengths differ and padding them
together wastes more than it saves; fresh prompts (nothing cached) of one length share one causal call.

Batch-invariant (the engine's deterministic mode, with the C++ ops): every query row, of a decode, an extend or
a fresh prompt, is attended by the C++ kernel, which gives a row the same value whatever the step holds: it
walks the row's own pages in order, one page at a time, and a shared prefix's softmax state is carried into each
member unchanged (paged_tasks.h). SDPA picks its blocking by the query and key lengths, so a prompt computed
whole, in chunks or on a cached prefix would get other values; it is not used there.
"""

from __future__ import annotations

import functools
from dataclasses import dataclass, field

import torch
import torch.nn.functional as F

from ..batch import ForwardBatch
from .lse import attend, mask_bias, merge
from .prefix_groups import GROUP_OVERHEAD_TOKENS, NATIVE_GROUP_OVERHEAD_TOKENS, NATIVE_GROUP_ROWS, prefix_groups

# queries per sequence up to which it joins the padded batch (decodes are 1; jump-forward appends a few)
SHORT_QUERIES = 16


@dataclass
class _Extend:
    row: int
    q_len: int
    kv_pages: torch.Tensor | None  # None: no cached prefix, attend to this step's own k/v causally
    mask: torch.Tensor | None


@dataclass
class _KernelExtend:
    """An extend attended by the C++ kernel (batch-invariant steps): rows row.. of the step, its page table and
    each query row's visible keys, rows ordered (grouped head, query) as the kernel takes them."""

    row: int
    q_len: int
    pages: torch.Tensor  # [1, P]
    limits: torch.Tensor  # [1, heads per K/V head * q_len] int32


@dataclass
class _Group:
    members: torch.Tensor  # positions among the step's short sequences
    pages: torch.Tensor  # the pages they share


@dataclass
class TorchMeta:
    slot_mapping: torch.Tensor
    short_rows: torch.Tensor | None = None  # [B, Q] token row of each query, padded with the last one
    short_valid: torch.Tensor | None = None  # [B * Q] bool: which of those are real queries
    short_all: bool = False  # every row is a decode, in order: no gather/scatter of rows needed
    short_pages: torch.Tensor | None = None  # [B, P] each sequence's unshared pages, padded with page 0
    short_bias: torch.Tensor | None = None  # [B, 1, heads per K/V head * Q, P * page_size], see _short
    short_limits: torch.Tensor | None = None  # C++ path, instead of the bias: [B, heads per K/V head * Q] keys seen
    groups: list[_Group] = field(default_factory=list)  # torch path: shared prefixes attended by SDPA and merged
    # C++ path: shared prefixes the kernel attends once for all members ([G, P] pages, [G] keys, [B] group or -1)
    group_pages: torch.Tensor | None = None
    group_keys: torch.Tensor | None = None
    group_of: torch.Tensor | None = None
    extends: list[_Extend] = field(default_factory=list)
    kernel_extends: list[_KernelExtend] = field(default_factory=list)


def _npages(tokens: int, ps: int) -> int:
    return (tokens + ps - 1) // ps


class TorchAttention:
    def __init__(self, pool, num_heads: int, share_prefixes: bool = True, ops=None, invariant: bool = False):
        if invariant and ops is None:
            raise ValueError("batch-invariant attention needs the C++ ops (cpu_ops)")
        self.pool = pool
        self.group = num_heads // pool.k.shape[2]  # query heads per K/V head
        self.share_prefixes = share_prefixes
        self.ops = ops  # cpu_ops.cpu_ops(): short sequences' attention and K/V stores in C++; None: plain torch
        self.invariant = invariant  # every row through the C++ kernel (see the module's docstring)
        self.scale = pool.k.shape[-1] ** -0.5

    def prepare(self, batch: ForwardBatch, device) -> TorchMeta:
        ps = self.pool.page_size
        slot_mapping = []
        short, extends = [], []
        for s in batch.seqs:
            slot_mapping.extend(s.new_slots(ps))
            (short if s.q_len <= SHORT_QUERIES else extends).append(s)
        meta = TorchMeta(torch.tensor(slot_mapping, dtype=torch.long, device=device))
        if short:
            self._prepare_short(meta, short, len(batch.seqs), device)
        for s in extends:
            if self.invariant:
                meta.kernel_extends.append(self._kernel_extend(s, device))
                continue
            if s.prefix_len == 0:
                meta.extends.append(_Extend(s.row, s.q_len, None, None))
                continue
            n = _npages(s.kv_len, ps)
            q_pos = torch.arange(s.prefix_len, s.kv_len)[:, None]
            mask = (torch.arange(n * ps)[None, :] <= q_pos).to(device)
            meta.extends.append(_Extend(s.row, s.q_len, torch.tensor(s.pages[:n], device=device), mask))
        return meta

    def _kernel_extend(self, s, device) -> _KernelExtend:
        n = _npages(s.kv_len, self.pool.page_size)
        seen = torch.arange(s.prefix_len + 1, s.kv_len + 1, dtype=torch.int32)  # query j sees keys up to its own
        return _KernelExtend(s.row, s.q_len, torch.tensor([s.pages[:n]], dtype=torch.long),
                             seen.repeat(self.group)[None].contiguous())

    def _prepare_short(self, meta: TorchMeta, seqs, num_seqs: int, device) -> None:
        ps = self.pool.page_size
        nq = max(s.q_len for s in seqs)
        skip = [0] * len(seqs)  # leading pages attended through a group
        if self.share_prefixes:
            in_kernel = []  # groups the C++ kernel attends itself (paged_tasks.h); the rest go through SDPA
            overhead = NATIVE_GROUP_OVERHEAD_TOKENS if self.ops is not None else GROUP_OVERHEAD_TOKENS
            for g in prefix_groups([s.pages for s in seqs], [s.prefix_len for s in seqs], ps, overhead):
                for m in g.members:
                    skip[m] = g.pages
                # invariant steps keep every group in the kernel: SDPA's merged result is another rounding
                if self.ops is not None and (self.invariant or len(g.members) * self.group * nq <= NATIVE_GROUP_ROWS):
                    in_kernel.append(g)
                else:
                    meta.groups.append(_Group(torch.tensor(g.members, device=device),
                                              torch.tensor(seqs[g.members[0]].pages[: g.pages], device=device)))
            if in_kernel:
                width = max(g.pages for g in in_kernel)
                meta.group_pages = torch.tensor([seqs[g.members[0]].pages[: g.pages] + [0] * (width - g.pages)
                                                 for g in in_kernel], dtype=torch.long)
                meta.group_keys = torch.tensor([g.pages * ps for g in in_kernel], dtype=torch.int32)
                of = [-1] * len(seqs)
                for gi, g in enumerate(in_kernel):
                    for m in g.members:
                        of[m] = gi
                meta.group_of = torch.tensor(of, dtype=torch.int32)
        own = [s.kv_len - skip[i] * ps for i, s in enumerate(seqs)]
        width = max(_npages(n, ps) for n in own)
        pages, rows, last_key = [], [], []
        for i, s in enumerate(seqs):
            tail = s.pages[skip[i] : skip[i] + _npages(own[i], ps)]
            pages.append(tail + [0] * (width - len(tail)))
            qi = [min(j, s.q_len - 1) for j in range(nq)]  # padding repeats the last query
            rows.append([s.row + j for j in qi])
            last_key.append([own[i] - s.q_len + j for j in qi])  # own-relative position of each query
        meta.short_pages = torch.tensor(pages, dtype=torch.long, device=device)
        # rows of a K/V head are (grouped head, query position): each position's visible keys, repeated per head
        if self.ops is not None:
            # a padding row sees no key: the kernel skips it (a step mixing decodes with extends of a few tokens
            # otherwise computed every decode nq times over)
            seen = torch.tensor([[k + 1 if j < s.q_len else 0 for j, k in enumerate(keys)]
                                 for s, keys in zip(seqs, last_key)], dtype=torch.int32)  # [B, Q]
            meta.short_limits = seen[:, None].expand(-1, self.group, -1).reshape(len(seqs), -1).contiguous()
        else:
            mask = torch.arange(width * ps)[None, None, :] <= torch.tensor(last_key)[:, :, None]  # [B, Q, L]
            mask = mask[:, None].expand(-1, self.group, -1, -1).reshape(len(seqs), 1, self.group * nq, -1)
            meta.short_bias = mask_bias(mask, self.pool.k.dtype).to(device)
        meta.short_rows = torch.tensor(rows, dtype=torch.long, device=device)
        meta.short_valid = torch.tensor([[j < s.q_len for j in range(nq)] for s in seqs], device=device).reshape(-1)
        meta.short_all = nq == 1 and len(seqs) == num_seqs

    def native_decode(self, meta: TorchMeta) -> tuple | None:
        """The C++ decode_layers op's attention arguments for a step of decodes only that the C++ kernel attends
        wholly (no prefix group left to SDPA), in its order from k_caches to scale; else None."""
        if self.ops is None or not meta.short_all or meta.groups:
            return None
        groups = self._no_groups if meta.group_pages is None else (meta.group_pages, meta.group_keys, meta.group_of)
        return (self.pool.k, self.pool.v, meta.slot_mapping, meta.short_pages, meta.short_limits, *groups,
                self.pool.page_size, self.scale)

    @functools.cached_property
    def _no_groups(self) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        return torch.zeros(0, 1, dtype=torch.long), torch.zeros(0, dtype=torch.int32), torch.zeros(0, dtype=torch.int32)

    def _gather(self, cache: torch.Tensor, pages: torch.Tensor) -> torch.Tensor:
        """cache [slots, Hkv, D], pages [..., P] -> [..., Hkv, P * page_size, D]."""
        ps = self.pool.page_size
        blocks = cache.view(-1, ps, *cache.shape[1:]).index_select(0, pages.reshape(-1))
        return blocks.view(*pages.shape[:-1], pages.shape[-1] * ps, *cache.shape[1:]).transpose(-3, -2)

    def _short(self, kc, vc, q: torch.Tensor, meta: TorchMeta) -> torch.Tensor:
        """q [B, Q, H, D] of the short sequences' queries -> [B, Q, H, D]."""
        B, Q, H, D = q.shape
        hkv, g = kc.shape[1], self.group
        r = g * Q  # query rows per K/V head: its grouped heads at every position
        qg = q.view(B, Q, hkv, g, D).permute(0, 2, 3, 1, 4).reshape(B, hkv, r, D)
        if self.ops is not None and meta.group_pages is not None:
            out, lse = self.ops.paged_attention_grouped(qg, kc, vc, meta.short_pages, meta.short_limits,
                                                        meta.group_pages, meta.group_keys, meta.group_of,
                                                        self.pool.page_size, self.scale)
        elif self.ops is not None:
            out, lse = self.ops.paged_attention(qg, kc, vc, meta.short_pages, meta.short_limits, self.pool.page_size,
                                                self.scale)
        else:
            kd, vd = self._gather(kc, meta.short_pages), self._gather(vc, meta.short_pages)
            out, lse = attend(qg, kd, vd, meta.short_bias)
        if meta.groups:
            shared_o = torch.zeros_like(out)
            shared_lse = torch.full_like(lse, float("-inf"))
            for grp in meta.groups:
                n = len(grp.members)
                qs = qg.index_select(0, grp.members).transpose(0, 1).reshape(1, hkv, n * r, D)
                # many query rows on the same keys: SDPA's blocked matmuls beat the C++ op's per-row dot products,
                # and one gather serves every member (measured: few-shot with 64 members, 2.45 s vs 4.7 s)
                o, l = attend(qs, self._gather(kc, grp.pages[None]), self._gather(vc, grp.pages[None]))
                shared_o[grp.members] = o[0].view(hkv, n, r, D).transpose(0, 1)
                shared_lse[grp.members] = l[0].view(hkv, n, r).transpose(0, 1)
            out = merge(shared_o, shared_lse, out, lse)
        return out.view(B, hkv, g, Q, D).permute(0, 3, 1, 2, 4).reshape(B, Q, H, D)

    def __call__(self, layer: int, q, k, v, meta: TorchMeta) -> torch.Tensor:
        """q: [T, H, D]; k, v: [T, Hkv, D] for this step's tokens. Returns [T, H*D]."""
        kc, vc = self.pool.k[layer], self.pool.v[layer]
        if self.ops is not None:
            self.ops.store_kv(kc, vc, meta.slot_mapping, k, v)
        else:
            kc.index_copy_(0, meta.slot_mapping, k)
            vc.index_copy_(0, meta.slot_mapping, v)
        T, H, D = q.shape
        if meta.short_all:
            return self._short(kc, vc, q[:, None], meta).reshape(T, H * D)
        out = q.new_empty((T, H, D))
        if meta.short_rows is not None:
            o = self._short(kc, vc, q[meta.short_rows], meta).reshape(-1, H, D)
            out[meta.short_rows.reshape(-1)[meta.short_valid]] = o[meta.short_valid]
        for e in meta.kernel_extends:
            qe = q[e.row : e.row + e.q_len]
            hkv = kc.shape[1]
            qg = qe.view(1, e.q_len, hkv, self.group, D).permute(0, 2, 3, 1, 4).reshape(1, hkv, -1, D)
            o, _ = self.ops.paged_attention(qg, kc, vc, e.pages, e.limits, self.pool.page_size, self.scale)
            out[e.row : e.row + e.q_len] = o.view(hkv, self.group, e.q_len, D).permute(2, 0, 1, 3).reshape(
                e.q_len, H, D)
        fresh: dict[int, list[_Extend]] = {}  # prompts with nothing cached, by length
        for e in meta.extends:
            if e.kv_pages is None:
                fresh.setdefault(e.q_len, []).append(e)
                continue
            qe = q[e.row : e.row + e.q_len].transpose(0, 1)[None]  # [1, H, q, D]
            ke, ve = self._gather(kc, e.kv_pages[None]), self._gather(vc, e.kv_pages[None])
            oe = F.scaled_dot_product_attention(qe, ke, ve, attn_mask=e.mask, enable_gqa=True)
            out[e.row : e.row + e.q_len] = oe[0].transpose(0, 1)
        for n, same in fresh.items():
            # one causal call for all fresh prompts of a length: a call per prompt left most of the kernel's
            # (batch x head) tasks to one of two threads (9 heads) and paid its set-up each time
            # their rows: back to back as the scheduler adds them (a slice: views, no copy), else gathered
            start = same[0].row
            if all(e.row == start + i * n for i, e in enumerate(same)):
                rows = slice(start, start + len(same) * n)
            else:
                rows = torch.cat([torch.arange(e.row, e.row + n) for e in same]).to(q.device)
            qe, ke, ve = (t[rows].unflatten(0, (len(same), n)).transpose(1, 2) for t in (q, k, v))  # [B, H, n, D]
            oe = F.scaled_dot_product_attention(qe, ke, ve, is_causal=True, enable_gqa=True)
            out[rows] = oe.transpose(1, 2).flatten(0, 1)
        return out.reshape(T, H * D)
