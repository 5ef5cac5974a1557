"""structlog set-up shared by the package: one logger factory, context bound per program/agent/request."""

import structlog

_configured = False


def get_logger(name: str = "sgagent", **context):
    global _configured
    if not _configured and not structlog.is_configured():
        structlog.configure(
            wrapper_class=structlog.make_filtering_bound_logger(20),  # INFO and up by default
            processors=[
                structlog.contextvars.merge_contextvars,
                structlog.processors.add_log_level,
                structlog.processors.TimeStamper(fmt="iso"),
                structlog.dev.ConsoleRenderer(colors=False),
            ],
        )
        _configured = True
    return structlog.get_logger(name).bind(**context)
