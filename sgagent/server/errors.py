"""Errors in the OpenAI shape: {"error": {"message", "type", "param", "code"}} with a 4xx/5xx status."""

from __future__ import annotations

from fastapi import Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse

from ..errors import (ConstraintError, EngineClosedError, InvalidImageError, InvalidPromptError,
                      InvalidSamplingParamsError, PromptTooLongError, SgagentError, UnsupportedInputError)


class APIError(Exception):
    def __init__(self, status: int, message: str, type_: str = "invalid_request_error", param: str | None = None,
                 code: str | None = None):
        super().__init__(message)
        self.status, self.message, self.type, self.param, self.code = status, message, type_, param, code

    def response(self) -> JSONResponse:
        return JSONResponse({"error": {"message": self.message, "type": self.type, "param": self.param,
                                       "code": self.code}}, status_code=self.status)


def from_engine(e: SgagentError) -> APIError:
    """The API error for an engine error raised by a request's own input."""
    if isinstance(e, PromptTooLongError):
        return APIError(400, str(e), param="messages", code="context_length_exceeded")
    if isinstance(e, ConstraintError):
        return APIError(400, str(e), param="response_format", code="invalid_constraint")
    if isinstance(e, (InvalidImageError, UnsupportedInputError)):
        return APIError(400, str(e), param="messages", code="invalid_image")
    if isinstance(e, (InvalidPromptError, InvalidSamplingParamsError)):
        return APIError(400, str(e))
    if isinstance(e, EngineClosedError):
        return APIError(503, str(e), type_="server_error", code="shutting_down")
    return APIError(500, f"{type(e).__name__}: {e}", type_="server_error")


def install(app) -> None:
    @app.exception_handler(APIError)
    async def _api(_: Request, e: APIError):
        return e.response()

    @app.exception_handler(SgagentError)
    async def _engine(_: Request, e: SgagentError):
        return from_engine(e).response()

    @app.exception_handler(RequestValidationError)
    async def _invalid(_: Request, e: RequestValidationError):
        first = e.errors()[0] if e.errors() else {}
        where = ".".join(str(x) for x in first.get("loc", ())[1:]) or None
        return APIError(400, f"invalid request: {where}: {first.get('msg', 'bad value')}", param=where).response()
