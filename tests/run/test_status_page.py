"""The status page a person reads (`/`), its exposure (STATUS_PUBLIC + STATUS_TOKEN) and the recent-warnings ring:
a real supervisor with the stand-in ComfyUI and the stand-in Hub, the page rendered by headless Chromium."""

from __future__ import annotations

import io
import json
import os
import random
import re
import shutil
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import httpx
import pytest

from supervisor import logs
from supervisor.plan.environment import load_settings
from tests import browser
from tests.standins.hub import Hub, TokenBucket

from .conftest import REPO

pytestmark = pytest.mark.timeout(90)
MB = 1_000_000
HF_TOKEN = "hf_StatusPageSecret0123456789abcdefXYZ"
STATUS_TOKEN = "status-token-4f9a1c77e2"
# Progress reported every 0.25 s instead of 5 s, so the page can be seen moving in a short download.
FAST_PROGRESS = ("import supervisor.fetch.tuning as t\n"
                 "d = list(t.Tuning.__init__.__defaults__)\n"
                 "d[[f.name for f in __import__('dataclasses').fields(t.Tuning)].index('progress_interval')] = 0.25\n"
                 "t.Tuning.__init__.__defaults__ = tuple(d)")
needs_chromium = pytest.mark.skipif(browser.chromium() is None, reason="chromium is not installed")


def get(url: str, **kwargs) -> httpx.Response:
    return httpx.get(url, timeout=10, trust_env=False, **kwargs)


def wait_until(what, timeout: float = 30.0, every: float = 0.05):
    deadline = time.monotonic() + timeout
    while True:
        value = what()
        if value:
            return value
        if time.monotonic() > deadline:
            raise AssertionError(f"not true within {timeout} s: {what}")
        time.sleep(every)


def total_bytes(dom: str) -> int:
    match = re.search(r'id="dl-total"[^>]*data-bytes="(\d+)"', dom)
    assert match, "no download total on the page"
    return int(match.group(1))


@pytest.fixture
def downloading_pod(pod, tmp_path):
    """A pod whose plan downloads two files from the stand-in Hub at about 1 MB/s (about 8 s)."""
    with Hub(tmp_path / "hub", lfs_threshold=100_000) as hub:
        rng = random.Random(17)
        files = {"diffusion_models/stand_in_model.safetensors": 5 * MB, "vae/stand_in_vae.safetensors": 3 * MB}
        entries = []
        for i, (dest, size) in enumerate(files.items()):
            name = dest.rsplit("/", 1)[-1]
            hub.add_file("org/repo", name, rng.randbytes(size))
            entries.append(f'[files.f{i}]\nrepo = "org/repo"\npath = "{name}"\ndest = "{dest}"\nsize = {size}\n')
        catalog = tmp_path / "catalog.toml"
        catalog.write_text("\n".join(entries) + '\n[features.testfiles]\nswitch = "ENABLE_TESTFILES"\n'
                           'description = "test weights"\nfiles = ["f0", "f1"]\n')
        hub.link = TokenBucket(1 * MB)
        pod.env.update(HF_ENDPOINT=hub.url, SUPERVISOR_CATALOG=str(catalog), ENABLE_TESTFILES="true",
                       ENABLE_STEADYDANCER="false", DISK_RESERVE_GB="0", HF_TOKEN=HF_TOKEN,
                       DOWNLOAD_CONNECTIONS="2")
        yield pod, files


@needs_chromium
def test_the_page_renders_and_its_progress_bars_move_during_the_fetch(downloading_pod, supervisor, tmp_path):
    pod, files = downloading_pod
    run = supervisor(pod, patch=FAST_PROGRESS)
    page = f"{pod.status_url}/"

    def progress() -> dict:
        try:
            status = run.status()
        except httpx.HTTPError:  # not listening yet
            return {}
        return ((status.get("fetch") or {}).get("progress") or {}).get("total") or {}

    wait_until(lambda: progress().get("bytes", 0) >= 0.5 * MB)
    before = browser.dump_dom(page)
    shot_before = browser.screenshot(page, tmp_path / "status-page-fetching.png")
    first = total_bytes(before)
    assert 0 < first < sum(files.values())
    # Every file of the plan has its own row, with a bar, its bytes and its state.
    for dest in files:
        assert f'data-dest="{dest}"' in before
    assert 'role="progressbar"' in before and "B/s" in before and "left" in before  # speed, time left
    assert 'class="badge fetching"' in before  # the phase, as a badge
    assert "downloading the plan's files" in before  # why the pod is not ready yet

    wait_until(lambda: progress().get("bytes", 0) >= first + 1.5 * MB)
    after = browser.dump_dom(page)
    browser.screenshot(page, tmp_path / "status-page-fetching-later.png")
    assert total_bytes(after) > first  # the bars moved

    run.wait_for("supervise.ready", timeout=60)
    ready = browser.dump_dom(page)
    shot_ready = browser.screenshot(page, tmp_path / "status-page-ready.png")
    assert 'class="badge ready"' in ready and "Fetch done" in ready
    assert "ComfyUI" in ready and "0.3.64" in ready  # ComfyUI's state and version
    assert "plan.warning" in ready  # the recent warnings (no GPU here: the plan warns)
    assert shot_before.stat().st_size > 10_000 and shot_ready.stat().st_size > 10_000

    # No secret on the page, in /status or in /metrics (the Hub received the token, so it was in use).
    status_text = get(f"{pod.status_url}/status").text
    metrics_text = get(f"{pod.status_url}/metrics").text
    for text in (before, after, ready, status_text, metrics_text):
        assert HF_TOKEN not in text
    keep = os.environ.get("STATUS_PAGE_SCREENSHOTS")  # to refresh the committed screenshots
    if keep:
        for shot in tmp_path.glob("status-page-*.png"):
            shutil.copy(shot, Path(keep) / shot.name)
    run.send(signal.SIGTERM)
    assert run.wait() == 143


