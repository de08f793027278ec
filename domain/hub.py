"""Models from the Hugging Face Hub: which files a repo + variant means (SPEC §7, issue 11).

Pure rules over a listing the adapter made with huggingface_hub: name
validation, variant matching, shard sets, the vision projector, and the
disk preflight's choice of a variant that fits. No I/O happens here.
"""

from __future__ import annotations

import dataclasses
import posixpath
import re
from collections.abc import Iterable, Mapping
from dataclasses import dataclass

from llamagate.domain.errors import InvalidArgument, InvalidModel, ModelNotFound
from llamagate.domain.shards import model_id, shard_names

DEFAULT_VARIANT = "Q4_K_M"  # what the Hub (llama-server -hf, Ollama hf.co/) picks when none is named

# The Hub's repo-id rule (huggingface_hub's validate_repo_id), ASCII only, with
# the owner required: a GGUF repo always has one, and a bare word is more
# likely a mistyped file name than a legacy model id.
_REPO_PART = r"[A-Za-z0-9_](?:[A-Za-z0-9_.-]{0,94}[A-Za-z0-9_])?"
_REPO = re.compile(rf"{_REPO_PART}/{_REPO_PART}")
_DOUBLED = re.compile(r"([-.])\1")  # "--" and "..", which the Hub refuses in a repo id
_VARIANT = re.compile(r"[A-Za-z0-9](?:[A-Za-z0-9_.-]{0,62}[A-Za-z0-9])?")
_REVISION = re.compile(r"[A-Za-z0-9_](?:[A-Za-z0-9_./-]{0,254})")
_TOKEN = re.compile(r"[\x21-\x7e]{1,4096}")  # printable ASCII: it goes into an HTTP header

# Quantization names as ggml and the big uploaders write them (Q4_K_M, IQ2_XXS,
# TQ1_0, BF16, MXFP4, unsloth's UD- dynamic quants). The boundaries are the
# whole-token rule of `matches`.
_QUANT = re.compile(
    r"(?<![a-z0-9])(?:ud-)?(?:[it]?q\d+(?:_[a-z0-9]+)*|b?f(?:16|32|64)|mxfp4(?:_moe)?)(?![a-z0-9]|_[a-z0-9])"
)


@dataclass(frozen=True)
class HubSource:
    """A model named the way the Hub names it. Empty fields mean the default:
    variant → `DEFAULT_VARIANT` or the first file, revision → the main
    branch, token → whatever huggingface_hub already knows."""

    repo: str
    variant: str = ""
    revision: str = ""
    token: str = dataclasses.field(default="", repr=False)  # a secret: never printed

    def __post_init__(self) -> None:
        if not self.repo:
            raise InvalidArgument("a Hub repo is required, as owner/name", field="hub.repo")
        if not _REPO.fullmatch(self.repo) or _DOUBLED.search(self.repo) or self.repo.endswith(".git"):
            raise InvalidArgument(
                f"{self.repo!r} is not a Hub repo id: owner/name, each 1-96 of letters, digits, '-', '_', '.'"
                " (not starting or ending with '-' or '.', no '--' or '..')",
                field="hub.repo",
            )
        if self.variant and not _VARIANT.fullmatch(self.variant):
            raise InvalidArgument(
                f"{self.variant!r} is not a variant name: 1-64 letters, digits, '_', '-', '.', such as Q4_K_M",
                field="hub.variant",
            )
        if self.revision and (not _REVISION.fullmatch(self.revision) or ".." in self.revision):
            raise InvalidArgument(
                f"{self.revision!r} is not a revision: a branch, tag or commit of letters, digits, '_', '-', '.', '/'",
                field="hub.revision",
            )
        if self.token and not _TOKEN.fullmatch(self.token):
            # the token itself stays out of the message
            raise InvalidArgument("the token must be printable ASCII without spaces", field="hub.token")

    @property
    def reference(self) -> str:
        """The command line's spelling, ``owner/name[:VARIANT]``."""
        return f"{self.repo}:{self.variant}" if self.variant else self.repo


def parse_reference(text: str, *, field: str = "model") -> HubSource:
    """``owner/name[:VARIANT]`` from the command line, also as copied from the
    Hub (``hf.co/owner/name:VARIANT``, ``https://huggingface.co/owner/name``).

    Whether ``text`` is rather a file that exists is the caller's question.
    """
    rest = re.sub(r"^(?:https?://)?(?:hf\.co|huggingface\.co)/", "", text)
    repo, colon, variant = rest.partition(":")
    if colon and not variant:
        raise InvalidArgument(f"{text!r} has nothing after ':'; write owner/name:VARIANT or owner/name", field=field)
    try:
        return HubSource(repo=repo, variant=variant)
    except InvalidArgument as error:
        raise InvalidArgument(
            f"{text!r} is neither a file nor owner/name[:VARIANT]: {error.description}", field=field
        ) from error


