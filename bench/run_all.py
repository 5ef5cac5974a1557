"""Every benchmark in turn (full sizes); JSON lines collected in bench/out/results.jsonl.

python -m bench.run_all [--small]
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
from pathlib import Path

BENCHES = ["cpu_projection", "cpu_ops", "gguf_blocks", "engine_throughput", "batch_scaling", "radix_reuse",
           "flop_ceiling", "determinism", "program_aware", "primitives_vs_generate", "constrained_decoding",
           "tool_agents", "serving", "suite"]


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--small", action="store_true")
    ap.add_argument("names", nargs="*", default=BENCHES)
    a = ap.parse_args()
    out = Path(__file__).parent / "out"
    out.mkdir(exist_ok=True)
    env = {**os.environ, "SGAGENT_BENCH_OUT": str(out / "results.jsonl")}
    for name in a.names:
        args = [sys.executable, "-m", f"bench.{name}"] + (["--small", "--runs", "1"] if a.small else [])
        if a.small and name == "engine_throughput":
            args = [sys.executable, "-m", f"bench.{name}", "--runs", "1", "--requests", "4", "--new", "8"]
        print(f"$ {' '.join(args[1:])}", flush=True)
        subprocess.run(args, check=True, env=env)


if __name__ == "__main__":
    main()
