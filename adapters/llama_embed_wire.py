"""llama-server's embedding and rerank JSON: the bodies we send, the answers
we read (tools/server/server-context.cpp: handle_embeddings_impl, post_rerank;
server-common.cpp: format_embeddings_response_oaicompat, format_response_rerank).

``POST /v1/embeddings`` takes ``{"input": [text, ...], "encoding_format",
"embd_normalize"}`` (-1: as the model pooled it; 2: euclidean norm 1) and
answers ``{"data": [{"index", "embedding"}], "usage": {"prompt_tokens"}}``.
``POST /v1/rerank`` takes ``{"query", "documents"}`` and answers
``{"results": [{"index", "relevance_score"}], "usage": {"prompt_tokens"}}``.
"""

from __future__ import annotations

import array
import base64
import binascii
import math
import re
from collections.abc import Mapping, Sequence

from llamagate.adapters.llama_chat_wire import json_dict, json_int, json_str
from llamagate.domain.embeddings import Embeddings, Ranking, RerankRequest, rank
from llamagate.domain.errors import ContextExceeded, EngineFailed, EngineRejected, LlamagateError

EMBEDDINGS_PATH = "/v1/embeddings"
RERANK_PATH = "/v1/rerank"

# A request goes to llama-server in parts of at most this many inputs and
# characters: its answer comes whole, after the last input, so each part must
# finish within the read timeout (2,048 texts of a few thousand tokens would
# not on a CPU); a cancel also takes effect between parts. 16 Ki characters
# are ~4k tokens: well within the timeout for SmolLM2 on two busy cores
# (~100 prompt tokens/s measured there, in embedding and chat mode alike).
CHUNK_INPUTS = 64
CHUNK_CHARS = 16 << 10

_NORMALIZE = {True: 2, False: -1}  # llama-server's embd_normalize: 2 euclidean, -1 none
# A pooled input is decoded whole, in one physical batch; a longer one is
# refused with this server_error (server-context.cpp, "is too large to process").
_TOO_LARGE = re.compile(r"input \((\d+) tokens\) is too large to process.*current batch size: (\d+)", re.DOTALL)


def chunks(sizes: Sequence[int]) -> list[range]:
    """Consecutive index ranges covering ``sizes`` (each input's characters),
    each within CHUNK_INPUTS and CHUNK_CHARS, or a single input."""
    parts: list[range] = []
    start, chars = 0, 0
    for i, size in enumerate(sizes):
        if i > start and (i - start >= CHUNK_INPUTS or chars + size > CHUNK_CHARS):
            parts.append(range(start, i))
            start, chars = i, 0
        chars += size
    if start < len(sizes):
        parts.append(range(start, len(sizes)))
    return parts


def embed_body(texts: Sequence[str], *, normalize: bool) -> dict[str, object]:
    # base64: float32 bytes, exact and parsed in a fraction of the time
    # thousands of decimal numbers take.
    return {"input": list(texts), "encoding_format": "base64", "embd_normalize": _NORMALIZE[normalize]}


def rerank_body(query: str, documents: Sequence[str]) -> dict[str, object]:
    # No top_n: llama-server's default is all of them (its 0 means none); the
    # caller's top_n is applied after our own, deterministic, ordering.
    return {"query": query, "documents": list(documents)}


def embeddings_from_json(payload: object, count: int) -> Embeddings:
    """The ``count`` vectors of an answer, in input order. Raises EngineFailed
    when it is not the answer asked for."""
    root = json_dict(payload)
    data = root.get("data")
    if not isinstance(data, list) or len(data) != count:
        raise EngineFailed(f"llama-server answered {count} embedding(s) with {_excerpt(root)}")
    vectors: list[tuple[float, ...] | None] = [None] * count
    for item in data:
        entry = json_dict(item)
        index = _index(entry.get("index"), count, vectors)
        vectors[index] = _vector(entry.get("embedding"))
    widths = {len(v) for v in vectors if v is not None}
    if len(widths) != 1 or 0 in widths:
        raise EngineFailed(f"llama-server answered embeddings of widths {sorted(widths)}, not one width")
    return Embeddings(tuple(v for v in vectors if v is not None), _prompt_tokens(root))