@dataclass(frozen=True)
class HubFile:
    path: str  # within the repo, '/'-separated, may sit in folders
    size: int  # bytes, from the Hub's file metadata
    sha256: str = ""  # of the content, for files the Hub stores in LFS (every GGUF); "" when unknown


@dataclass(frozen=True)
class HubListing:
    repo: str
    commit: str  # the revision resolved, so every file comes from the same one
    files: tuple[HubFile, ...]


@dataclass(frozen=True)
class Variant:
    """One model a repo offers: a single file or a split model's shards, in order."""

    name: str  # Q4_K_M, UD-Q4_K_XL, BF16; the file's stem when it names no quantization
    files: tuple[HubFile, ...]  # the shards present, in shard order
    missing: tuple[str, ...] = ()  # paths of the shards the repo lacks

    @property
    def total_bytes(self) -> int:
        return sum(f.size for f in self.files)

    @property
    def complete(self) -> bool:
        return not self.missing


@dataclass(frozen=True)
class Selection:
    variant: str
    model_files: tuple[HubFile, ...]  # shard 1 first: the path llama-server is given
    mmproj: HubFile | None  # the vision projector, when the repo has one

    @property
    def files(self) -> tuple[HubFile, ...]:
        """Everything to fetch, in download order."""
        return self.model_files + ((self.mmproj,) if self.mmproj else ())

    @property
    def total_bytes(self) -> int:
        return sum(f.size for f in self.files)


def matches(variant: str, path: str) -> bool:
    """Whether ``variant`` is a whole token of ``path``, ignoring case.

    SPEC §7: not preceded or followed by a letter or digit, so ``F16`` never
    takes ``BF16``. Improved on the right: ``_`` + letter/digit continues the
    token too, because quant names grow rightwards (``Q4_K`` is not
    ``Q4_K_M``, ``Q4_0`` is not ``Q4_0_4_4``); on the left ``_`` still
    separates, as in ``model_q4_0.gguf``.
    """
    if not variant:
        return False
    needle, hay = variant.lower(), path.lower()
    start = hay.find(needle)
    while start >= 0:
        end = start + len(needle)
        if not (start and hay[start - 1].isalnum()) and not _continues(hay, end):
            return True
        start = hay.find(needle, start + 1)
    return False


def _continues(hay: str, end: int) -> bool:
    nxt = hay[end : end + 2]
    return bool(nxt) and (nxt[0].isalnum() or (nxt[0] == "_" and nxt[1:].isalnum()))


def is_projector(path: str) -> bool:
    """A vision projector: never a model variant (SPEC §7)."""
    name = posixpath.basename(path).lower()
    return name.endswith(".gguf") and "mmproj" in name


def _is_model(path: str) -> bool:
    return path.lower().endswith(".gguf") and not is_projector(path)


def _variant_name(path: str) -> str:
    """The quantization the path names (the file's, else its folders'), else the file's stem."""
    folder, name = posixpath.split(path)
    stem = model_id(name)
    for part in [stem, *reversed(folder.split("/"))]:
        found = _QUANT.findall(part.lower())
        if found:
            return str(found[-1]).upper()  # the last: a model's own name may hold one ("F16-tuned")
    return stem


def shard_sets(files: Iterable[HubFile]) -> tuple[Variant, ...]:
    """Every model GGUF grouped into its shard set, in path order, missing shards noted.

    Each set is named by its quantization; several may share a name.
    """
    models = sorted((f for f in files if _is_model(f.path)), key=lambda f: f.path)
    by_path = {f.path.lower(): f for f in models}
    claimed: set[str] = set()
    sets = []
    for file in models:
        if file.path.lower() in claimed:
            continue
        folder, name = posixpath.split(file.path)
        expected = [posixpath.join(folder, shard) for shard in shard_names(name)]
        if file.path.lower() not in {p.lower() for p in expected}:
            expected = [file.path]  # a shard number past its count: not a split set, load it as it is
        claimed.update(p.lower() for p in expected)
        present = tuple(by_path[p.lower()] for p in expected if p.lower() in by_path)
        missing = tuple(p for p in expected if p.lower() not in by_path)
        sets.append(Variant(_variant_name(expected[0]), present, missing))
    return tuple(sets)


