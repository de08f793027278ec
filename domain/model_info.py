"""What the service tells about a model: its info, and the events of its load."""

from __future__ import annotations

import enum
from dataclasses import dataclass, field

from llamagate.domain.audio_codecs import AudioCodec
from llamagate.domain.capabilities import Capabilities
from llamagate.domain.hub_load import DownloadProgress, HubModel
from llamagate.domain.load_options import KvCacheType, ModelMode
from llamagate.domain.load_plan import LoadPlan
from llamagate.domain.model_state import ModelState


@dataclass(frozen=True)
class ModelInfo:
    id: str = ""
    path: str = ""
    architecture: str = ""
    native_context_length: int = 0
    context_length: int = 0
    capabilities: Capabilities = field(default_factory=Capabilities)
    cache_type: KvCacheType = KvCacheType.F16
    state: ModelState = ModelState.EMPTY
    pid: int = 0
    parallel: int = 0
    has_chat_template: bool = False
    size_bytes: int = 0
    last_error: str = ""  # FAILED: why; after a restart, why it was needed
    restarts: int = 0  # times the restart policy started the engine again since the load
    mode: ModelMode = ModelMode.CHAT  # what it serves: chat, embeddings or rerank scores
    audio_codec: AudioCodec = AudioCodec.NONE  # the audio codec its tokens encode (known once READY)


class LoadPhase(enum.Enum):
    RESOLVING = "resolving"
    DOWNLOADING = "downloading"
    PLANNING = "planning"
    STARTING = "starting"
    LOADING = "loading"
    READY = "ready"


@dataclass(frozen=True)
class LoadEvent:
    phase: LoadPhase
    message: str = ""
    bytes_loaded: int = 0
    bytes_total: int = 0
    model: ModelInfo | None = None  # STARTING and READY
    plan: LoadPlan | None = None  # PLANNING
    hub: HubModel | None = None  # RESOLVING, for a model from the Hub: the files and what fetching them takes
    download: DownloadProgress | None = None  # DOWNLOADING
