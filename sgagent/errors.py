"""Typed errors raised to users. Every failure a caller can cause has its own class."""


class SgagentError(Exception):
    """Base of every error sgagent raises on purpose."""


class ModelNotFoundError(SgagentError, FileNotFoundError):
    pass


class UnsupportedArchitectureError(SgagentError, ValueError):
    pass


class PromptTooLongError(SgagentError, ValueError):
    pass


class InvalidSamplingParamsError(SgagentError, ValueError):
    pass


class EngineClosedError(SgagentError, RuntimeError):
    pass


class RequestAbortedError(SgagentError, RuntimeError):
    """The engine dropped a request (engine shut down, or an internal failure on its step)."""


class ConstraintError(SgagentError, ValueError):
    """A constraint (regex, JSON schema, choices, grammar) cannot be compiled."""


class InvalidRegexError(ConstraintError):
    pass


class UnsupportedSchemaError(ConstraintError):
    pass


class InvalidGrammarError(ConstraintError):
    """A Lark grammar given to gen(grammar=...) does not parse or cannot be compiled."""


class IncompleteGenerationError(SgagentError, RuntimeError):
    """A constrained generation stopped (max_tokens) before its constraint was complete."""

    def __init__(self, message: str, text: str = ""):
        super().__init__(message)
        self.text = text


class InvalidPromptError(SgagentError, ValueError):
    """An empty prompt, or both/neither of prompt and messages given."""


class ToolError(SgagentError):
    """Base of tool-related errors."""


class ToolDefinitionError(ToolError, TypeError):
    """A function cannot become a tool (a parameter without a type hint, *args, a name clash)."""


class _PlainKeyError(KeyError):
    """A KeyError whose message prints as written (KeyError alone prints the repr of its argument)."""

    def __str__(self) -> str:
        return str(self.args[0]) if self.args else ""


class UnknownToolError(ToolError, _PlainKeyError):
    """A call named a tool that is not offered."""


class ToolArgumentsError(ToolError, ValueError):
    """Arguments for a tool failed validation against its signature; the tool was not called."""


class AgentError(SgagentError):
    """Base of actor-runtime errors."""


class AgentNotFoundError(AgentError, _PlainKeyError):
    """No agent lives at the address."""


class AgentStoppedError(AgentError, RuntimeError):
    """The agent stopped (or its runtime shut down) before it handled the message."""


class AgentFailedError(AgentError, RuntimeError):
    """An agent failed under the escalate policy, or past its restart limit; raised out of the runtime."""


class RemoteError(SgagentError, RuntimeError):
    """A remote endpoint failed (after retries) or answered with an error that is not the request's fault."""

    def __init__(self, message: str, status: int | None = None):
        super().__init__(message)
        self.status = status


class InvalidImageError(SgagentError, ValueError):
    """Image input that is not an image: a corrupt or non-image file, an unreadable source, a refused URL."""


class ImageTooLargeError(InvalidImageError):
    """An image with more pixels than the configured limit (sgagent.image's max_pixels, the engine's
    max_image_pixels)."""


class UnsupportedInputError(SgagentError, ValueError):
    """Input the model cannot take: an image for a text-only model, more images than the model accepts."""
