"""Fixtures of the serverless tests: a stand-in ComfyUI process, the supervisor's real status endpoint, an HTTP
sink standing in for RunPod's job-output URL (progress updates), and the `supervisor run` fixtures of
tests/run for the end-to-end tests."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import threading
import time
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import httpx
import pytest

from supervisor.run.status import Status, StatusServer
from tests.standins.comfyui_files import png
from tests.run.conftest import REPO, free_port, pod, supervisor  # noqa: F401 - fixtures used here

PNG = png("an input image")
MP4 = b"\x00\x00\x00\x18ftypisom\x00\x00\x02\x00isomiso2" + b"\x00" * 64


@dataclass
class StandinComfy:
    proc: subprocess.Popen
    url: str
    record: Path
    input_dir: Path
    output_dir: Path

    def records(self, event: str) -> list[dict[str, Any]]:
        try:
            lines = self.record.read_text().splitlines()
        except FileNotFoundError:
            return []
        return [r for r in map(json.loads, lines) if r.get("event") == event]

    def wait_record(self, event: str, timeout: float = 10.0, **match: Any) -> dict[str, Any]:
        deadline = time.monotonic() + timeout
        while True:
            found = [r for r in self.records(event) if all(r.get(k) == v for k, v in match.items())]
            if found:
                return found[0]
            assert time.monotonic() < deadline, f"no {event} {match} from the stand-in in {timeout} s"
            time.sleep(0.02)

    def history(self, prompt_id: str) -> dict[str, Any]:
        return httpx.get(f"{self.url}/history/{prompt_id}", trust_env=False).json().get(prompt_id, {})


@pytest.fixture
def standin_comfy(tmp_path):
    """Factory: standin_comfy(modes="") -> a running stand-in ComfyUI with input/output folders in tmp_path."""
    started: list[subprocess.Popen] = []

    def start(modes: str = "", prompt_seconds: float = 0.05) -> StandinComfy:
        port = free_port()
        base = tmp_path / f"comfy-{port}"
        for sub in ("input", "output"):
            (base / sub).mkdir(parents=True)
        env = {**os.environ, "STANDIN_MODE": modes, "STANDIN_RECORD": str(base / "record.jsonl"),
               "STANDIN_PROMPT_SECONDS": str(prompt_seconds)}
        proc = subprocess.Popen([sys.executable, "-m", "tests.standins.comfyui", "--listen", "127.0.0.1", "--port",
                                 str(port), "--input-directory", str(base / "input"), "--output-directory",
                                 str(base / "output")], cwd=REPO, env=env, stdout=subprocess.DEVNULL,
                                stderr=subprocess.DEVNULL)
        started.append(proc)
        comfy = StandinComfy(proc, f"http://127.0.0.1:{port}", base / "record.jsonl", base / "input", base / "output")
        comfy.wait_record("listening", timeout=20)
        return comfy

    yield start
    for proc in started:
        proc.kill()
        proc.wait(10)


@pytest.fixture
def status_endpoint():
    """The supervisor's real status endpoint, with a Status the test sets (ready or not, ComfyUI's URL)."""
    status = Status()
    server = StatusServer(("127.0.0.1", 0), status)
    server.start()
    status.beat()
    yield status, f"http://127.0.0.1:{server.server_address[1]}"
    server.server_close()  # its thread polls once an hour (status.py); it is a daemon and ends with the tests


def set_ready(status: Status, url: str, ready: bool = True, reasons: list[str] | None = None) -> None:
    status.set(ready=ready, not_ready=[] if ready else (reasons or ["starting"]), comfyui={"url": url})


@dataclass
class Sink:
    """Stands in for RunPod's job-output URL: records what the SDK posts (progress updates)."""

    url: str
    posts: list[dict[str, Any]] = field(default_factory=list)
    cond: threading.Condition = field(default_factory=threading.Condition)

    def wait(self, predicate, timeout: float = 20.0) -> list[dict[str, Any]]:
        deadline = time.monotonic() + timeout
        with self.cond:
            while not predicate(self.posts):
                left = deadline - time.monotonic()
                assert left > 0, f"not seen in {timeout} s; posts: {self.posts}"
                self.cond.wait(left)
            return list(self.posts)


@pytest.fixture
def progress_sink():
    sink: Sink

    class Handler(BaseHTTPRequestHandler):
        def do_POST(self) -> None:  # noqa: N802
            body = self.rfile.read(int(self.headers.get("Content-Length") or 0))
            try:
                data = json.loads(body)
            except ValueError:
                data = {"raw": body.decode(errors="replace")}
            with sink.cond:
                sink.posts.append({"path": self.path, "job": self.headers.get("X-Request-ID"), "data": data})
                sink.cond.notify_all()
            self.send_response(200)
            self.send_header("Content-Length", "0")
            self.end_headers()

        def log_message(self, format: str, *args: Any) -> None:  # noqa: A002
            pass

    server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    sink = Sink(url=f"http://127.0.0.1:{server.server_address[1]}")
    threading.Thread(target=server.serve_forever, kwargs={"poll_interval": 0.1}, daemon=True).start()
    yield sink
    server.shutdown()
    server.server_close()
