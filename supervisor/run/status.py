"""Shared state of the supervisor and the small HTTP endpoint that shows it.

`Status` is written by the supervisor's loop (and the fetch thread's progress callback) and read by the HTTP
threads; every access holds one lock and readers get a JSON-ready copy.

Routes (loopback by default, STATUS_ADDR):
* `GET /healthz`: 200 while the supervisor's loop is responsive and ComfyUI is not failing its liveness checks.
* `GET /readyz`: 200 when ComfyUI answers, the plan's files are in place and the readiness checks passed;
  503 with the reasons otherwise. With one ComfyUI per GPU: when all are (READY_WHEN=all) or any is (any);
  `GET /readyz/<instance>` (comfyui-1, or 1) for one of them.
* `GET /status`: everything: phase, plan summary, download progress, ComfyUI, restarts, last exit and its class,
  workflow check, warmup, prewarm, side services, phase timings.
"""

from __future__ import annotations

import copy
import json
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

import structlog

from ..plan.types import Plan


log = structlog.get_logger("status")  # lazy: uses the configuration at each call
STALE_AFTER = 15.0  # seconds without a loop heartbeat before /healthz fails


class Status:
    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._beat = time.monotonic()
        self._data: dict[str, Any] = {
            "phase": "starting", "ready": False, "not_ready": ["starting"], "live": True,
            "started_at": time.time(), "supervisor": {}, "plan": {}, "fetch": {"state": "pending"},
            "comfyui": {"state": "not_started"}, "restarts": {"count": 0, "failures_in_window": 0},
            "last_exit": None, "exits": [], "workflows": {}, "warmup": {}, "prewarm": {}, "services": {},
            "phases": {},
        }

    def set(self, **sections: Any) -> None:
        """Replace top-level keys."""
        with self._lock:
            self._data.update(copy.deepcopy(sections))

    def merge(self, section: str, **values: Any) -> None:
        """Update keys inside one section."""
        with self._lock:
            target = self._data.setdefault(section, {})
            target.update(copy.deepcopy(values))

    def get(self, section: str, default: Any = None) -> Any:
        with self._lock:
            return copy.deepcopy(self._data.get(section, default))

    def append_exit(self, exit_info: dict[str, Any], keep: int = 20) -> None:
        with self._lock:
            self._data["last_exit"] = copy.deepcopy(exit_info)
            self._data["exits"] = (self._data["exits"] + [copy.deepcopy(exit_info)])[-keep:]

    def fetch_progress(self, event: dict[str, Any]) -> None:
        """The fetch's on_progress callback (runs in the fetch thread): keep its latest snapshot (files, total)."""
        with self._lock:
            self._data["fetch"]["progress"] = copy.deepcopy(event)

    def beat(self) -> None:
        self._beat = time.monotonic()  # a float store is atomic; no lock on the hot path

    def snapshot(self) -> dict[str, Any]:
        with self._lock:
            data = copy.deepcopy(self._data)
        data["uptime_s"] = round(time.time() - data["started_at"], 3)
        data["loop_lag_s"] = round(time.monotonic() - self._beat, 3)
        return data

    def live(self) -> tuple[bool, str]:
        lag = time.monotonic() - self._beat
        if lag > STALE_AFTER:
            return False, f"supervisor loop unresponsive for {lag:.0f} s"
        with self._lock:
            live, comfy = self._data.get("live", True), self._data.get("comfyui", {})
        if not live:
            return False, f"ComfyUI failed {comfy.get('liveness_failures', 0)} liveness checks in a row"
        return True, "alive"

    def ready(self) -> tuple[bool, list[str]]:
        with self._lock:
            return bool(self._data["ready"]), list(self._data["not_ready"])

    def instance_ready(self, name: str) -> tuple[bool, list[str]] | None:
        """Readiness of one ComfyUI instance, by name (comfyui-1) or index (1); None if there is no such one."""
        with self._lock:
            for instance in self._data.get("instances", []):
                if name in (instance.get("name"), str(instance.get("index"))):
                    return bool(instance.get("ready")), list(instance.get("not_ready", []))
        return None


