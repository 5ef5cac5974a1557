"""The model's projections on CPU as x @ W^T (F.linear) vs W @ x^T (what model.llama.project does for few rows),
in float32 and in bfloat16 (what dtype="auto" picks on CPUs with bf16 arithmetic).

Every linear layer of the default model (30 layers) and its tied lm_head, at decode-sized and prefill-sized
row counts; the two ways round interleaved, median of --runs.

python -m bench.cpu_projection [--runs 5]
"""

from __future__ import annotations

import statistics
import time

import torch
import torch.nn.functional as F

from .common import cli, machine, report


def model_shapes() -> tuple[list[tuple[int, int]], tuple[int, int], int]:
    from sgagent.engine.model.source import resolve

    c = resolve(None).config
    kv = c.num_kv_heads * c.head_dim
    per_layer = [(c.num_heads * c.head_dim, c.hidden_size), (kv, c.hidden_size), (kv, c.hidden_size),
                 (c.hidden_size, c.num_heads * c.head_dim), (c.intermediate_size, c.hidden_size),
                 (c.intermediate_size, c.hidden_size), (c.hidden_size, c.intermediate_size)]
    return per_layer, (c.vocab_size, c.hidden_size), c.num_layers


def _time(fn) -> float:
    t0 = time.perf_counter()
    fn()
    return time.perf_counter() - t0


async def main(runs: int, small: bool) -> None:
    print(f"# CPU projections, {machine()}")
    per_layer, head, layers = model_shapes()
    if small:
        layers = 2
    ways = {"x_WT": lambda x, w: F.linear(x, w), "W_xT": lambda x, w: torch.mm(w, x.t()).t()}
    for dtype in (torch.float32, torch.bfloat16):
        torch.manual_seed(0)
        # distinct weights per layer: not cache-resident, as in the model
        weights = [[torch.randn(n, k, dtype=dtype) for n, k in per_layer] for _ in range(layers)]
        lm_head = torch.randn(*head, dtype=dtype)
        for rows in (1, 16, 64, 128) if small else (1, 4, 16, 32, 64, 128, 256, 512):
            xs = {k: torch.randn(rows, k, dtype=dtype) for k in {k for _, k in per_layer}}
            xh = torch.randn(rows, head[1], dtype=dtype)
            layer_t = {w: [] for w in ways}
            head_t = {w: [] for w in ways}
            for _ in range(runs):
                for name, f in ways.items():
                    layer_t[name].append(_time(lambda: [f(xs[w.shape[1]], w) for ws in weights for w in ws]))
                    head_t[name].append(_time(lambda: f(xh, lm_head)))
            lm = {w: statistics.median(t) for w, t in layer_t.items()}
            hm = {w: statistics.median(t) for w, t in head_t.items()}
            report("cpu_projection", dtype=str(dtype).split(".")[1], rows=rows, layers_x_WT_ms=lm["x_WT"] * 1e3,
                   layers_W_xT_ms=lm["W_xT"] * 1e3, layers_speedup=lm["x_WT"] / lm["W_xT"],
                   lm_head_x_WT_ms=hm["x_WT"] * 1e3, lm_head_W_xT_ms=hm["W_xT"] * 1e3,
                   lm_head_speedup=hm["x_WT"] / hm["W_xT"], runs=runs)
        del weights, lm_head


if __name__ == "__main__":
    cli(main, runs=5)