def test_status_and_probes_keep_their_shape(pod, supervisor):
    run = supervisor(pod)
    run.wait_for("supervise.ready")
    page = get(f"{pod.status_url}/")
    assert page.status_code == 200 and page.headers["content-type"].startswith("text/html")
    assert "connect-src 'self'" in page.headers["content-security-policy"]
    assert "<script" in page.text and "http" not in re.sub(r"https?://(www\.w3\.org)", "", page.text).split(
        "<script", 1)[1].split("fetch(", 1)[0]  # nothing loaded from another host
    status = get(f"{pod.status_url}/status")
    assert status.headers["content-type"] == "application/json" and status.json()["phase"] == "ready"
    assert get(f"{pod.status_url}/readyz").json() == {"ready": True, "not_ready": []}
    assert get(f"{pod.status_url}/healthz").json()["live"] is True
    assert get(f"{pod.status_url}/nothing").status_code == 404
    run.send(signal.SIGTERM)
    assert run.wait() == 143


def _outside_address() -> str | None:
    """An address of this machine that is not loopback (how another host, or RunPod's proxy, reaches the pod)."""
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
        try:
            s.connect(("192.0.2.123", 9))  # TEST-NET: nothing is sent, the kernel only picks a source address
            address = s.getsockname()[0]
        except OSError:
            return None
    return None if address.startswith("127.") else address


def test_public_status_needs_the_token_except_for_the_probes(pod, supervisor):
    outside = _outside_address()
    if outside is None:
        pytest.skip("no non-loopback address on this machine")
    pod.env.update(STATUS_PUBLIC="true", STATUS_TOKEN=STATUS_TOKEN, HF_TOKEN=HF_TOKEN)
    port = pod.env["STATUS_ADDR"].rpartition(":")[2]
    run = supervisor(pod)
    run.wait_for("supervise.ready")
    started = run.wait_for("supervise.start")
    assert started["status_addr"] == f"0.0.0.0:{port}"
    base = f"http://{outside}:{port}"

    # The probes stay open; everything else needs the token.
    assert get(f"{base}/healthz").status_code == 200
    assert get(f"{base}/readyz").json()["ready"] is True
    for path in ("/status", "/metrics"):
        denied = get(base + path)
        assert denied.status_code == 401 and denied.headers["www-authenticate"].startswith("Bearer")
    login = get(f"{base}/")
    assert login.status_code == 401 and 'action="./login"' in login.text and "phase" not in login.text
    assert get(f"{base}/status", headers={"Authorization": "Bearer wrong"}).status_code == 401

    # Scripts and Prometheus: a bearer header.
    bearer = {"Authorization": f"Bearer {STATUS_TOKEN}"}
    assert get(f"{base}/status", headers=bearer).json()["phase"] == "ready"
    assert "comfyui_queue_pending" in get(f"{base}/metrics", headers=bearer).text
    # A browser: the form, or ?token= once; either sets a cookie that is not the token, and the URL loses it.
    form = httpx.post(f"{base}/login", data={"token": STATUS_TOKEN}, trust_env=False, timeout=10)
    assert form.status_code == 303 and form.headers["location"] == "./"
    cookie = form.headers["set-cookie"]
    assert "HttpOnly" in cookie and "SameSite=Strict" in cookie and STATUS_TOKEN not in cookie
    assert httpx.post(f"{base}/login", data={"token": "nope"}, trust_env=False, timeout=10).status_code == 401
    link = get(f"{base}/?token={STATUS_TOKEN}")
    assert link.status_code == 303 and link.headers["location"] == "./" and STATUS_TOKEN not in link.headers["location"]
    with httpx.Client(base_url=base, trust_env=False, timeout=10) as client:
        client.get(f"/?token={STATUS_TOKEN}")  # takes the cookie
        assert client.get("/").status_code == 200 and "<script" in client.get("/").text
        assert client.get("/status").json()["ready"] is True

    # The pod itself (loopback) needs no token: the health command and the ComfyUI node read it that way.
    assert get(f"http://127.0.0.1:{port}/status").status_code == 200
    health = subprocess.run([sys.executable, "-m", "supervisor", "health"], cwd=REPO, capture_output=True, text=True,
                            timeout=30, env={**pod.env})
    assert health.returncode == 0, health.stdout
    # The tokens never show: not in the logs, not in /status.
    status_text = get(f"{base}/status", headers=bearer).text
    run.send(signal.SIGTERM)
    assert run.wait() == 143
    printed = "".join(run.raw) + "".join(run.stderr)
    for secret in (STATUS_TOKEN, HF_TOKEN):
        assert secret not in printed and secret not in status_text


