"""The supervisor's status as ComfyUI's page needs it: read from the supervisor's loopback endpoint, trimmed to
what the banner and the panel show (phase, download progress, the plan, restarts, out-of-memory counts).

No import of ComfyUI or of the supervisor: this runs inside ComfyUI's own Python, which has neither on its path.
"""

from __future__ import annotations

import json
import os
import urllib.request
from typing import Any, Mapping

DEFAULT_ADDR = "127.0.0.1:8189"
TIMEOUT = 2.0


def status_url(environ: Mapping[str, str] | None = None) -> str:
    """The supervisor's /status on loopback: SUPERVISOR_STATUS_URL, else STATUS_ADDR's port on 127.0.0.1."""
    environ = os.environ if environ is None else environ
    explicit = (environ.get("SUPERVISOR_STATUS_URL") or "").strip().rstrip("/")
    if explicit:
        return explicit if explicit.endswith("/status") else explicit + "/status"
    addr = (environ.get("STATUS_ADDR") or "").strip() or DEFAULT_ADDR
    host, _, port = addr.rpartition(":")
    host = host.strip("[]")
    if host in ("", "0.0.0.0", "*"):
        host = "127.0.0.1"
    elif host == "::":
        host = "::1"
    shown = f"[{host}]" if ":" in host else host
    return f"http://{shown}:{port}/status"


def read_status(url: str, timeout: float = TIMEOUT) -> dict[str, Any]:
    """The trimmed status, or {"available": False, "error": ...} when the supervisor does not answer (ComfyUI
    started some other way): the page then shows nothing."""
    opener = urllib.request.build_opener(urllib.request.ProxyHandler({}))  # loopback: never through a proxy
    try:
        with opener.open(url, timeout=timeout) as response:
            data = json.loads(response.read())
    except (OSError, ValueError) as exc:
        return {"available": False, "error": f"{type(exc).__name__}: {exc}"[:200]}
    return trim(data) if isinstance(data, dict) else {"available": False, "error": "not a JSON object"}


def trim(status: Mapping[str, Any]) -> dict[str, Any]:
    fetch = status.get("fetch") or {}
    progress = fetch.get("progress") or {}
    plan = status.get("plan") or {}
    last_exit = status.get("last_exit") or {}
    return {
        "available": True,
        "phase": status.get("phase"),
        "ready": bool(status.get("ready")),
        "not_ready": list(status.get("not_ready") or []),
        "fetch": {
            "state": fetch.get("state"),
            "message": fetch.get("message"),
            "failed": fetch.get("failed") or {},
            "total": progress.get("total"),
            "files": [{k: f.get(k) for k in ("dest", "state", "size", "bytes", "percent", "bytes_per_s", "eta_s")}
                      for f in progress.get("files") or [] if isinstance(f, dict)],
        },
        "plan": {
            "gpu": plan.get("gpu"), "vram_class": plan.get("vram_class"),
            "models": [{k: m.get(k) for k in ("feature", "variant", "offload", "blocks_to_swap", "reason", "ladder")}
                       for m in plan.get("models") or [] if isinstance(m, dict)],
            "degrade": plan.get("degrade") or {}, "warnings": list(plan.get("warnings") or []),
            "errors": list(plan.get("errors") or []),
        },
        "restarts": (status.get("restarts") or {}).get("count", 0),
        "last_exit": {"class": last_exit.get("class"), "message": last_exit.get("message")} if last_exit else None,
        "oom": status.get("oom"),
        "outputs": status.get("outputs"),
    }
