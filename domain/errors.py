"""Named failures of the domain. Only server/ maps them to gRPC status codes."""

from __future__ import annotations


class LlamagateError(Exception):
    """Base class: every error the service reports on purpose.

    ``retry_after_s`` is set when trying again later can succeed, with how
    long to wait (the gRPC edge sends it as a RetryInfo detail).
    """

    retry_after_s: float | None = None

    def __init__(self, *args: object, retry_after_s: float | None = None) -> None:
        super().__init__(*args)
        if retry_after_s is not None:
            self.retry_after_s = retry_after_s


class InvalidArgument(LlamagateError):
    """A request field is out of range or malformed."""


class ModelNotFound(LlamagateError):
    """The model file does not exist."""


class InvalidModel(LlamagateError):
    """The file exists but is not a usable GGUF model."""


class NoModelLoaded(LlamagateError):
    """The call needs a ready model and none is."""


class NotReady(LlamagateError):
    """The model is loading or being restarted: the same call succeeds shortly."""


class Overloaded(LlamagateError):
    """Every slot is busy and the queue is full: try later or elsewhere."""


class EngineNotFound(LlamagateError):
    """No llama-server binary was found; the message lists where we looked."""


class EngineFailed(LlamagateError):
    """llama-server exited, refused to start, or went away mid-request."""


class EngineTimedOut(EngineFailed):
    """llama-server sent nothing for longer than the read timeout."""


class EngineRejected(LlamagateError):
    """llama-server answered a request with a client error (a bad field, an unsupported feature)."""


class ContextExceeded(LlamagateError):
    """The conversation does not fit the context a slot of the loaded model holds."""

    def __init__(self, message: str, *, prompt_tokens: int = 0, context_length: int = 0) -> None:
        super().__init__(message)
        self.prompt_tokens = prompt_tokens
        self.context_length = context_length


class Superseded(LlamagateError):
    """A later load or an unload replaced this load before it finished."""


class Aborted(LlamagateError):
    """The service ended a generation on purpose: its model was unloaded or replaced."""


class Cancelled(LlamagateError):
    """Work stopped because whoever asked for it went away."""


class Internal(LlamagateError):
    """A bug: something failed that no rule foresaw. The message says what."""
