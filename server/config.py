"""Settings shared by the service and its command-line client."""

from __future__ import annotations

import os

DEFAULT_ADDRESS = "127.0.0.1:50051"


def default_address() -> str:
    """``LLAMAGATE_ADDRESS`` if set: where ``serve`` listens and clients call."""
    return os.environ.get("LLAMAGATE_ADDRESS", DEFAULT_ADDRESS)
