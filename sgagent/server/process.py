"""`sgagent serve` in a child process: a replica with its own interpreter and cores, that can be killed for real
(what a replica behind a router is; the in-process `start` shares the caller's event loop and GIL)."""

from __future__ import annotations

import sys
from pathlib import Path

from ..ports import ChildServer


class ServerProcess(ChildServer):
    what = "sgagent serve"

    def __init__(self, model: str | None = None, *, served_model_name: str = "smol", port: int | None = None,
                 dtype: str = "float32", kv_cache_mib: int | None = None, threads: int | None = None,
                 log_file: str | Path | None = None):
        super().__init__(port=port, log_file=log_file)
        self.model, self.served_model_name, self.dtype = model, served_model_name, dtype
        self.kv_cache_mib, self.threads = kv_cache_mib, threads

    def command(self) -> list[str]:
        cmd = [sys.executable, "-m", "sgagent.cli", "serve", "--port", str(self.port),
               "--served-model-name", self.served_model_name, "--dtype", self.dtype]
        if self.model:
            cmd += ["--model", str(self.model)]
        if self.kv_cache_mib:
            cmd += ["--kv-cache-mib", str(self.kv_cache_mib)]
        return cmd

    def environment(self) -> dict[str, str]:
        env = super().environment()
        if self.threads:
            env["OMP_NUM_THREADS"] = str(self.threads)  # torch reads it at start: one replica per core
        return env
