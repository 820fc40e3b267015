"""`supervisor health`: exit 0 when the running supervisor reports ready (or live, with --live), else 1.

Made for Docker's HEALTHCHECK, which runs it every 30 s: it asks the status endpoint and nothing else (no
catalogue, no NVML), and prints one line that `docker inspect` shows.
"""

from __future__ import annotations

import argparse
import json
import urllib.error
import urllib.request
from typing import Mapping

from ..plan.settings import Settings, _address

_DEFAULT_ADDR = Settings.__dataclass_fields__["status_addr"].metadata["raw_default"]


def command(args: argparse.Namespace, environ: Mapping[str, str]) -> int:
    raw = getattr(args, "addr", None) or environ.get("STATUS_ADDR", "").strip() or _DEFAULT_ADDR
    try:
        host, port = _address(raw)
    except ValueError as exc:
        print(f"unhealthy: STATUS_ADDR/--addr {raw!r} is not valid: {exc}")
        return 1
    if host in ("0.0.0.0", "", "*"):
        host = "127.0.0.1"
    elif host == "::":
        host = "::1"
    shown = f"[{host}]" if ":" in host else host
    instance = getattr(args, "instance", None)
    route = "/healthz" if getattr(args, "live", False) else (f"/readyz/{instance}" if instance else "/readyz")
    url = f"http://{shown}:{port}{route}"
    timeout = float(getattr(args, "timeout", 3.0) or 3.0)
    # No proxies: the status endpoint is local, and a pod's HTTP_PROXY must not capture the check.
    opener = urllib.request.build_opener(urllib.request.ProxyHandler({}))
    try:
        with opener.open(url, timeout=timeout) as response:
            body = _json(response.read())
            code = response.status
    except urllib.error.HTTPError as exc:
        body, code = _json(exc.read()), exc.code
    except (urllib.error.URLError, OSError, ValueError) as exc:
        reason = getattr(exc, "reason", exc)
        print(f"unhealthy: no answer from the supervisor at {url}: {reason}")
        return 1
    if code == 200:
        print("live" if route == "/healthz" else (f"{instance} ready" if instance else "ready"))
        return 0
    why = body.get("reason") or "; ".join(body.get("not_ready", [])) or f"HTTP {code}"
    why = body.get("error") or why
    print(f"{'not live' if route == '/healthz' else 'not ready'}: {why}")
    return 1


def _json(data: bytes) -> dict:
    try:
        value = json.loads(data or b"{}")
    except ValueError:
        return {}
    return value if isinstance(value, dict) else {}