class _Handler(BaseHTTPRequestHandler):
    server: "StatusServer"
    protocol_version = "HTTP/1.1"

    def do_GET(self) -> None:  # noqa: N802 (http.server's naming)
        status = self.server.status
        path = self.path.split("?", 1)[0].rstrip("/") or "/status"
        if path == "/healthz":
            live, why = status.live()
            self._send(200 if live else 503, {"live": live, "reason": why})
        elif path == "/readyz":
            ready, reasons = status.ready()
            self._send(200 if ready else 503, {"ready": ready, "not_ready": reasons})
        elif path.startswith("/readyz/"):
            name = path.split("/", 2)[2]
            found = status.instance_ready(name)
            if found is None:
                self._send(404, {"error": f"no ComfyUI instance {name!r}; /status lists them under 'instances'"})
            else:
                self._send(200 if found[0] else 503, {"instance": name, "ready": found[0], "not_ready": found[1]})
        elif path in ("/status", "/"):
            self._send(200, status.snapshot())
        else:
            self._send(404, {"error": f"no route {path}; try /status, /healthz or /readyz"})

    def _send(self, code: int, body: dict[str, Any]) -> None:
        data = json.dumps(body, default=str).encode()
        self.send_response(code)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(data)))
        self.send_header("Cache-Control", "no-store")
        self.end_headers()
        self.wfile.write(data)

    def log_message(self, format: str, *args: Any) -> None:  # noqa: A002
        pass  # a health probe every few seconds must not fill the log


class StatusServer(ThreadingHTTPServer):
    daemon_threads = True
    allow_reuse_address = True

    def __init__(self, address: tuple[str, int], status: Status):
        self.status = status
        family_host = address[0]
        if ":" in family_host:
            import socket

            self.address_family = socket.AF_INET6
        super().__init__(address, _Handler)

    def start(self) -> None:
        # A long poll interval: shutdown() is never called (the thread dies with the process), so a short one
        # would only cost idle wake-ups.
        thread = threading.Thread(target=self.serve_forever, kwargs={"poll_interval": 3600}, name="status-http",
                                  daemon=True)
        thread.start()


def start_server(address: tuple[str, int], status: Status) -> StatusServer:
    """Bind and serve in a daemon thread. A port that cannot be bound stops the start (ConfigError naming
    STATUS_ADDR): without it the HEALTHCHECK is blind, and `supervisor health` would ask whoever holds the port."""
    try:
        server = StatusServer(address, status)
    except OSError as exc:
        from ..errors import ConfigError, Problem

        raise ConfigError(Problem("STATUS_ADDR", f"{address[0]}:{address[1]} cannot be served: {exc.strerror or exc}",
                                  "another process holds this port (a second supervisor in the container?): stop it, "
                                  "or set STATUS_ADDR to a free loopback port, the same for `supervisor health`"),
                          title="the status endpoint cannot start") from None
    server.start()
    host, port = server.server_address[:2]
    log.info("status.listening", addr=f"{host}:{port}")
    return server


def plan_summary(plan: Plan | None) -> dict[str, Any]:
    """The plan as /status shows it."""
    if plan is None:
        return {}
    return {
        "gpu": plan.gpu.name if plan.gpu else None,
        "vram_class": plan.vram_class,
        "gpu_tier": plan.gpu_tier,
        "models": [{**model_brief(m), "reason": m.reason,
                    "ladder": [f"{s.variant}/{s.offload}/{s.blocks_to_swap}" for s in m.ladder]} for m in plan.models],
        "comfyui_args": list(plan.comfyui_args),
        "downloads": {"files": len(plan.downloads), "missing": len(plan.missing()),
                      "missing_bytes": sum(d.size for d in plan.missing())},
        "degrade": dict(plan.degrade),
        "warnings": list(plan.warnings),
        "errors": list(plan.errors),
    }


def model_brief(model: Any) -> dict[str, Any]:
    if model is None:
        return {}
    return {"feature": model.feature, "variant": model.variant, "offload": model.offload,
            "blocks_to_swap": model.knobs.blocks_to_swap if model.knobs else None}
