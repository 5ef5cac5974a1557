"""Every workload on sgagent (prefix reuse on), sgagent without reuse, transformers, llama.cpp and vLLM (if installed).

python -m bench.suite [WORKLOAD ...] [--small] [--scale F] [--runs N] [--systems a,b] [--out DIR]

Prints a table and one BENCH_JSON line per workload; writes suite.json, suite.md and suite.png to --out.
"""

from __future__ import annotations

import argparse
import asyncio
import sys
import time
from pathlib import Path

from ..common import machine, report
from .backends import SYSTEMS, Systems
from .measure import measure
from .report import plot, table, write_json
from .workloads import WORKLOADS


def parse(argv=None):
    ap = argparse.ArgumentParser(prog="sgagent bench", description=__doc__.split("\n\n")[0])
    ap.add_argument("workloads", nargs="*", help=f"any of {list(WORKLOADS)} (default: all)")
    ap.add_argument("--small", action="store_true", help="CI smoke size: 1-2 programs, 4-token generations")
    ap.add_argument("--scale", type=float, default=1.0, help="multiply the full program counts")
    ap.add_argument("--runs", type=int, default=1, help="repeats per system; the median time is reported")
    ap.add_argument("--systems", default=",".join(SYSTEMS), help="comma-separated, from " + ",".join(SYSTEMS))
    ap.add_argument("--max-new", type=int, default=None, help="cap unconstrained generations (default 4 with --small)")
    ap.add_argument("--model", default=None, help="a .gguf file or Hugging Face folder (default: SmolLM2-135M)")
    ap.add_argument("--gguf-blocks", choices=["auto", "on", "off"], default="auto",
                    help="sgagent's EngineConfig.gguf_blocks (on: float32 steps by the GGUF blocks too)")
    ap.add_argument("--out", default=str(Path(__file__).resolve().parents[1] / "out"))
    a = ap.parse_args(argv)
    unknown = [w for w in a.workloads if w not in WORKLOADS]
    if unknown:
        ap.error(f"unknown workloads {unknown}; choose from {list(WORKLOADS)}")
    return a


async def main(a) -> list[dict]:
    import sgagent
    from tqdm.auto import tqdm

    chosen = [WORKLOADS[w] for w in (a.workloads or WORKLOADS)]
    cap = a.max_new if a.max_new is not None else (4 if a.small else None)
    blocks = {"auto": None, "on": True, "off": False}[a.gguf_blocks]
    base = sgagent.Engine(a.model, kv_cache_bytes=1 << 30, gguf_blocks=blocks)
    systems = Systems(base, [s for s in a.systems.split(",") if s])
    where = machine()
    print(f"# benchmark suite on {where}; systems {systems.names}"
          + (f" (not here: {systems.missing})" if systems.missing else ""), flush=True)
    out = Path(a.out)
    out.mkdir(parents=True, exist_ok=True)
    command = " ".join(["python -m bench.suite"] + sys.argv[1:])
    meta = {"machine": where, "date": time.strftime("%Y-%m-%d"), "command": command,
            "small": a.small, "scale": a.scale, "runs": a.runs, "max_new": cap, "systems": systems.names}
    rows = []
    bar = tqdm(total=len(chosen) * len(systems.names) * a.runs, desc="bench", unit="run", file=sys.stderr)
    try:
        for w in chosen:
            n = w.small if a.small else max(1, round(w.full * a.scale))
            row = await measure(systems, w, n, a.small, a.runs, cap, bar)
            rows.append(row)
            fields = {f"{k}_programs_per_s": v["programs_per_s"] for k, v in row["systems"].items()}
            report(f"suite_{w.name}", programs=row["programs"], **fields, **row["ratios"],
                   hit_rate=row["systems"].get("sgagent", {}).get("hit_rate", 0.0), runs=a.runs)
            write(out, meta, rows)  # after every workload: a long run cut short keeps what it measured
    finally:
        bar.close()
        await systems.aclose()
        await base.aclose()
    print("\n" + table(rows), flush=True)
    print(f"wrote {out / 'suite.json'}, {out / 'suite.md'}, {out / 'suite.png'}", flush=True)
    return rows


def write(out: Path, meta: dict, rows: list[dict]) -> None:
    (out / "suite.md").write_text(f"{meta['command']}\n\n{meta['machine']}\n\n{table(rows)}\n")
    write_json(out / "suite.json", meta, rows)
    plot(out / "suite.png", rows, f"sgagent speed-up per workload ({meta['machine']})")


if __name__ == "__main__":
    asyncio.run(main(parse()))
