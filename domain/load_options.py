"""What a caller may choose about a load."""

from __future__ import annotations

import enum
from dataclasses import dataclass


class KvCacheType(enum.Enum):
    """KV cache element types, valued as ggml names them."""

    F32 = "f32"
    F16 = "f16"
    BF16 = "bf16"
    Q8_0 = "q8_0"
    Q5_1 = "q5_1"
    Q5_0 = "q5_0"
    Q4_1 = "q4_1"
    Q4_0 = "q4_0"
    IQ4_NL = "iq4_nl"


class Speculative(enum.Enum):
    """Speculative decoding without a draft model (SPEC §15)."""

    OFF = "off"
    DEFAULT = "default"
    NGRAM_SIMPLE = "ngram-simple"
    NGRAM_MOD = "ngram-mod"


class ModelMode(enum.Enum):
    """What a model is started to serve: chat completions, embeddings, or reranking scores."""

    CHAT = "chat"
    EMBEDDING = "embedding"
    RERANK = "rerank"


class Pooling(enum.Enum):
    """How token embeddings become one vector (an embedding model's pooling);
    DEFAULT is what the model's own metadata says."""

    DEFAULT = "default"
    NONE = "none"
    MEAN = "mean"
    CLS = "cls"
    LAST = "last"
    RANK = "rank"


@dataclass(frozen=True)
class LoadOptions:
    context_length: int = 0  # 0 = automatic, up to the native context
    parallel: int = 1
    cache_type: KvCacheType = KvCacheType.F16
    threads: int = 0  # 0 = the engine decides
    chat_template: str = ""
    speculative: Speculative = Speculative.OFF
    mmproj_path: str = ""
    batch_size: int = 0  # prompt tokens per decode; 0 = chosen so a cancel takes effect quickly
    mode: ModelMode = ModelMode.CHAT
    pooling: Pooling = Pooling.DEFAULT  # EMBEDDING only; RERANK always ranks
    # llama.cpp RPC workers (ggml-rpc-server) the layers go to, as host:port; each must be
    # one the operator allows (LLAMAGATE_RPC_WORKERS)
    rpc_workers: tuple[str, ...] = ()