def test_public_status_without_a_token_is_open_with_a_warning():
    settings = load_settings({"STATUS_PUBLIC": "true"})
    assert any("STATUS_PUBLIC=true without STATUS_TOKEN" in w for w in settings.warnings)
    settings = load_settings({"STATUS_PUBLIC": "true", "STATUS_TOKEN": STATUS_TOKEN})
    assert not any("STATUS_TOKEN" in w for w in settings.warnings)
    assert STATUS_TOKEN in settings.secrets() and STATUS_TOKEN not in repr(settings)
    # Where it listens: every interface at STATUS_ADDR's port, or STATUS_ADDR itself when that is not loopback.
    from supervisor.run.access import bind_address

    assert bind_address(load_settings({"STATUS_PUBLIC": "true", "STATUS_ADDR": "127.0.0.1:9100"})) == ("0.0.0.0", 9100)
    assert bind_address(load_settings({"STATUS_PUBLIC": "true", "STATUS_ADDR": "0.0.0.0:8189"})) == ("0.0.0.0", 8189)
    assert bind_address(load_settings({"STATUS_ADDR": "127.0.0.1:9100"})) == ("127.0.0.1", 9100)


def test_recent_warnings_are_kept_redacted_and_bounded():
    stream = io.StringIO()
    logs.configure("info", "json", stream)
    logs.register_secret("ring-secret-value-123")
    before, counts_before = logs.recent_events()
    log = logs.get_logger("test")
    log.info("test.quiet", n=1)
    log.warning("test.loud", detail="token ring-secret-value-123 in a message", n=2)
    log.error("test.failed", error="x" * 5000)
    recent, counts = logs.recent_events()
    new = recent[len(before):] if len(before) < logs.RECENT_KEEP else recent[-2:]
    assert [e["event"] for e in new][-2:] == ["test.loud", "test.failed"]
    assert counts["warning"] == counts_before["warning"] + 1 and counts["error"] == counts_before["error"] + 1
    loud, failed = new[-2], new[-1]
    assert "ring-secret-value-123" not in json.dumps(recent) and "***" in loud["fields"]
    assert loud["level"] == "warning" and failed["level"] == "error"
    assert len(failed["fields"]) <= logs.RECENT_TEXT
    for i in range(logs.RECENT_KEEP + 5):
        log.warning("test.flood", i=i)
    recent, _ = logs.recent_events()
    assert len(recent) == logs.RECENT_KEEP and json.loads(recent[-1]["fields"])["i"] == logs.RECENT_KEEP + 4


def test_status_and_metrics_are_scrubbed_even_if_a_secret_reached_the_state():
    from supervisor.run.status import Status, start_server

    from .conftest import free_port

    secret = "leaked-secret-value-0427"
    logs.register_secret(secret)
    status = Status()
    status.append_exit({"class": "crash", "message": f"RuntimeError: bad key {secret}"})
    status.set(services={f"svc-{secret}": {"state": "running"}})
    port = free_port()
    server = start_server(("127.0.0.1", port), status)
    try:
        text = get(f"http://127.0.0.1:{port}/status").text
        metrics_text = get(f"http://127.0.0.1:{port}/metrics").text
    finally:
        server.server_close()
    assert "RuntimeError: bad key ***" in text and secret not in text
    assert 'service="svc-***"' in metrics_text and secret not in metrics_text


def test_without_a_token_a_public_status_is_open_and_with_one_it_is_not():
    outside = _outside_address()
    if outside is None:
        pytest.skip("no non-loopback address on this machine")
    from supervisor.run.access import Access
    from supervisor.run.status import Status, start_server

    from .conftest import free_port

    for token, expected in (("", 200), (STATUS_TOKEN, 401)):
        port = free_port()
        server = start_server(("0.0.0.0", port), Status(), Access(token))
        try:
            assert get(f"http://{outside}:{port}/status").status_code == expected
            assert get(f"http://{outside}:{port}/metrics").status_code == expected
            assert get(f"http://{outside}:{port}/healthz").status_code == 200
        finally:
            server.server_close()
