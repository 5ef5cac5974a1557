"""The OpenAI-compatible HTTP app over one embedded engine (FastAPI; run it with uvicorn, or `sgagent serve`)."""

from __future__ import annotations

import json
import time
from pathlib import Path

from fastapi import FastAPI, Request
from fastapi.responses import JSONResponse, Response

from ..log import get_logger
from . import errors
from .chat import chat_completions
from .completions import completions
from .errors import APIError
from .metrics import Metrics
from .native import GenerateRequest, flush_cache, generate, model_info, server_info
from .protocol import ChatCompletionRequest, CompletionRequest


class BodyLimit:
    """ASGI middleware: a request body over `limit` bytes gets 413 before it is read into memory."""

    def __init__(self, app, limit: int):
        self.app, self.limit = app, limit

    async def __call__(self, scope, receive, send):
        if scope["type"] != "http":
            return await self.app(scope, receive, send)
        declared = dict(scope.get("headers") or []).get(b"content-length")
        if declared is not None and int(declared) > self.limit:
            return await self._reject(send)
        seen = 0

        async def counted():
            nonlocal seen
            message = await receive()
            seen += len(message.get("body", b""))
            if seen > self.limit:
                raise APIError(413, f"request body over {self.limit} bytes", code="body_too_large")
            return message

        await self.app(scope, counted, send)

    async def _reject(self, send):
        body = json.dumps({"error": {"message": f"request body over {self.limit} bytes",
                                     "type": "invalid_request_error", "param": None, "code": "body_too_large"}})
        await send({"type": "http.response.start", "status": 413,
                    "headers": [(b"content-type", b"application/json")]})
        await send({"type": "http.response.body", "body": body.encode()})


def model_id(engine) -> str:
    p = Path(engine.model_path)
    return p.stem if p.suffix == ".gguf" else p.name


def create_app(engine, *, model: str | None = None, max_body_bytes: int = 4 << 20,
               image_dir: str | None = None) -> FastAPI:
    """An app serving `engine` under the model name `model` (default: the weights' file or folder name).
    image_dir: the one directory whose files chat requests may name as file:// images (default: none)."""
    name = model or model_id(engine)
    metrics = Metrics(engine)
    log = get_logger("sgagent.server")
    app = FastAPI(title="sgagent", description="OpenAI-compatible API over an embedded sgagent engine")
    app.state.engine, app.state.model = engine, name
    app.state.image_dir = Path(image_dir).resolve() if image_dir else None
    errors.install(app)
    app.add_middleware(BodyLimit, limit=max_body_bytes)

    @app.middleware("http")
    async def observe(request: Request, call_next):
        t0 = time.perf_counter()
        response = await call_next(request)
        if response.status_code >= 400:
            metrics.error(response.status_code)
        log.info("http.request", method=request.method, path=request.url.path, status=response.status_code,
                 ms=round(1000 * (time.perf_counter() - t0), 1))
        return response

    def check_model(requested: str) -> None:
        if requested != name:
            raise APIError(404, f"the model {requested!r} does not exist; this server has {name!r}",
                           param="model", code="model_not_found")

    @app.get("/health")
    async def health():
        if engine._closed:
            return JSONResponse({"status": "closed"}, status_code=503)
        return {"status": "ok"}

    @app.get("/v1/models")
    async def models():
        return {"object": "list", "data": [{"id": name, "object": "model", "created": 0, "owned_by": "sgagent"}]}

    @app.get("/metrics")
    async def prometheus():
        return Response(metrics.text(), media_type="text/plain; version=0.0.4")

    @app.post("/v1/chat/completions")
    async def chat(req: ChatCompletionRequest, request: Request):
        check_model(req.model)
        return await chat_completions(engine, name, req, request, metrics)

    @app.post("/v1/completions")
    async def complete(req: CompletionRequest, request: Request):
        check_model(req.model)
        return await completions(engine, name, req, request, metrics)

    # SGLang's native surface: sglang-router discovers and feeds workers through it
    @app.post("/generate")
    async def native_generate(req: GenerateRequest, request: Request):
        return await generate(engine, req, request, metrics)

    for path in ("/server_info", "/get_server_info"):
        app.add_api_route(path, lambda: server_info(engine, name), methods=["GET"])
    for path in ("/model_info", "/get_model_info"):
        app.add_api_route(path, lambda: model_info(engine), methods=["GET"])
    app.add_api_route("/flush_cache", lambda: flush_cache(engine), methods=["POST", "GET"])

    return app


async def serve(engine, host: str = "127.0.0.1", port: int = 8000, **app_options) -> None:
    """Serve until cancelled (Ctrl-C). Binds to loopback unless `host` says otherwise."""
    import uvicorn

    config = uvicorn.Config(create_app(engine, **app_options), host=host, port=port, log_level="warning",
                            lifespan="off")
    await uvicorn.Server(config).serve()
