"""HTTP for the bytes: one httpx client, origins (who may see a token), and HTTP failures sorted into retry classes.

Metadata (resolve, tree listing) goes through huggingface_hub (see resolve.py); the bytes go through httpx here,
because huggingface_hub 2.x can neither resume across runs nor fetch ranges in parallel.
"""

from __future__ import annotations

import email.utils
import time
from urllib.parse import urlsplit

import httpx

from .. import __version__
from .errors import Expired, FetchFailure, Permanent, SourceChanged, Transient

USER_AGENT = f"comfyui-pod-supervisor/{__version__}"
RETRY_STATUSES = {408, 425, 429, 500, 502, 503, 504}


def origin(url: str) -> str:
    """scheme://host:port, with the default port spelled out, so two spellings of one origin compare equal."""
    parts = urlsplit(url)
    port = parts.port or (443 if parts.scheme == "https" else 80)
    return f"{parts.scheme}://{(parts.hostname or '').lower()}:{port}"


READ_SIZE = 1 << 20


def _larger_reads() -> None:
    """httpcore reads HTTP/1.1 bodies 64 KiB at a time (a class attribute, no option for it). Measured on 2 cores:
    a 1 GB download over 8 connections cost 3.4 CPU-s with 64 KiB reads and 1.2 CPU-s with 1 MiB reads, and the
    CPU was the bottleneck. A larger read only lets one call return more of what already arrived."""
    try:
        from httpcore._sync.http11 import HTTP11Connection
    except ImportError:  # another httpcore layout: keep its default
        return
    if getattr(HTTP11Connection, "READ_NUM_BYTES", READ_SIZE) < READ_SIZE:
        HTTP11Connection.READ_NUM_BYTES = READ_SIZE


def make_client(connections: int, stall_timeout: float) -> httpx.Client:
    """The client that carries file bytes. Redirects are followed by hand (see transfer.py) so a token never
    follows a redirect to another origin; the read timeout is the stall watchdog (no byte for that long)."""
    _larger_reads()
    return httpx.Client(
        follow_redirects=False,
        timeout=httpx.Timeout(connect=min(stall_timeout, 30.0), read=stall_timeout, write=stall_timeout, pool=None),
        limits=httpx.Limits(max_connections=connections, max_keepalive_connections=connections),
        headers={"User-Agent": USER_AGENT, "Accept-Encoding": "identity"},
        trust_env=True,  # HTTPS_PROXY / SSL_CERT_FILE of the pod still apply
    )


def retry_after(headers: httpx.Headers) -> float | None:
    """Seconds the server asks us to wait (Retry-After: seconds or an HTTP date)."""
    value = headers.get("retry-after")
    if not value:
        return None
    try:
        return max(float(value), 0.0)
    except ValueError:
        pass
    try:
        when = email.utils.parsedate_to_datetime(value)
    except (TypeError, ValueError):
        return None
    return max(when.timestamp() - time.time(), 0.0) if when else None


def transport_failure(exc: httpx.TransportError, where: str) -> Transient:
    """A connection-level error -> a retryable failure whose cause names what happened."""
    if isinstance(exc, httpx.ReadTimeout):
        cause = "stall"
    elif isinstance(exc, httpx.ConnectTimeout):
        cause = "connect_timeout"
    elif isinstance(exc, httpx.ConnectError):
        cause = "connect"
    elif isinstance(exc, httpx.RemoteProtocolError):
        cause = "closed"  # the server closed cleanly before the whole body came (FIN)
    elif isinstance(exc, httpx.ReadError):
        cause = "reset"  # connection reset (RST)
    elif isinstance(exc, httpx.WriteError):
        cause = "write"
    else:
        cause = "network"
    return Transient(f"{where}: {type(exc).__name__}: {exc or cause}", cause)


def status_failure(response: httpx.Response, where: str, *, auth_origin: bool, what: str) -> FetchFailure:
    """A non-success answer -> retry, re-resolve or give up. `auth_origin`: the answer came from the origin that
    receives the token (Hub, CivitAI); a 403 from anywhere else is an expired signed URL."""
    status = response.status_code
    if status in RETRY_STATUSES:
        cause = {408: "timeout_408", 429: "rate_limited"}.get(status, f"http_{status}")
        return Transient(f"{where}: HTTP {status}", cause, retry_after(response.headers))
    if status == 416:
        return SourceChanged(f"{where}: HTTP 416 (range not satisfiable): the file changed size", "range_416")
    if not auth_origin and status in (401, 403, 404, 410):
        return Expired(f"{where}: HTTP {status} from the download server (signed URL expired?)", "expired_url")
    if status in (401, 403):
        return Permanent(f"{what}: HTTP {status} (access refused)", f"http_{status}", access=True)
    if status in (404, 410):
        return Permanent(f"{what}: HTTP {status} (not found)", f"http_{status}", access=True)
    return Permanent(f"{what}: HTTP {status}", f"http_{status}")
