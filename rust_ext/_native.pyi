"""Type stub of ``rust_ext._native``, the Rust extension (rust_ext/src/python.rs).

Result of a complete scan (``"complete": True``)::

    version           int            1, 2 or 3
    tensor_count      int
    kv_count          int
    alignment         int            general.alignment, else 32
    architecture      str | None     general.architecture
    metadata          dict[str, int | float | bool | str]
                                     every scalar key-value pair, in file order
                                     (float32 values widened to float)
    arrays            dict[str, {"type": str, "length": int, "values": list | None}]
                                     every array: element type name ("uint8",
                                     "int8", "uint16", "int16", "uint32", "int32",
                                     "float32", "bool", "string", "uint64",
                                     "int64", "float64" or "array"), length, and
                                     the elements when asked for with
                                     array_values (nested arrays: lists of lists)
    chat_template     str | None     tokenizer.chat_template
    split             {"count", "no", "tensors_count": int | None} | None
                                     split.count, split.no, split.tensors.count
    header_size       int            where the tensor data starts: the end of the
                                     tensor infos, padded to the alignment
    tensor_data_size  int            sum of the tensor sizes, each padded to the
                                     alignment
    tensors           list[{"name": str, "shape": list[int], "type": int,
                            "offset": int, "n_bytes": int}] | None
                                     with tensors=True: shape in GGUF order
                                     (ne[0] first), ggml type id, data offset
                                     relative to header_size, size in bytes
    model             dict           what planning needs, typed: the one reader
                                     of the ARCH.* hyperparameter keys (ARCH =
                                     architecture); None when the key is absent
                                     (absent is not 0). int:
                                       context_length, block_count,
                                       nextn_predict_layers, embedding_length,
                                       key_length, value_length, key_length_swa,
                                       value_length_swa, sliding_window,
                                       full_attention_interval, shared_kv_layers,
                                       kv_lora_rank, key_length_mla,
                                       value_length_mla, indexer_key_length,
                                       ssm_conv_kernel, ssm_inner_size,
                                       ssm_state_size, ssm_group_count,
                                       wkv_head_size, token_shift_count,
                                       shortconv_l_cache, kda_head_dim,
                                       expert_count, vocab_size (ARCH.vocab_size,
                                       else the length of tokenizer.ggml.tokens),
                                       file_type (general.file_type)
                                     int, or list[int] per layer:
                                       head_count, head_count_kv,
                                       feed_forward_length, expert_used_count,
                                       recurrent_layers and indexer_types (0/1
                                       flags; a bool array reads as 0/1)
                                     int period, or list[bool] per layer (True =
                                     sliding): sliding_window_pattern
                                     The field is the key with "attention."
                                     dropped and dots made underscores
                                     (ARCH.attention.indexer.types ->
                                     indexer_types, ARCH.wkv.head_size ->
                                     wkv_head_size). Per-layer arrays are read
                                     for these fields whatever array_values says
                                     (more than 65536 values is a GGUFError).

``scan_bytes`` on a prefix of a longer header returns
``{"complete": False, "bytes_needed": N}``: fetch at least N more bytes
(N > 0) and scan the longer prefix again.
"""

from collections.abc import Collection
from os import PathLike
from typing import Any, Literal, TypeAlias

__version__: str

class GGUFError(ValueError):
    """Malformed GGUF data. ``str(e)`` is "GGUF error at byte N: reason";
    a file that is not GGUF at all says "not a GGUF file"."""

    offset: int
    """The byte offset in the data where the problem was found."""

def scan_file(
    path: str | PathLike[str],
    *,
    tensors: bool = False,
    array_values: bool | Collection[str] = False,
) -> dict[str, Any]:
    """Scan the GGUF header of a file, seeking past what it does not need
    (array elements are read only for the keys in ``array_values``, or all
    with ``True``). The GIL is released while scanning.

    Raises GGUFError on malformed data (a hyperparameter key of a type it
    cannot use included, naming the key), a truncated header, or tensor data
    that would end past the end of the file; OSError (FileNotFoundError...)
    when the file cannot be read."""

