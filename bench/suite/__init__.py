"""The benchmark suite of the SGLang paper's workloads: `python -m bench.suite` or `sgagent bench`."""
