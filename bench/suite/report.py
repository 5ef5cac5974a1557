"""The suite's outputs: a markdown table, a JSON file, a PNG plot of sgagent's speed-up over each baseline."""

from __future__ import annotations

import json
from pathlib import Path


def table(rows: list[dict]) -> str:
    names = [n for n in rows[0]["systems"]] if rows else []
    head = ["workload", "programs"] + [f"{n} prog/s" for n in names] + \
        [f"vs {n}" for n in names if n != "sgagent"] + ["hit rate", "failed programs"]
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for r in rows:
        s = r["systems"]
        cells = [r["workload"], str(r["programs"])] + [f"{s[n]['programs_per_s']:.3f}" for n in names]
        cells += [f"**{r['ratios'][f'vs_{n}']:.2f}x**" for n in names if n != "sgagent"]
        cells.append(f"{s['sgagent']['hit_rate']:.0%}" if "sgagent" in s else "")
        cells.append(", ".join(f"{n} {s[n]['failed']}" for n in names if s[n].get("failed")) or "0")
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)


def write_json(path: Path, meta: dict, rows: list[dict]) -> None:
    path.write_text(json.dumps({**meta, "workloads": rows}, indent=2))


def plot(path: Path, rows: list[dict], title: str) -> None:
    import matplotlib
    import matplotlib.ticker

    matplotlib.use("Agg")  # files only; no display needed
    import matplotlib.pyplot as plt

    baselines = list(dict.fromkeys(k for r in rows for k in r["ratios"]))  # in the order the systems ran
    if not baselines:
        return
    width = 0.8 / len(baselines)
    fig, ax = plt.subplots(figsize=(max(6.0, 1.1 * len(rows) + 2), 4.2))
    for i, b in enumerate(baselines):
        xs = [j + (i - (len(baselines) - 1) / 2) * width for j in range(len(rows))]
        ax.bar(xs, [r["ratios"].get(b, 0.0) for r in rows], width, label=f"sgagent {b.replace('_', ' ')}")
    ax.axhline(1.0, color="black", linewidth=0.8)
    ax.set_yscale("log")
    ax.yaxis.set_major_formatter(matplotlib.ticker.FuncFormatter(lambda v, _: f"{v:g}x"))
    ax.yaxis.set_minor_formatter(matplotlib.ticker.NullFormatter())
    ax.set_xticks(range(len(rows)), [r["workload"] for r in rows], rotation=30, ha="right")
    ax.set_ylabel("speed-up (baseline time / sgagent time)")
    ax.set_title(title, fontsize=10)
    ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)
