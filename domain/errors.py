"""Named failures of the domain. Only server/ maps them to gRPC status codes."""

from __future__ import annotations


class LlamagateError(Exception):
    """Base class: every error the service reports on purpose."""


class InvalidArgument(LlamagateError):
    """A request field is out of range or malformed."""


class ModelNotFound(LlamagateError):
    """The model file does not exist."""


class InvalidModel(LlamagateError):
    """The file exists but is not a usable GGUF model."""


class NoModelLoaded(LlamagateError):
    """The call needs a ready model and none is."""


class EngineNotFound(LlamagateError):
    """No llama-server binary was found; the message lists where we looked."""


class EngineFailed(LlamagateError):
    """llama-server exited, refused to start, or went away mid-request."""


class EngineRejected(LlamagateError):
    """llama-server answered a request with a client error (e.g. context too long)."""


class Superseded(LlamagateError):
    """A later load or an unload replaced this load before it finished."""
