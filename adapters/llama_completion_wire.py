"""llama-server's raw completion and tokenizer JSON (``/completion``,
``/tokenize``, ``/detokenize``): the speech path's wire format (SPEC §16).

A streamed ``/completion`` sends one JSON object per token batch with the
ids in ``tokens`` (``return_tokens``), and ends with an object whose
``stop`` is true: no ``[DONE]`` line (tools/server/server-context.cpp).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

from llamagate.adapters.llama_chat_wire import json_dict, json_int, sampling_json, timings_json
from llamagate.domain.chat import FinishReason, Usage
from llamagate.domain.speech import TokenCall, TokenChunk

COMPLETION_PATH = "/completion"
TOKENIZE_PATH = "/tokenize"
DETOKENIZE_PATH = "/detokenize"

# llama-server's stop_type → why the generation ended.
_STOP_TYPES = {"eos": FinishReason.STOP, "word": FinishReason.STOP, "limit": FinishReason.LENGTH}


def completion_body(call: TokenCall) -> dict[str, object]:
    body: dict[str, object] = {
        "prompt": call.prompt,
        "stream": True,
        "return_tokens": True,
        "return_progress": True,  # as for chat: a cancel during a long prompt is noticed at the next decode
        "n_predict": call.max_tokens,
        **sampling_json(call.sampling),
    }
    if call.stop:
        body["stop"] = list(call.stop)
        # A stop string that is a control token's (<custom_token_2>) matches
        # only when that token's text is kept: llama-server writes control
        # tokens as "" otherwise. Strings of several tokens are ignored there.
        body["preserved_tokens"] = list(call.stop)
    if call.grammar:
        body["grammar"] = call.grammar
    return body


def token_chunk(payload: Mapping[str, object]) -> tuple[TokenChunk, bool]:
    """A streamed object → its chunk, and whether it is the last one."""
    tokens = tuple(t for t in _ints(payload.get("tokens")))
    if payload.get("stop") is not True:
        return TokenChunk(tokens), False
    stop_type = payload.get("stop_type")
    finish = _STOP_TYPES.get(stop_type, FinishReason.STOP) if isinstance(stop_type, str) else FinishReason.STOP
    prompt, made = json_int(payload.get("tokens_evaluated")), json_int(payload.get("tokens_predicted"))
    usage = Usage(prompt_tokens=prompt, completion_tokens=made, total_tokens=prompt + made,
                  cached_prompt_tokens=json_int(payload.get("tokens_cached")))
    return TokenChunk(tokens, finish, usage, timings_json(payload.get("timings"))), True


def tokenize_body(text: str) -> dict[str, object]:
    return {"content": text, "add_special": False, "parse_special": True}


def detokenize_body(tokens: Sequence[int]) -> dict[str, object]:
    return {"tokens": list(tokens)}


def tokens_from_json(payload: object) -> list[int] | None:
    """``/tokenize``'s ids; None when the answer has none."""
    tokens = json_dict(payload).get("tokens")
    return _ints(tokens) if isinstance(tokens, list) else None


def text_from_json(payload: object) -> str | None:
    content = json_dict(payload).get("content")
    return content if isinstance(content, str) else None


def _ints(value: object) -> list[int]:
    if not isinstance(value, list):
        return []
    return [v for v in value if isinstance(v, int) and not isinstance(v, bool)]
