"""One OpenAI-compatible endpoint: pooled async HTTP, retries with backoff, API errors as sgagent errors."""

from __future__ import annotations

import asyncio
import json
import random
from collections.abc import AsyncIterator

import httpx

from ..errors import (ConstraintError, InvalidPromptError, PromptTooLongError, RemoteError)
from ..log import get_logger

RETRY_STATUS = {429, 500, 502, 503, 504}


def api_error(status: int, body: str) -> Exception:
    """The sgagent error for an endpoint's error answer (OpenAI shape, or whatever text it sent)."""
    try:
        err = json.loads(body).get("error") or {}
        if isinstance(err, str):
            err = {"message": err}
    except (ValueError, AttributeError):
        err = {"message": body[:300]}
    message, code = str(err.get("message", "")), err.get("code")
    if code == "context_length_exceeded" or "context length" in message or "maximum context" in message:
        return PromptTooLongError(message)
    if (code == "invalid_constraint" or err.get("param") in ("response_format", "regex", "guided_regex", "guided_json")
            or message.startswith("Grammar error")):  # vLLM's structured-output compile errors
        return ConstraintError(message)
    if status == 400:
        return InvalidPromptError(message)
    return RemoteError(f"HTTP {status}: {message}", status)


class Replica:
    def __init__(self, base_url: str, *, api_key: str | None = None, timeout: float = 600.0, retries: int = 3,
                 backoff: float = 0.25, max_connections: int = 256, transport: httpx.AsyncBaseTransport | None = None):
        self.base_url = base_url.rstrip("/")
        headers = {"Authorization": f"Bearer {api_key}"} if api_key else {}
        limits = httpx.Limits(max_connections=max_connections, max_keepalive_connections=max_connections)
        self.client = httpx.AsyncClient(base_url=self.base_url, headers=headers, limits=limits,
                                        timeout=httpx.Timeout(timeout, connect=10.0), transport=transport)
        self.retries, self.backoff = retries, backoff
        self.in_flight = 0
        self.log = get_logger("sgagent.remote").bind(endpoint=self.base_url)

    async def aclose(self) -> None:
        await self.client.aclose()

    @property
    def root(self) -> str:
        """The server's root, where SGLang's native API lives (the base URL without its /v1)."""
        return self.base_url[:-3] if self.base_url.endswith("/v1") else self.base_url

    async def post_native(self, path: str, body: dict):
        return await self.post(self.root + path, body)

    def events_native(self, path: str, body: dict) -> AsyncIterator[dict]:
        return self.events(self.root + path, body)

    async def speaks_native(self) -> bool:
        """Whether the endpoint answers SGLang's model_info (SGLang, sgagent, sglang-router in front of them)."""
        for path in ("/model_info", "/get_model_info"):
            try:
                r = await self.client.get(self.root + path)
            except httpx.HTTPError:
                return False
            if r.status_code == 200:
                try:
                    info = r.json()
                except ValueError:
                    return False
                return isinstance(info, dict) and "model_path" in info
        return False

    async def _retrying(self, send):
        for attempt in range(self.retries + 1):
            try:
                r = await send()
            except (httpx.TransportError, httpx.TimeoutException) as e:
                if attempt == self.retries:
                    raise RemoteError(f"{self.base_url}: {type(e).__name__}: {e}") from e
                self.log.info("remote.retry", attempt=attempt + 1, error=type(e).__name__)
            else:
                if r.status_code < 400:
                    return r
                body = (await r.aread()).decode(errors="replace")
                await r.aclose()
                if r.status_code not in RETRY_STATUS or attempt == self.retries:
                    raise api_error(r.status_code, body)
                self.log.info("remote.retry", attempt=attempt + 1, status=r.status_code)
            await asyncio.sleep(self.backoff * 2**attempt * (0.5 + random.random()))

    async def get(self, path: str) -> dict:
        self.in_flight += 1
        try:
            r = await self._retrying(lambda: self.client.get(path))
            return r.json()
        finally:
            self.in_flight -= 1

    async def post(self, path: str, body: dict) -> dict:
        self.in_flight += 1
        try:
            r = await self._retrying(lambda: self.client.post(path, json=body))
            return r.json()
        finally:
            self.in_flight -= 1

    async def events(self, path: str, body: dict) -> AsyncIterator[dict]:
        """The JSON objects of a server-sent event stream (retried only before the first event arrives)."""
        self.in_flight += 1
        try:
            r = await self._retrying(lambda: self.client.send(self.client.build_request("POST", path, json=body),
                                                              stream=True))
            try:
                async for line in r.aiter_lines():
                    if not line.startswith("data:"):
                        continue
                    data = line[5:].strip()
                    if data == "[DONE]":
                        break
                    obj = json.loads(data)
                    if "error" in obj:
                        raise api_error(400 if obj["error"].get("type") == "invalid_request_error" else 500,
                                        json.dumps(obj))
                    yield obj
            finally:
                await r.aclose()
        finally:
            self.in_flight -= 1
