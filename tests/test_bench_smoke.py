"""A small run of the benchmark suite: every benchmark produces its numbers and ratios (not speeds)."""

import json
import os
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def test_benchmarks_produce_ratios(tmp_path):
    out = tmp_path / "results.jsonl"
    env = {**os.environ, "SGAGENT_BENCH_OUT": str(out)}
    for args in (["bench.radix_reuse", "--small"], ["bench.constrained_decoding", "--small", "--runs", "1"],
                 ["bench.primitives_vs_generate", "--small", "--runs", "1"]):
        subprocess.run([sys.executable, "-m", *args], cwd=ROOT, env=env, check=True, timeout=900,
                       stdout=subprocess.DEVNULL)
    rows = {r["bench"]: r for r in map(json.loads, out.read_text().splitlines())}
    for name in ("radix_few_shot", "radix_multi_turn", "radix_tree_of_thought"):
        assert rows[name]["ratio"] > 0 and 0 <= rows[name]["hit_rate"] <= 1
    assert rows["radix_few_shot"]["hit_rate"] > 0.5
    assert rows["json_extraction_jump_forward"]["fewer_decode_steps"] >= 1.0
    assert rows["mask_overhead"]["us_per_seq_b32"] > 0
    assert rows["index_compile"]["compiled"] > 0
    assert rows["primitives_few_shot"]["speedup"] > 0 and rows["primitives_tree_of_thought"]["speedup"] > 0
    assert "few_shot_vs_llama_cpp" in rows
