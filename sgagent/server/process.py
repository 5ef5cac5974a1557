"""`sgagent serve` in a child process: a replica with its own interpreter and cores, that can be killed for real
(what a replica behind a router is; the in-process `start` shares the caller's event loop and GIL)."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
from pathlib import Path

import httpx

from ..ports import free_port, wait_until


class ServerProcess:
    def __init__(self, model: str | None = None, *, served_model_name: str = "smol", port: int | None = None,
                 dtype: str = "float32", kv_cache_mib: int | None = None, threads: int | None = None,
                 log_file: str | Path | None = None):
        self.port = port or free_port()
        self.cmd = [sys.executable, "-m", "sgagent.cli", "serve", "--port", str(self.port),
                    "--served-model-name", served_model_name, "--dtype", dtype]
        if model:
            self.cmd += ["--model", str(model)]
        if kv_cache_mib:
            self.cmd += ["--kv-cache-mib", str(kv_cache_mib)]
        self.env = dict(os.environ)
        if threads:
            self.env["OMP_NUM_THREADS"] = str(threads)  # torch reads it at start: one replica per core
        self.log_file = log_file
        self.proc: subprocess.Popen | None = None

    @property
    def root(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    @property
    def url(self) -> str:
        return self.root + "/v1"

    async def start(self, timeout: float = 300.0) -> "ServerProcess":
        out = open(self.log_file, "w") if self.log_file else subprocess.DEVNULL  # noqa: SIM115
        self.proc = subprocess.Popen(self.cmd, stdout=out, stderr=subprocess.STDOUT, env=self.env)
        if out is not subprocess.DEVNULL:
            out.close()  # the child holds its own descriptor
        async with httpx.AsyncClient(timeout=5.0) as h:
            async def healthy():
                return (await h.get(self.root + "/health")).status_code == 200

            await wait_until(healthy, f"sgagent serve on port {self.port}", timeout, self.proc)
        return self

    def kill(self) -> None:
        """SIGKILL: the replica dies mid-request, as a crashed machine would."""
        if self.proc is not None and self.proc.poll() is None:
            self.proc.send_signal(signal.SIGKILL)
            self.proc.wait()

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(timeout=30)
            except subprocess.TimeoutExpired:
                self.kill()

    async def __aenter__(self) -> "ServerProcess":
        return await self.start()

    async def __aexit__(self, *exc) -> None:
        self.stop()
