"""An OpenAI-compatible server over the embedded engine: `sgagent serve`, or `create_app(engine)` for ASGI."""

from .app import create_app, serve

__all__ = ["create_app", "serve"]
