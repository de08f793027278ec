"""Embeddings and rerank scores: the requests, their answers, and the rules
both obey before anything is sent to a model loaded for them.

Every bad field is named by its path ("texts[3]", "documents[2]", "top_n"),
as ``request_checks`` does for chat requests.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

from llamagate.domain.errors import InvalidArgument

MAX_INPUTS = 2048  # texts, or documents, in one request
MAX_INPUT_BYTES = 1 << 20  # of UTF-8, per text, query or document


@dataclass(frozen=True)
class EmbedRequest:
    texts: tuple[str, ...]
    normalize: bool = True  # each vector scaled to euclidean norm 1


@dataclass(frozen=True)
class Embeddings:
    vectors: tuple[tuple[float, ...], ...]  # one per text, in the request's order
    prompt_tokens: int  # all texts together


@dataclass(frozen=True)
class RerankRequest:
    query: str
    documents: tuple[str, ...]
    top_n: int = 0  # the best this many; 0 = all


@dataclass(frozen=True)
class RerankResult:
    index: int  # of the document in the request
    score: float  # higher is more relevant; only comparable within one model


@dataclass(frozen=True)
class Ranking:
    results: tuple[RerankResult, ...]  # by score, best first; equal scores by index
    prompt_tokens: int  # every (query, document) pair together


def check_embed(request: EmbedRequest) -> None:
    """Raise InvalidArgument naming the first bad field."""
    _check_inputs(request.texts, "texts", "text")


def check_rerank(request: RerankRequest) -> None:
    """Raise InvalidArgument naming the first bad field."""
    _check_text(request.query, "query", "the query")
    _check_inputs(request.documents, "documents", "document")
    if not 0 <= request.top_n <= len(request.documents):
        raise InvalidArgument(f"must be 0 (all) or 1..{len(request.documents)} (the number of documents), "
                              f"got {request.top_n}", field="top_n")


def rank(scores: Sequence[float]) -> tuple[RerankResult, ...]:
    """Each score with its index, best first; equal scores keep their order
    (by index), and a NaN (a broken model) ranks below every number."""
    def key(index: int) -> tuple[bool, float, int]:
        score = scores[index]
        return math.isnan(score), -score if not math.isnan(score) else 0.0, index

    return tuple(RerankResult(i, scores[i]) for i in sorted(range(len(scores)), key=key))


def _check_inputs(items: Sequence[str], field: str, noun: str) -> None:
    if not items:
        raise InvalidArgument(f"at least one {noun} is required", field=field)
    if len(items) > MAX_INPUTS:
        raise InvalidArgument(f"at most {MAX_INPUTS} {noun}s per request, got {len(items)}: split the request",
                              field=field)
    for i, item in enumerate(items):
        _check_text(item, f"{field}[{i}]", f"a {noun}")


def _check_text(text: str, field: str, what: str) -> None:
    # llama-server aborts on an empty input in places (an empty query and
    # document to rerank), and a vector of nothing means nothing.
    if not text:
        raise InvalidArgument(f"{what} must not be empty", field=field)
    # Characters are 1 to 4 bytes of UTF-8: encode only where the count could cross.
    if len(text) * 4 > MAX_INPUT_BYTES and (size := len(text.encode("utf-8", "surrogatepass"))) > MAX_INPUT_BYTES:
        raise InvalidArgument(f"{what} may hold at most {MAX_INPUT_BYTES >> 20} MiB of UTF-8, got {size} bytes",
                              field=field)
