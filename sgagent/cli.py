"""The `sgagent` command: run a recipe or program file, chat in the terminal, run the benchmark suite.

    sgagent run recipes/showcase.py [--model PATH] [--arg k=v ...]
    sgagent chat [--model PATH]
    sgagent serve [--model PATH] [--host 127.0.0.1] [--port 8000]
    sgagent bench [WORKLOAD ...] [--small] [--scale F] [--runs N] [--systems a,b]
"""

from __future__ import annotations

import argparse
import asyncio
import importlib.util
import inspect
import json
import subprocess
import sys
from pathlib import Path


def load_file(path: str):
    """Import a program file by path (it need not be on sys.path); its `main(engine, ...)` is what runs."""
    p = Path(path)
    if not p.is_file():
        raise SystemExit(f"sgagent run: no such file {path!r}")
    spec = importlib.util.spec_from_file_location(f"sgagent_run_{p.stem}", p)
    module = importlib.util.module_from_spec(spec)
    sys.path.insert(0, str(p.resolve().parent.parent))  # so a recipe may import its siblings as recipes.x
    spec.loader.exec_module(module)
    main = getattr(module, "main", None)
    if main is None or not inspect.iscoroutinefunction(main):
        raise SystemExit(f"sgagent run: {path} has no `async def main(engine, ...)`")
    return main


def parse_args(main, pairs: list[str]) -> dict:
    """`k=v` pairs typed by main's defaults and annotations: ints, floats, bools and JSON lists stay typed."""
    params = inspect.signature(main).parameters
    out = {}
    for pair in pairs:
        if "=" not in pair:
            raise SystemExit(f"sgagent run: --arg takes k=v, not {pair!r}")
        k, v = pair.split("=", 1)
        if k not in params or k == "engine":
            raise SystemExit(f"sgagent run: unknown argument {k!r}; this program takes "
                             f"{[n for n in params if n != 'engine']}")
        default = params[k].default
        if isinstance(default, bool):
            out[k] = v.lower() in ("1", "true", "yes", "on")
        elif isinstance(default, (int, float)):
            out[k] = type(default)(v)
        elif isinstance(default, (list, dict)):
            out[k] = json.loads(v)
        else:
            out[k] = v
    return out


async def run_file(path: str, model: str | None, pairs: list[str]):
    from .engine import Engine

    main = load_file(path)
    kwargs = parse_args(main, pairs)
    async with Engine(model) as engine:
        return await main(engine, **kwargs)


async def chat(model: str | None, max_tokens: int, system_prompt: str | None) -> None:
    from .engine import Engine

    async with Engine(model) as engine:
        messages = [{"role": "system", "content": system_prompt}] if system_prompt else []
        print("sgagent chat: an empty line or Ctrl-D ends it.", flush=True)
        loop = asyncio.get_running_loop()
        while True:
            try:
                line = await loop.run_in_executor(None, input, "you> ")
            except EOFError:
                break
            if not line.strip():
                break
            messages.append({"role": "user", "content": line})
            print("model> ", end="", flush=True)
            pieces = []
            async for piece in engine.stream(messages=messages, max_tokens=max_tokens, temperature=0.7):
                pieces.append(piece)
                print(piece, end="", flush=True)
            print(flush=True)
            messages.append({"role": "assistant", "content": "".join(pieces)})
        st = engine.stats()
        print(f"[{len(messages) // 2} turns; prefix cache hit rate {st['cache_hit_rate']:.0%}]")


async def serve(model: str | None, host: str, port: int, name: str | None, max_body: int, dtype: str,
                kv_mib: int | None, image_dir: str | None = None) -> None:
    from .engine import Engine
    from .server import serve as run_server

    options = {"dtype": dtype} | ({"kv_cache_bytes": kv_mib << 20} if kv_mib else {})
    async with Engine(model, **options) as engine:
        print(f"sgagent: serving {engine.model_path} on http://{host}:{port}/v1 (Ctrl-C stops)", flush=True)
        await run_server(engine, host=host, port=port, model=name, max_body_bytes=max_body, image_dir=image_dir)


def bench(args: list[str]) -> int:
    """The benchmark suite (bench/suite), which ships with the repository rather than the package."""
    root = Path.cwd()
    if not (root / "bench" / "suite" / "__main__.py").is_file():
        raise SystemExit("sgagent bench: run it from a checkout of sgagent (the bench/ folder ships with the repo)")
    return subprocess.call([sys.executable, "-m", "bench.suite", *args], cwd=root)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="sgagent", description="LLM agent programs on an embedded engine.")
    sub = ap.add_subparsers(dest="cmd", required=True)
    r = sub.add_parser("run", help="run a recipe or program file (its async main(engine, ...))")
    r.add_argument("file")
    r.add_argument("--model", default=None, help="a .gguf file or Hugging Face folder (default: SmolLM2-135M)")
    r.add_argument("--arg", action="append", default=[], metavar="K=V", help="an argument of main; repeatable")
    c = sub.add_parser("chat", help="chat with the model in the terminal, streaming")
    c.add_argument("--model", default=None)
    c.add_argument("--max-tokens", type=int, default=256)
    c.add_argument("--system", default=None, help="a system prompt")
    v = sub.add_parser("serve", help="an OpenAI-compatible HTTP server over the engine")
    v.add_argument("--model", default=None)
    v.add_argument("--host", default="127.0.0.1", help="the address to bind (default: loopback only)")
    v.add_argument("--port", type=int, default=8000)
    v.add_argument("--served-model-name", default=None, help="the model id clients ask for (default: file name)")
    v.add_argument("--max-body-bytes", type=int, default=4 << 20)
    v.add_argument("--image-dir", default=None, help="the directory chat requests may read file:// images from")
    v.add_argument("--dtype", default="auto", choices=["auto", "float32", "bfloat16", "float16"])
    v.add_argument("--kv-cache-mib", type=int, default=None, help="KV pool size (default: the engine's)")
    sub.add_parser("bench", add_help=False, help="the benchmark suite of the paper's workloads (from a checkout); "
                   "sgagent bench --help lists its options")
    argv = sys.argv[1:] if argv is None else argv
    if argv[:1] == ["bench"]:
        return bench(argv[1:])  # every option belongs to the suite's own parser
    a = ap.parse_args(argv)
    if a.cmd == "run":
        asyncio.run(run_file(a.file, a.model, a.arg))
    elif a.cmd == "chat":
        asyncio.run(chat(a.model, a.max_tokens, a.system))
    elif a.cmd == "serve":
        try:
            asyncio.run(serve(a.model, a.host, a.port, a.served_model_name, a.max_body_bytes, a.dtype,
                              a.kv_cache_mib, a.image_dir))
        except KeyboardInterrupt:
            pass
    return 0


if __name__ == "__main__":
    sys.exit(main())