def variants(files: Iterable[HubFile]) -> tuple[Variant, ...]:
    """Each variant a repo offers once, smallest first: for each name the set
    `select` takes (the first complete one in path order, else the first)."""
    chosen: dict[str, Variant] = {}
    for candidate in shard_sets(files):
        key = candidate.name.lower()
        if key not in chosen or (candidate.complete and not chosen[key].complete):
            chosen[key] = candidate
    return tuple(sorted(chosen.values(), key=lambda v: (v.total_bytes, v.name)))


def select(listing: HubListing, variant: str = "") -> Selection:
    """The files a repo + variant means (SPEC §7).

    A variant is found by name first (``Q4_K_M`` is the plain file even when
    ``UD-Q4_K_M`` exists), else as a whole token of a path, the first in path
    order. With none named: `DEFAULT_VARIANT` if present, else the first
    complete model in path order.
    """
    sets = shard_sets(listing.files)
    if not sets:
        raise InvalidModel(f"the repository {listing.repo} has no GGUF file")
    chosen = _find(sets, variant or DEFAULT_VARIANT)
    if chosen is None and variant:
        raise ModelNotFound(
            f"{listing.repo} has no variant {variant!r}; it offers {_describe(variants(listing.files))}"
        )
    if chosen is None:
        chosen = next((s for s in sets if s.complete), sets[0])
    if chosen.missing:
        count = len(chosen.files) + len(chosen.missing)
        named = ", ".join(chosen.missing[:3]) + (", ..." if len(chosen.missing) > 3 else "")
        raise ModelNotFound(
            f"split model {chosen.name} in {listing.repo} lacks {len(chosen.missing)} of its {count} shards: {named}"
        )
    return Selection(chosen.name, chosen.files, projector(listing.files))


def _find(sets: tuple[Variant, ...], variant: str) -> Variant | None:
    named = [s for s in sets if s.name.lower() == variant.lower()]
    candidates = named or [s for s in sets if matches(variant, s.files[0].path)]  # a set holds its own first file
    return next((s for s in candidates if s.complete), candidates[0] if candidates else None)


_PROJECTOR_PREFERENCE = ("-f16.gguf", "-bf16.gguf", "-f32.gguf")


def projector(files: Iterable[HubFile]) -> HubFile | None:
    """The vision projector to fetch: the exact ``-f16.gguf`` one (so BF16 is
    never taken for F16, SPEC §7), else bf16, else f32, else the first."""
    found = sorted((f for f in files if is_projector(f.path)), key=lambda f: f.path)

    def rank(file: HubFile) -> int:
        name = file.path.lower()
        return next(
            (i for i, end in enumerate(_PROJECTOR_PREFERENCE) if name.endswith(end)), len(_PROJECTOR_PREFERENCE)
        )

    return min(found, key=rank) if found else None  # min keeps the first of equal rank


def to_download(selection: Selection, cached_bytes_by_path: Mapping[str, int]) -> int:
    """Bytes still to fetch: what the local Hub cache holds of each file (whole,
    or the resumable part) is subtracted."""
    return sum(f.size - min(max(cached_bytes_by_path.get(f.path, 0), 0), f.size) for f in selection.files)


def fitting_fallback(
    listing: HubListing, wanted_variant: str, free_bytes: int, cached: Mapping[str, int]
) -> Selection | None:
    """The selection to download into ``free_bytes``: the wanted one when it
    fits, else the smallest complete variant that fits (SPEC §7: sizes summed
    over shards, projector left out of the comparison but not of the bytes to
    fetch), else None and the caller reports the numbers.

    Raises as `select` does for the wanted variant: a variant that is absent
    is the user's error, not a reason to fetch another.
    """
    wanted = select(listing, wanted_variant)
    if to_download(wanted, cached) <= free_bytes:
        return wanted
    mmproj = wanted.mmproj
    for offer in variants(listing.files):  # smallest first
        if offer.complete:
            candidate = Selection(offer.name, offer.files, mmproj)
            if to_download(candidate, cached) <= free_bytes:
                return candidate
    return None


def _describe(offers: tuple[Variant, ...]) -> str:
    return ", ".join(f"{v.name} ({_size(v.total_bytes)}{'' if v.complete else ', incomplete'})" for v in offers)


def _size(n: int) -> str:
    return f"{n / 1e9:.2f} GB" if n >= 1e9 else f"{n / 1e6:.1f} MB"
