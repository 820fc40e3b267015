"""Shared state of the supervisor and the small HTTP endpoint that shows it.

`Status` is written by the supervisor's loop (and the fetch thread's progress callback) and read by the HTTP
threads; every access holds one lock and readers get a JSON-ready copy.

Routes (loopback by default, STATUS_ADDR; all interfaces with STATUS_PUBLIC, see access.py):
* `GET /healthz`: 200 while the supervisor's loop is responsive and ComfyUI is not failing its liveness checks.
* `GET /readyz`: 200 when ComfyUI answers, the plan's files are in place and the readiness checks passed;
  503 with the reasons otherwise. With one ComfyUI per GPU: when all are (READY_WHEN=all) or any is (any);
  `GET /readyz/<instance>` (comfyui-1, or 1) for one of them.
* `GET /status`: everything: phase, plan summary, download progress, ComfyUI, restarts, last exit and its class,
  workflow check, warmup, prewarm, side services, phase timings, recent warnings.
* `GET /`: the same for a person (status.html polls /status); `GET /metrics`: Prometheus (metrics.py).

The HTTP threads only read: every value they show is a copy of what the loop published.
"""

from __future__ import annotations

import copy
import json
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from importlib import resources
from typing import Any

import structlog

from .. import logs
from ..plan.types import Plan
from .access import Access


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
            "last_exit": None, "exits": [], "exit_counts": {}, "workflows": {}, "warmup": {}, "prewarm": {},
            "services": {}, "phases": {}, "phase_since": time.time(), "phase_seconds": {},
        }

    def set(self, **sections: Any) -> None:
        """Replace top-level keys."""
        with self._lock:
            phase = sections.get("phase")
            if phase is not None and phase != self._data["phase"]:
                self._leave_phase(time.time())
            self._data.update(copy.deepcopy(sections))

    def _leave_phase(self, now: float) -> None:
        """Add the time spent in the current phase to its total (lock held)."""
        totals, phase = self._data["phase_seconds"], self._data["phase"]
        totals[phase] = round(totals.get(phase, 0.0) + now - self._data["phase_since"], 3)
        self._data["phase_since"] = now

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
            counts = self._data["exit_counts"]
            klass = str(exit_info.get("class") or "unknown")
            counts[klass] = counts.get(klass, 0) + 1

    def fetch_progress(self, event: dict[str, Any]) -> None:
        """The fetch's on_progress callback (runs in the fetch thread): keep its latest snapshot (files, total)."""
        with self._lock:
            self._data["fetch"]["progress"] = copy.deepcopy(event)

    def beat(self) -> None:
        self._beat = time.monotonic()  # a float store is atomic; no lock on the hot path

    def snapshot(self) -> dict[str, Any]:
        now = time.time()
        with self._lock:
            data = copy.deepcopy(self._data)
        data["uptime_s"] = round(now - data["started_at"], 3)
        data["loop_lag_s"] = round(time.monotonic() - self._beat, 3)
        # The time in the current phase so far counts too, so a scrape during a long fetch sees it grow.
        current = data["phase"]
        data["phase_seconds"][current] = round(data["phase_seconds"].get(current, 0.0) + now - data["phase_since"], 3)
        data["recent_warnings"], data["warning_counts"] = logs.recent_events()
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
        path = self.path.split("?", 1)[0]
        path = path.rstrip("/") or "/"
        if path == "/healthz":
            live, why = status.live()
            self._send(200 if live else 503, {"live": live, "reason": why})
            return
        if path == "/readyz":
            ready, reasons = status.ready()
            self._send(200 if ready else 503, {"ready": ready, "not_ready": reasons})
            return
        if path.startswith("/readyz/"):
            name = path.split("/", 2)[2]
            found = status.instance_ready(name)
            if found is None:
                self._send(404, {"error": f"no ComfyUI instance {name!r}; /status lists them under 'instances'"})
            else:
                self._send(200 if found[0] else 503, {"instance": name, "ready": found[0], "not_ready": found[1]})
            return
        verdict = self.server.access.check(self.client_address[0], self.path, self.headers)
        if verdict.redirect:
            self._bytes(303, b"", "text/plain", [("Location", verdict.redirect), ("Set-Cookie", verdict.cookie)])
        elif not verdict.allowed:
            if path == "/":
                self._bytes(401, _page("login.html"), "text/html; charset=utf-8", [])
            else:
                self._send(401, {"error": "this endpoint needs STATUS_TOKEN: `Authorization: Bearer <token>`, "
                                          "or open /?token=<token> once in a browser"},
                           [("WWW-Authenticate", 'Bearer realm="supervisor"')])
        elif path == "/status":
            # Every value is already free of secrets (they never reach the state); scrub once more regardless.
            self._bytes(200, logs.scrub(json.dumps(status.snapshot(), default=str)).encode(), "application/json", [])
        elif path == "/":
            self._bytes(200, _page("status.html"), "text/html; charset=utf-8", [("Content-Security-Policy", _CSP)])
        elif path == "/metrics":
            from .metrics import render

            body, content_type = render(status)
            self._bytes(200, logs.scrub(body.decode()).encode(), content_type, [])
        else:
            self._send(404, {"error": f"no route {path}; try /, /status, /metrics, /healthz or /readyz"})

    def do_POST(self) -> None:  # noqa: N802
        """Only the login form of a public status page."""
        length = int(self.headers.get("Content-Length") or 0)
        if self.path.split("?", 1)[0].rstrip("/") != "/login" or not 0 <= length <= 4096:
            self._send(404, {"error": "only POST /login (the token form) is served"})
            return
        verdict = self.server.access.login(self.rfile.read(length))
        if verdict.redirect:
            self._bytes(303, b"", "text/plain", [("Location", verdict.redirect), ("Set-Cookie", verdict.cookie)])
        else:
            self._bytes(401, _page("login.html"), "text/html; charset=utf-8", [])

    def _send(self, code: int, body: dict[str, Any], headers: list[tuple[str, str]] | None = None) -> None:
        self._bytes(code, json.dumps(body, default=str).encode(), "application/json", headers or [])

    def _bytes(self, code: int, data: bytes, content_type: str, headers: list[tuple[str, str]]) -> None:
        self.send_response(code)
        self.send_header("Content-Type", content_type)
        self.send_header("Content-Length", str(len(data)))
        self.send_header("Cache-Control", "no-store")
        self.send_header("X-Content-Type-Options", "nosniff")
        for name, value in headers:
            self.send_header(name, value)
        self.end_headers()
        self.wfile.write(data)

    def log_message(self, format: str, *args: Any) -> None:  # noqa: A002
        pass  # a health probe every few seconds must not fill the log


# The page is one file with its script and style inline; it talks only to this server.
_CSP = ("default-src 'none'; script-src 'unsafe-inline'; style-src 'unsafe-inline'; connect-src 'self'; "
        "img-src 'self' data:; form-action 'self'; frame-ancestors 'none'; base-uri 'none'")
_pages: dict[str, bytes] = {}


def _page(name: str) -> bytes:
    if name not in _pages:
        _pages[name] = resources.files(__package__).joinpath("web", name).read_bytes()
    return _pages[name]


class StatusServer(ThreadingHTTPServer):
    daemon_threads = True
    allow_reuse_address = True

    def __init__(self, address: tuple[str, int], status: Status, access: Access | None = None):
        self.status = status
        self.access = access or Access()
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


def start_server(address: tuple[str, int], status: Status, access: Access | None = None) -> StatusServer:
    """Bind and serve in a daemon thread. A port that cannot be bound stops the start (ConfigError naming
    STATUS_ADDR): without it the HEALTHCHECK is blind, and `supervisor health` would ask whoever holds the port."""
    try:
        server = StatusServer(address, status, access)
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
