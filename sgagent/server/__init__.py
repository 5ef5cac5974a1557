"""An OpenAI-compatible server over the embedded engine: `sgagent serve`, or `create_app(engine)` for ASGI."""

from .app import create_app, serve
from .background import LiveServer, free_port, start
from .process import ServerProcess

__all__ = ["LiveServer", "ServerProcess", "create_app", "free_port", "serve", "start"]