def ranking_from_json(payload: object, count: int) -> Ranking:
    """The scores of all ``count`` documents, ranked by ``rank``. Raises
    EngineFailed when it is not the answer asked for."""
    root = json_dict(payload)
    results = root.get("results")
    if not isinstance(results, list) or len(results) != count:
        raise EngineFailed(f"llama-server answered {count} document(s) to rerank with {_excerpt(root)}")
    scores: list[float | None] = [None] * count
    for item in results:
        entry = json_dict(item)
        scores[_index(entry.get("index"), count, scores)] = _score(entry.get("relevance_score"))
    return Ranking(rank([s for s in scores if s is not None]), _prompt_tokens(root))


def merge_embeddings(parts: Sequence[Embeddings]) -> Embeddings:
    return Embeddings(tuple(v for p in parts for v in p.vectors), sum(p.prompt_tokens for p in parts))


def merge_rankings(parts: Sequence[tuple[int, Ranking]], request: RerankRequest) -> Ranking:
    """Parts answered for documents from each offset: one ranking of all, cut to ``top_n``."""
    scores = [0.0] * len(request.documents)
    for offset, part in parts:
        for result in part.results:
            scores[offset + result.index] = result.score
    ranked = rank(scores)
    return Ranking(ranked[: request.top_n or None], sum(p.prompt_tokens for _, p in parts))


def embedding_error(payload: object) -> LlamagateError | None:
    """The domain error for what only these endpoints answer, else None."""
    fields = json_dict(json_dict(payload).get("error"))
    message = json_str(fields.get("message"))
    if (found := _TOO_LARGE.search(message)) is not None:
        needed, most = int(found.group(1)), int(found.group(2))
        return ContextExceeded(
            f"an input needs {needed} tokens; the loaded model takes at most {most} at once (its batch, which is at "
            f"most a slot's context): shorten the input, or load with a larger batch_size or context_length",
            prompt_tokens=needed, context_length=most)
    if "Pooling type 'none'" in message:  # the model's own pooling, when the load named none
        return EngineRejected("the model pools no tokens by itself, so it has no vector per text: load it with "
                              "options.pooling mean, cls or last")
    return None


def _index(raw: object, count: int, seen: Sequence[object | None]) -> int:
    index = raw if isinstance(raw, int) and not isinstance(raw, bool) else -1
    if not 0 <= index < count or seen[index] is not None:
        raise EngineFailed(f"llama-server answered index {raw!r} for {count} input(s), or twice")
    return index


def _vector(raw: object) -> tuple[float, ...]:
    if isinstance(raw, str):  # base64 of float32 in the engine's byte order: ours, it runs on this machine
        try:
            return tuple(array.array("f", base64.b64decode(raw, validate=True)))
        except (binascii.Error, ValueError) as error:  # ValueError: not a whole number of floats
            raise EngineFailed(f"llama-server answered an embedding that is not base64 float32: {error}") from error
    if isinstance(raw, list) and all(isinstance(x, (int, float)) and not isinstance(x, bool) for x in raw):
        return tuple(float(x) for x in raw)
    raise EngineFailed(f"llama-server answered an embedding that is not a vector: {_excerpt(raw)}")


def _score(raw: object) -> float:
    if raw is None:  # llama-server's JSON writes a NaN as null
        return math.nan
    if isinstance(raw, (int, float)) and not isinstance(raw, bool):
        return float(raw)
    raise EngineFailed(f"llama-server answered a relevance score that is not a number: {_excerpt(raw)}")


def _prompt_tokens(root: Mapping[str, object]) -> int:
    return max(json_int(json_dict(root.get("usage")).get("prompt_tokens")), 0)


def _excerpt(value: object) -> str:
    return repr(value)[:300]