def scan_bytes(
    data: bytes | bytearray | memoryview,
    *,
    tensors: bool = False,
    array_values: bool | Collection[str] = False,
) -> dict[str, Any]:
    """Scan a GGUF header held in memory: the whole file or a prefix of it.
    ``bytes`` are scanned in place; other buffers are copied first. The GIL
    is released while scanning.

    Returns ``{"complete": False, "bytes_needed": N}`` for a prefix that ends
    before the tensor infos do; raises GGUFError on malformed data."""

TextEvent: TypeAlias = tuple[Literal["text"], str]
"""Visible text; never markup the parser took as a call."""
ReasoningEvent: TypeAlias = tuple[Literal["reasoning"], str]
"""Text inside ``<think>``...``</think>``."""
StartEvent: TypeAlias = tuple[Literal["start"], int, str, str]
"""``("start", index, id, name)``: a call begins; index 0, 1, 2... in stream
order; ``id == f"{id_prefix}{index}"``."""
ArgsEvent: TypeAlias = tuple[Literal["args"], int, str]
"""``("args", index, delta)``: a piece of the call's arguments JSON."""
EndEvent: TypeAlias = tuple[Literal["end"], int, str | None]
"""``("end", index, reason)``: the call ended; reason None when it was closed
properly, else why it was recovered ("missing </tool_call>", "missing
</parameter>", "missing </function>", "stream ended", "next <tool_call> began",
"next <function= began", "unclosed JSON", "malformed JSON", "missing name",
...)."""
Event: TypeAlias = TextEvent | ReasoningEvent | StartEvent | ArgsEvent | EndEvent

class ToolCallParseError(ValueError):
    """A cap of the tool-call parser was exceeded (``str(e)`` says which:
    max_buffer, max_depth or max_calls), or the parser was used after
    ``finish()``. The parser is finished afterwards."""

class ToolCallParser:
    """Incremental tool-call parser, one per stream of model output
    (rust_ext/src/toolcall/: formats, recovery and the reasoning policy are
    documented there).

    Formats: Hermes / Qwen2.5 JSON (``<tool_call>{"name": ..., "arguments":
    {...}}</tool_call>``; "parameters" too; arguments as an object or as a
    string holding JSON), Qwen3-Coder XML (``<tool_call><function=NAME>
    <parameter=KEY>VALUE</parameter></function></tool_call>``, arguments
    built as ``{"KEY": "VALUE", ...}``) and a bare ``<function=...>`` block.
    Markup inside ``<think>`` is reasoning, not calls.

    Laws: any chunking gives the same events once adjacent "text", adjacent
    "reasoning" and adjacent same-call "args" events are merged; text outside
    call blocks is preserved exactly (only whitespace between two calls is
    dropped); each call's "args" deltas
    concatenate to a JSON object (recovered calls are closed where they
    broke off); only a tail that could still start a marker is held back
    (plus whitespace right after a call); work is linear in the stream."""

    def __init__(
        self,
        *,
        max_buffer: int = 1 << 20,
        max_calls: int = 64,
        max_depth: int = 64,
        id_prefix: str = "call_",
    ) -> None:
        """Caps: ``max_buffer`` bytes held back or buffered by any one
        buffer (e.g. arguments that come before the call's name),
        ``max_calls`` calls per stream, ``max_depth`` levels of JSON nesting."""

    def feed(self, chunk: str) -> list[Event]:
        """The events ``chunk`` completes, in order. Raises
        ToolCallParseError when a cap is exceeded or after ``finish()``."""

    def finish(self) -> list[Event]:
        """Flushes held-back text and closes what is open (the calls' "end"
        says why); afterwards ``feed`` and ``finish`` raise."""
