"""Named failures of the domain. Only server/ maps them to gRPC status codes."""

from __future__ import annotations


class LlamagateError(Exception):
    """Base class: every error the service reports on purpose.

    ``reason`` is a stable name a client can branch on (the gRPC edge sends
    it as an ErrorInfo detail). ``retry_after_s`` is set when trying again
    later can succeed, with how long to wait (a RetryInfo detail).
    """

    reason: str = "INTERNAL"
    retry_after_s: float | None = None

    def __init__(self, *args: object, retry_after_s: float | None = None) -> None:
        super().__init__(*args)
        if retry_after_s is not None:
            self.retry_after_s = retry_after_s

    @property
    def metadata(self) -> dict[str, str]:
        """Numbers behind the error a client may act on (ErrorInfo metadata)."""
        return {}


class InvalidArgument(LlamagateError):
    """A request field is out of range or malformed.

    ``field`` is the field's path in the request ("sampling.temperature",
    "messages[2].parts[0]"); the message then starts with it.
    """

    reason = "INVALID_ARGUMENT"

    def __init__(self, message: str, *, field: str = "") -> None:
        super().__init__(f"{field}: {message}" if field else message)
        self.field = field
        self.description = message


class ModelNotFound(LlamagateError):
    """The model file does not exist."""

    reason = "MODEL_NOT_FOUND"


class InvalidModel(LlamagateError):
    """The file exists but is not a usable GGUF model."""

    reason = "INVALID_MODEL"


class PermissionDenied(LlamagateError):
    """Someone else's rules refuse the request: a gated repo, a token the Hub
    refused, a model file outside the directories the service may load from."""

    reason = "PERMISSION_DENIED"


class Unauthenticated(LlamagateError):
    """The call came without a token the service accepts (missing, malformed or wrong: one answer for all)."""

    reason = "UNAUTHENTICATED"


class NotCached(LlamagateError):
    """Offline, and the local cache lacks what the request names."""

    reason = "NOT_CACHED"


class SourceUnavailable(LlamagateError):
    """The place a model comes from (the Hub) could not be reached or failed;
    trying again later can succeed."""

    reason = "SOURCE_UNAVAILABLE"
    retry_after_s = 5.0


class InsufficientResources(LlamagateError):
    """A model does not fit what the machine has (disk for its download,
    memory for its weights); ``needed`` and ``available`` are bytes, ``where``
    names the directory or the memory."""

    def __init__(self, message: str, *, reason: str, needed: int, available: int, where: str) -> None:
        super().__init__(message)
        self.reason = reason
        self.needed, self.available, self.where = needed, available, where

    @property
    def metadata(self) -> dict[str, str]:
        return {"needed_bytes": str(self.needed), "available_bytes": str(self.available), "where": self.where}


class NoModelLoaded(LlamagateError):
    """The call needs a ready model and none is."""

    reason = "NO_MODEL_LOADED"


class NotReady(LlamagateError):
    """The model is loading or being restarted: the same call succeeds shortly."""

    reason = "MODEL_NOT_READY"


class Overloaded(LlamagateError):
    """Every slot is busy and the queue is full: try later or elsewhere."""

    reason = "QUEUE_FULL"


class EngineNotFound(LlamagateError):
    """No llama-server binary was found; the message lists where we looked."""

    reason = "ENGINE_NOT_FOUND"


class EngineFailed(LlamagateError):
    """llama-server exited, refused to start, or went away mid-request."""

    reason = "ENGINE_FAILED"


class EngineTimedOut(EngineFailed):
    """llama-server sent nothing for longer than the read timeout."""


class EngineRejected(LlamagateError):
    """llama-server answered a request with a client error (a bad field, an unsupported feature)."""

    reason = "ENGINE_REJECTED"


class ContextExceeded(LlamagateError):
    """The conversation does not fit the context a slot of the loaded model holds."""

    reason = "CONTEXT_EXCEEDED"

    def __init__(self, message: str, *, prompt_tokens: int = 0, context_length: int = 0) -> None:
        super().__init__(message)
        self.prompt_tokens = prompt_tokens
        self.context_length = context_length

    @property
    def metadata(self) -> dict[str, str]:
        numbers = {"prompt_tokens": self.prompt_tokens, "context_length": self.context_length}
        return {k: str(v) for k, v in numbers.items() if v > 0}


class TemplateError(LlamagateError):
    """A chat template did not render: a syntax error, a failure it raised
    itself, or rendering past the size or time allowed."""

    reason = "TEMPLATE_ERROR"


class RequestTooLarge(LlamagateError):
    """A request larger than the service accepts (its message size limit)."""

    reason = "REQUEST_TOO_LARGE"


class ReplyUnparsable(LlamagateError):
    """The model's reply broke the tool-call parser's limits (its size, nesting or number of calls)."""

    reason = "REPLY_UNPARSABLE"


class Superseded(LlamagateError):
    """A later load or an unload replaced this load before it finished."""

    reason = "SUPERSEDED"


class Aborted(LlamagateError):
    """The service ended a generation on purpose: its model was unloaded or replaced."""

    reason = "ABORTED"


class Cancelled(LlamagateError):
    """Work stopped because whoever asked for it went away."""

    reason = "CANCELLED"


class Internal(LlamagateError):
    """A bug: something failed that no rule foresaw. The message says what."""

    reason = "INTERNAL"


class WrongMode(LlamagateError):
    """The loaded model serves another kind of request: chat on a model
    loaded for embeddings or reranking, or embeddings on a chat model."""

    reason = "WRONG_MODEL_MODE"


class NotSpeechModel(LlamagateError):
    """Synthesis asked of a model that emits no audio codec llamagate decodes
    (a text model, a whisper-style audio-input model, CSM)."""

    reason = "NOT_A_SPEECH_MODEL"


class DecoderUnavailable(LlamagateError):
    """The audio codec's decoder cannot run here: its file is not in the Hub
    cache nor at the configured path, or the runtime (onnxruntime, the
    ``llamagate[tts]`` extra) is missing. The message says what to fetch or install."""

    reason = "DECODER_UNAVAILABLE"


class _WorkerError(LlamagateError):
    """A failure that one RPC worker's address explains (ErrorInfo metadata ``worker``)."""

    def __init__(self, message: str, *, address: str = "") -> None:
        super().__init__(message)
        self.address = address

    @property
    def metadata(self) -> dict[str, str]:
        return {"worker": self.address} if self.address else {}


class WorkerUnavailable(_WorkerError):
    """An RPC worker a model needs cannot be reached, or serves another client
    now (it takes one at a time); trying again later can succeed."""

    reason = "RPC_WORKER_UNAVAILABLE"
    retry_after_s = 1.0


class WorkerUnusable(_WorkerError):
    """An RPC worker that retrying will not make usable: another model of this
    service holds it, or it speaks another protocol version than our engine."""

    reason = "RPC_WORKER_UNUSABLE"
