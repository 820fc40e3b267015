"""The supervisor's parts on their own: child output, the status endpoint and `supervisor health`, prewarming,
and Init's spawn/reap primitives."""

from __future__ import annotations

import argparse
import io
import json
import os
import signal
import sys
import threading
import time

import httpx
import pytest

from supervisor import logs
from supervisor.run.health import command as health
from supervisor.run.init import Init
from supervisor.run.output import LineReader, LogFile
from supervisor.run.prewarm import prewarm
from supervisor.run.status import Status, start_server

from .conftest import free_port


@pytest.fixture
def events():
    stream = io.StringIO()
    logs.configure("debug", "json", stream=stream)
    yield lambda: [json.loads(line) for line in stream.getvalue().splitlines() if line.startswith("{")]
    logs.configure("info", "auto")


def test_lines_become_events_and_file_lines(tmp_path, events):
    logs.register_secret("sup3r-secret-value")
    r, w = os.pipe()
    os.set_blocking(r, False)
    seen: list[str] = []
    reader = LineReader(r, "comfyui", log_file=LogFile(tmp_path / "c.log"), on_line=seen.append)
    os.write(w, b"first line\r\nTraceback (most recent call last):\n  token sup3r-secret-value\npart")
    assert reader.on_readable() is True
    os.write(w, b"ial\rprogress 10%\rprogress 20%\rprogress 30%\r")
    reader.on_readable()
    os.close(w)
    assert reader.on_readable() is False  # end of file: the partial line is flushed
    assert seen[:3] == ["first line", "Traceback (most recent call last):", "  token ***"]
    # Carriage-return segments (progress bars) are emitted at most once a second; the last state is kept.
    assert seen[3:] == ["partial", "progress 30%"]
    emitted = [e for e in events() if e["event"] == "comfyui.log"]
    assert emitted[0] == {**emitted[0], "source": "comfyui", "line": "first line", "level": "info"}
    assert emitted[1]["level"] == "warning"  # a traceback stands out
    text = (tmp_path / "c.log").read_text()
    assert "sup3r-secret-value" not in text and text.splitlines()[0].endswith("Z first line")
    reader.close()


def test_node_pack_errors_stand_out_without_colour_codes(tmp_path, events):
    # Lines as ComfyUI printed them on the H100 run: coloured node-pack logger output and ComfyUI's own errors.
    r, w = os.pipe()
    os.set_blocking(r, False)
    reader = LineReader(r, "comfyui", log_file=LogFile(tmp_path / "c.log"))
    os.write(w, b"[VideoHelperSuite] - \x1b[0;31mERROR\x1b[0m - No valid ffmpeg found.\n"
                b"Failed to initialize database. Please ensure you have installed the latest requirements.\n"
                b"Import times for custom nodes:\n")
    reader.on_readable()
    os.close(w)
    reader.on_readable()
    emitted = [(e["line"], e["level"]) for e in events() if e["event"] == "comfyui.log"]
    assert emitted == [("[VideoHelperSuite] - ERROR - No valid ffmpeg found.", "warning"),
                       ("Failed to initialize database. Please ensure you have installed the latest requirements.",
                        "warning"),
                       ("Import times for custom nodes:", "info")]
    assert "\x1b" not in (tmp_path / "c.log").read_text()
    reader.close()


def test_status_endpoint_and_health_command(events):
    status = Status()
    port = free_port()
    server = start_server(("127.0.0.1", port), status)
    assert server is not None
    base = f"http://127.0.0.1:{port}"

    def check(*flags: str) -> tuple[int, str]:
        args = argparse.Namespace(addr=None, live="--live" in flags, timeout=2.0)
        out = io.StringIO()
        old, sys.stdout = sys.stdout, out
        try:
            code = health(args, {"STATUS_ADDR": f"0.0.0.0:{port}"})
        finally:
            sys.stdout = old
        return code, out.getvalue().strip()

    try:
        status.set(ready=False, not_ready=["downloading the plan's files: 1.0 of 30.0 GB (3%)"], phase="fetching")
        assert httpx.get(f"{base}/readyz", trust_env=False).status_code == 503
        assert check() == (1, "not ready: downloading the plan's files: 1.0 of 30.0 GB (3%)")
        assert check("--live") == (0, "live")
        status.fetch_progress({"total": {"bytes": 1, "size": 2}})
        assert httpx.get(f"{base}/status", trust_env=False).json()["fetch"]["progress"]["total"]["size"] == 2
        status.set(ready=True, not_ready=[], phase="ready")
        assert check() == (0, "ready")
        status.set(live=False)
        assert check("--live")[0] == 1
        assert httpx.get(f"{base}/nope", trust_env=False).status_code == 404
        status._beat -= 60  # the loop stopped beating
        status.set(live=True)
        code, text = check("--live")
        assert code == 1 and "unresponsive" in text
    finally:
        server.server_close()
    code, text = check()
    assert code == 1 and text.startswith("unhealthy: no answer")
    args = argparse.Namespace(addr="nonsense", live=False, timeout=1.0)
    assert health(args, {}) == 1


def test_prewarm_reads_each_file_once_within_the_budget(tmp_path):
    files = []
    for name, size in (("a.bin", 3_000_000), ("b.bin", 1_000_000), ("c.bin", 5_000_000)):
        path = tmp_path / name
        path.write_bytes(os.urandom(size))
        files.append(path)
    result = prewarm(files, threading.Event(), budget=4_500_000)
    assert result.files == 2 and result.bytes == 4_000_000
    assert result.skipped == [str(tmp_path / "c.bin")]
    stop = threading.Event()
    stop.set()
    stopped = prewarm(files, stop, budget=10**9)
    assert stopped.stopped and stopped.bytes == 0


def test_init_spawn_and_reap_statuses(tmp_path):
    init = Init()
    try:
        exits3 = init.spawn(["/bin/sh", "-c", "echo out; echo err >&2; exit 3"], name="t", cwd=tmp_path)
        missing = init.spawn(["/nonexistent/prog"], name="missing", cwd=tmp_path)
        direct_missing = init.spawn(["/nonexistent/prog"], name="direct")
        killed = init.spawn(["/bin/sh", "-c", "kill -USR1 $$; sleep 5"], name="killed")
        deadline = time.monotonic() + 10
        while any(c.running for c in (exits3, missing, direct_missing, killed)) and time.monotonic() < deadline:
            init.pump(0.05)
        assert exits3.returncode == 3 and exits3.code == 3
        assert os.read(exits3.output, 100) == b"out\nerr\n"
        assert missing.returncode == 127 and direct_missing.returncode == 127
        assert killed.signal == signal.SIGUSR1 and killed.returncode == 128 + signal.SIGUSR1
        assert {c.name for c in init.take_exited()} == {"t", "missing", "direct", "killed"}
        assert init.children == {}
    finally:
        for child in (exits3, missing, killed):
            if child.output is not None:
                os.close(child.output)
        init.close()
