"""`supervisor run` with the real fetch against the stand-in Hub (tests/standins/hub.py): ComfyUI starts while the
weights download, the pod is ready only when both are done; a signal during the fetch stops it keeping partials;
a failed fetch leaves ComfyUI running but the pod not ready."""

from __future__ import annotations

import random
import signal
import time
from pathlib import Path

import httpx
import pytest

from tests.standins.hub import Hub, TokenBucket

pytestmark = pytest.mark.timeout(60)
MB = 1_000_000
DEST = "loras/weights.safetensors"


@pytest.fixture
def hub(tmp_path: Path):
    with Hub(tmp_path / "hub", lfs_threshold=100_000) as server:
        yield server


def catalog(path: Path, size: int, repo_path: str = "weights.safetensors") -> Path:
    path.write_text(f'[files.weights]\nrepo = "org/repo"\npath = "{repo_path}"\ndest = "{DEST}"\nsize = {size}\n\n'
                    '[features.testfiles]\nswitch = "ENABLE_TESTFILES"\ndescription = "test weights"\n'
                    'files = ["weights"]\n')
    return path


@pytest.fixture
def fetch_pod(pod, hub, tmp_path):
    data = random.Random(5).randbytes(6 * MB)
    hub.add_file("org/repo", "weights.safetensors", data)
    pod.env.update(HF_ENDPOINT=hub.url, SUPERVISOR_CATALOG=str(catalog(tmp_path / "catalog.toml", len(data))),
                   ENABLE_TESTFILES="true", ENABLE_STEADYDANCER="false", DISK_RESERVE_GB="0",
                   DOWNLOAD_STALL_TIMEOUT="3", DOWNLOAD_RETRIES="2")
    return pod, data


def test_comfyui_starts_while_the_weights_download_and_ready_needs_both(fetch_pod, hub, supervisor):
    pod, data = fetch_pod
    hub.link = TokenBucket(4 * MB)  # all connections together: the download takes about 1.5 s
    pod.env["PREWARM"] = "true"
    run = supervisor(pod)
    answering = run.wait_for("comfyui.answering")
    body = httpx.get(f"{pod.status_url}/readyz", trust_env=False, timeout=5).json()
    fetched = run.named("fetch.done")
    if not fetched:  # still downloading while ComfyUI already answers: the two overlap
        assert body["ready"] is False and body["not_ready"][0].startswith("downloading the plan's files")
    ready = run.wait_for("supervise.ready")
    done = run.wait_for("fetch.done")
    spawned = run.wait_for("comfyui.spawned")
    assert spawned["timestamp"] < done["timestamp"]  # launched before the fetch ended
    assert answering["timestamp"] < done["timestamp"] <= ready["timestamp"]
    assert (Path(pod.env["MODELS_DIR"]) / DEST).read_bytes() == data
    assert ready["phases"]["fetch_s"] >= 1.0
    # PREWARM=true: after ready, the plan's weights are read once (into the page cache), timed.
    warmed = run.wait_for("prewarm.done")
    assert warmed["files"] == 1 and warmed["bytes"] == len(data) and warmed["seconds"] >= 0
    run.send(signal.SIGTERM)
    assert run.wait() == 143


def test_sigterm_during_the_fetch_stops_it_and_keeps_the_partial(fetch_pod, hub, supervisor):
    pod, data = fetch_pod
    hub.link = TokenBucket(1 * MB)  # about 6 s for the whole file
    run = supervisor(pod)
    run.wait_for("fetch.started")
    record = Path(pod.env["MODELS_DIR"]) / ".supervisor" / "partial" / f"{DEST}.json"
    deadline = time.monotonic() + 30
    while not record.exists():  # bytes are on the volume (the progress record says so): stop now
        assert time.monotonic() < deadline, "no progress record within 30 s"
        time.sleep(0.05)
    started = time.monotonic()
    run.send(signal.SIGTERM)
    assert run.wait() == 143
    assert time.monotonic() - started < 10  # "within about a second" is bench/supervise.py's to measure
    run.wait_for("fetch.interrupted")
    models = Path(pod.env["MODELS_DIR"])
    assert not (models / DEST).exists()
    kept = [p for p in models.rglob("*") if p.is_file() and p.stat().st_size > 0]
    assert kept, "the partial download was not kept for resume"


def test_a_failed_fetch_keeps_comfyui_running_but_not_ready(fetch_pod, hub, supervisor, tmp_path):
    pod, _ = fetch_pod
    pod.env["SUPERVISOR_CATALOG"] = str(catalog(tmp_path / "missing.toml", 1000, repo_path="nope.safetensors"))
    run = supervisor(pod)
    failed = run.wait_for("fetch.failed", timeout=30)
    assert failed["level"] == "error"
    run.wait_for("comfyui.answering")
    deadline = time.monotonic() + 10
    while True:  # the loop publishes the reason at its next tick
        body = httpx.get(f"{pod.status_url}/readyz", trust_env=False, timeout=5).json()
        if any(r.startswith("download failed") for r in body["not_ready"]) or time.monotonic() > deadline:
            break
        time.sleep(0.05)
    assert body["ready"] is False and any(r.startswith("download failed") for r in body["not_ready"])
    status = run.status()
    assert status["fetch"]["state"] == "failed" and status["comfyui"]["pid"]
    assert run.proc.poll() is None  # the supervisor keeps running
    run.send(signal.SIGTERM)
    assert run.wait() == 143
