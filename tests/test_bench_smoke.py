"""A small run of the benchmark suite: every benchmark produces its numbers and ratios (not speeds)."""

import json
import os
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def test_constrained_decoding_benchmark_produces_its_numbers(tmp_path):
    out = tmp_path / "results.jsonl"
    env = {**os.environ, "SGAGENT_BENCH_OUT": str(out)}
    # radix on/off and programs vs plain calls are covered by the paper suite's smoke below (every workload,
    # every system), which keeps the CI time in bounds
    subprocess.run([sys.executable, "-m", "bench.constrained_decoding", "--small", "--runs", "1"], cwd=ROOT,
                   env=env, check=True, timeout=900, stdout=subprocess.DEVNULL)
    rows = {r["bench"]: r for r in map(json.loads, out.read_text().splitlines())}
    assert rows["json_extraction_jump_forward"]["fewer_decode_steps"] >= 1.0
    assert rows["mask_overhead"]["us_per_seq_b32"] > 0
    assert rows["index_compile"]["compiled"] > 0


def test_paper_suite_produces_programs_ratios_and_files(tmp_path):
    """`sgagent bench --small`: every workload runs on every system here; ratios, table, JSON and plot come out."""
    from bench.suite.workloads import WORKLOADS

    subprocess.run([sys.executable, "-m", "sgagent.cli", "bench", "--small", "--out", str(tmp_path)], cwd=ROOT,
                   env={**os.environ, "SGAGENT_BENCH_OUT": str(tmp_path / "lines.jsonl")}, check=True, timeout=900,
                   stdout=subprocess.DEVNULL)
    result = json.loads((tmp_path / "suite.json").read_text())
    rows = {r["workload"]: r for r in result["workloads"]}
    assert set(rows) == set(WORKLOADS)
    assert {"sgagent", "no_reuse", "transformers"} <= set(result["systems"])
    for name, r in rows.items():
        assert r["programs"] >= 1, name
        assert set(r["systems"]) == set(result["systems"]), name
        for sysname, s in r["systems"].items():
            assert s["programs_per_s"] > 0 and 0 <= s["hit_rate"] <= 1, (name, sysname)
        assert r["ratios"]["vs_no_reuse"] > 0 and r["ratios"]["vs_transformers"] > 0, name
        assert r["systems"]["no_reuse"]["cached_tokens"] == 0 and r["systems"]["transformers"]["cached_tokens"] == 0
    assert rows["few_shot"]["systems"]["sgagent"]["hit_rate"] > 0.5  # the 5-shot prefix is reused
    # warm: the prefix was cached before the clock, by a question the hit rate counts too
    assert rows["few_shot_warm"]["systems"]["sgagent"]["hit_rate"] > rows["few_shot"]["systems"]["sgagent"]["hit_rate"]
    assert (tmp_path / "suite.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert "| few_shot |" in (tmp_path / "suite.md").read_text()
    lines = [json.loads(x) for x in (tmp_path / "lines.jsonl").read_text().splitlines()]
    assert {x["bench"] for x in lines} == {f"suite_{w}" for w in WORKLOADS}
