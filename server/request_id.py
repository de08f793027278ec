"""The id that ties one Generate's events, logs and client together."""

from __future__ import annotations

import re
import uuid
from collections.abc import Iterable

from llamagate.domain.errors import InvalidArgument

REQUEST_ID_KEY = "x-request-id"  # metadata key, both ways (the common HTTP header's name)
_VALID = re.compile(r"[\x21-\x7e]{1,128}")  # visible ASCII: safe in a log line and in metadata


def request_id_for(given: str, metadata: Iterable[tuple[str, str | bytes]] | None) -> str:
    """The request's own id, else the caller's ``x-request-id`` metadata, else a new one."""
    from_metadata = next((str(v) for k, v in metadata or () if k == REQUEST_ID_KEY and isinstance(v, str)), "")
    chosen, field = (given, "request_id") if given else (from_metadata, "metadata x-request-id")
    if not chosen:
        return uuid.uuid4().hex
    if not _VALID.fullmatch(chosen):
        raise InvalidArgument("must be 1 to 128 visible ASCII characters (no spaces)", field=field)
    return chosen
