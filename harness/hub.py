"""Whether the Hugging Face hub can be reached, decided in a moment.

Without network, huggingface_hub and datasets retry the hub for most of a minute and print a line per try;
with HF_HUB_OFFLINE set they fail with a traceback. spd-bench asks this module first and, when the hub
cannot be reached, says so in one line. The real download code is unchanged: this only decides whether
calling it can succeed.
"""
from __future__ import annotations

import functools
import os
import socket
from urllib.parse import urlparse

PROBE_SECONDS = 3.0
PROXY_VARIABLES = ("HTTPS_PROXY", "https_proxy", "HTTP_PROXY", "http_proxy", "ALL_PROXY", "all_proxy")


def offline() -> bool:
    """HF_HUB_OFFLINE is set: the Hugging Face libraries use their local caches only."""
    from huggingface_hub import constants
    return bool(constants.HF_HUB_OFFLINE)


def unreachable() -> str | None:
    """Why the hub cannot be reached (offline mode, no route, no name resolution), or None if it can."""
    from huggingface_hub import constants
    if offline():
        return "HF_HUB_OFFLINE is set"
    if any(os.environ.get(v) for v in PROXY_VARIABLES):
        return None   # a proxy decides what is reachable: let the real request find out
    return _probe(constants.ENDPOINT)


@functools.lru_cache(maxsize=8)
def _probe(endpoint: str) -> str | None:
    url = urlparse(endpoint)
    host, port = url.hostname or "", url.port or (443 if url.scheme == "https" else 80)
    try:
        socket.create_connection((host, port), timeout=PROBE_SECONDS).close()
    except OSError as err:
        return f"cannot connect to {host}:{port}: {err.strerror or type(err).__name__}"
    return None
