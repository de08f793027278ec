"""Loading a model from the Hub: what to fetch, whether it fits, and how to read its header remotely.

Pure rules the application applies before a single weight byte is fetched
(issue 11): the disk preflight with its fallback to a smaller variant, the
memory check, the growth of the header's range reads, and the shape of
download progress.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass

from llamagate.domain.errors import InsufficientResources, InvalidModel
from llamagate.domain.gpus import GpuInfo
from llamagate.domain.hub import HubFile, HubListing, Selection, fitting_fallback, select, to_download
from llamagate.domain.planning import Plan

# Most GGUF headers are 1-10 MB (a vocabulary of 32k-256k tokens). A first
# read of 1 MiB, each later one at least doubling what is held, reads at most
# twice the header (once it is over 512 KiB) in log2(header / 1 MiB) + 1
# requests: SmolLM2's 1.7 MiB header takes 2.
FIRST_HEADER_READ = 1 << 20
# No real header comes near this; a hostile one claiming more is refused
# before the service holds it in memory.
MAX_HEADER_BYTES = 64 << 20


def next_read_end(have: int, at_least: int, file_size: int) -> int:
    """Where the next range read of a header ends, given ``have`` bytes held
    and a scanner that wants ``at_least`` more: double what is held (or the
    first read), never less than asked, never past the file.

    Raises InvalidModel when the header would exceed `MAX_HEADER_BYTES`."""
    wanted = FIRST_HEADER_READ if have == 0 else have + max(at_least, have, 1)
    if have + at_least > MAX_HEADER_BYTES:
        raise InvalidModel(f"the GGUF header claims more than {MAX_HEADER_BYTES >> 20} MiB; refused")
    return min(wanted, file_size, MAX_HEADER_BYTES)


@dataclass(frozen=True)
class HubModel:
    """A Hub source resolved to files, and what fetching them takes."""

    repo: str
    commit: str
    revision: str  # as asked ("" = main)
    selection: Selection
    cached: Mapping[str, int]  # bytes the local cache holds, by path (whole files and partials)
    cache_dir: str
    disk_free: int
    requested_variant: str  # as asked ("" = the default)
    fallback_from: str = ""  # the variant asked for, when the disk made us take another
    fallback_needed: int = 0  # what that variant would have fetched

    @property
    def bytes_total(self) -> int:
        return self.selection.total_bytes

    @property
    def bytes_to_download(self) -> int:
        return to_download(self.selection, self.cached)

    @property
    def bytes_cached(self) -> int:
        return self.bytes_total - self.bytes_to_download

    @property
    def fits_disk(self) -> bool:
        return self.bytes_to_download <= self.disk_free

    @property
    def model_bytes(self) -> int:
        """All shards of the model (the projector not included)."""
        return sum(f.size for f in self.selection.model_files)

    @property
    def first_shard(self) -> HubFile:
        return self.selection.model_files[0]

    @property
    def reference(self) -> str:
        return f"{self.repo}:{self.selection.variant}"


def choose_for_disk(listing: HubListing, variant: str, cached: Mapping[str, int], free: int,
                    cache_dir: str, revision: str = "") -> HubModel:
    """The files to fetch (SPEC §7): the variant asked for when what is still
    missing fits the free space, else the smallest complete variant that fits.

    Raises InsufficientResources (DISK_FULL) with the numbers and the
    directory when none fits; ModelNotFound / InvalidModel as `select` does."""
    wanted = select(listing, variant)
    chosen = fitting_fallback(listing, variant, free, cached)
    if chosen is None:
        missing = to_download(wanted, cached)
        raise InsufficientResources(
            f"{listing.repo}:{wanted.variant} needs {_gib(missing)} more on disk but {cache_dir} has "
            f"{_gib(free)} free, and no variant of the repo fits; free some space or set HF_HUB_CACHE "
            f"to a larger disk", reason="DISK_FULL", needed=missing, available=free, where=cache_dir)
    fallback = wanted.variant if chosen.variant != wanted.variant else ""
    return HubModel(listing.repo, listing.commit, revision, chosen, cached, cache_dir, free, variant, fallback,
                    to_download(wanted, cached) if fallback else 0)


def plan_for_disk(listing: HubListing, variant: str, cached: Mapping[str, int], free: int,
                  cache_dir: str, revision: str = "") -> HubModel:
    """What PlanModel reports: the variant asked for, whether or not it fits
    the disk (`HubModel.fits_disk` tells)."""
    return HubModel(listing.repo, listing.commit, revision, select(listing, variant), cached, cache_dir, free,
                    variant)


def fallback_note(model: HubModel) -> str:
    """Why another variant than the one asked for is fetched, or ""."""
    if not model.fallback_from:
        return ""
    return (f"{model.repo}:{model.fallback_from} needs {_gib(model.fallback_needed)} and {model.cache_dir} has "
            f"{_gib(model.disk_free)} free: taking {model.selection.variant} "
            f"({_gib(model.bytes_to_download)} to fetch), the smallest variant that fits")


def memory_shortfall(model: str, plan: Plan, gpus: Sequence[GpuInfo], host_free: int,
                     reclaimable: int = 0) -> InsufficientResources | None:
    """A model that cannot fit even across every GPU and the system memory
    together, at the smallest context the plan allows: its download would
    be wasted (issue 11), so the load is refused before it starts.
    ``reclaimable``: what the model it replaces holds, free once it stops."""
    needed = plan.weights_bytes + plan.kv_bytes
    available = sum(g.free_bytes for g in gpus) + host_free + reclaimable
    if needed <= available:
        return None
    where = (f"{len(gpus)} GPU(s) and system memory" if gpus else "system memory")
    return InsufficientResources(
        f"{model} needs {_gib(needed)} (weights {_gib(plan.weights_bytes)} + KV cache {_gib(plan.kv_bytes)} "
        f"at context {plan.context_length}) but {where} have {_gib(available)} free; nothing was downloaded. "
        f"A smaller variant or a shorter context may fit", reason="MODEL_TOO_LARGE", needed=needed,
        available=available, where=where)


@dataclass(frozen=True)
class DownloadProgress:
    """Where a download stands: the file being fetched (index from 1) and the whole."""

    file: str
    file_index: int
    file_count: int
    bytes_done: int  # of all files
    bytes_total: int
    bytes_per_second: float
    from_cache: bool = False  # the file was already whole in the cache: nothing fetched


def _gib(n: int) -> str:
    return f"{n / (1 << 30):.2f} GiB" if n >= 1 << 30 else f"{n / (1 << 20):.1f} MiB"
