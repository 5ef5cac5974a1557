"""The systems each workload runs on: sgagent with and without prefix reuse, transformers, llama.cpp, and vLLM
(its CPU build, a server in its own venv and process, reached through RemoteEngine)."""

from __future__ import annotations

from ..baselines import LlamaCppBackend, TransformersBackend, llama_cpp_installed

SYSTEMS = ["sgagent", "no_reuse", "transformers", "llama.cpp", "vllm"]


class Capped:
    """A backend whose unconstrained generations stop at `cap` tokens: the smoke size, same for every system."""

    def __init__(self, inner, cap: int):
        self._inner, self._cap = inner, cap

    def __getattr__(self, name):
        return getattr(self._inner, name)

    def _clamp(self, sampling: dict) -> dict:
        if not any(sampling.get(k) is not None for k in ("regex", "json_schema", "choices")):
            sampling["max_tokens"] = min(sampling.get("max_tokens", 128), self._cap)
        return sampling

    async def generate(self, prompt=None, **sampling):
        return await self._inner.generate(prompt, **self._clamp(sampling))

    def stream(self, prompt=None, **sampling):
        return self._inner.stream(prompt, **self._clamp(sampling))


class Systems:
    """Opens each system cold for a run: a fresh engine (sharing the weights), or a reset baseline."""

    def __init__(self, base, wanted: list[str]):
        unknown = sorted(set(wanted) - set(SYSTEMS))
        if unknown:
            raise SystemExit(f"unknown systems {unknown}; choose from {SYSTEMS}")
        self.base = base
        self.names = [n for n in wanted if self.available(n)]
        self.missing = [n for n in wanted if n not in self.names]
        self._baselines = {}

    def available(self, name: str) -> bool:
        if name == "llama.cpp":
            return llama_cpp_installed() and self.base.model_path.endswith(".gguf")
        if name == "vllm":
            from ..peers.vllm_server import vllm_installed

            return vllm_installed()
        return True

    async def open(self, name: str):
        if name in ("sgagent", "no_reuse"):
            return self.base.with_config(radix_cache=name == "sgagent")
        if name == "vllm":
            return await self._vllm()
        if name not in self._baselines:
            self._baselines[name] = (TransformersBackend if name == "transformers" else LlamaCppBackend)(self.base)
        backend = self._baselines[name]
        backend.reset()
        return backend

    async def _vllm(self):
        """The vLLM server, started once (outside every run's clock), its prefix cache emptied for each run."""
        from sgagent.remote import RemoteEngine

        from ..peers.vllm_server import VllmServer

        if "vllm" not in self._baselines:
            server = await VllmServer(self.base.model_path).start()
            self._baselines["vllm"] = (server, RemoteEngine(server.url, model=self.base.model_path))
        server, remote = self._baselines["vllm"]
        await server.reset_prefix_cache()
        remote.counters.update(dict.fromkeys(remote.counters, 0))
        return remote

    async def close(self, name: str, backend) -> None:
        if name in ("sgagent", "no_reuse"):
            await backend.aclose()  # a baseline is kept (loading it is not part of any run)

    async def aclose(self) -> None:
        for name, b in self._baselines.items():
            if name == "vllm":
                server, remote = b
                await remote.aclose()
                server.stop()
            else:
                await b.aclose()
