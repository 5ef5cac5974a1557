"""Other engines run beside sgagent in the benchmarks and peer tests, each in its own process: vLLM's CPU build
in a venv of its own (`make peers`), llama.cpp in a spawned child. Nothing here is needed by CI."""
