"""ENABLE_R2_SYNC end to end: a real `supervisor run`, the stand-in ComfyUI writing outputs that its /history
lists, and a real S3-protocol server (moto over HTTP on loopback, behind a proxy that can go down). The bucket
keeps every version of an object, so "uploaded exactly once" is counted by the server itself."""

from __future__ import annotations

import io
import json
import os
import signal
import socket
import time
import uuid
from pathlib import Path

import httpx
import pytest

from supervisor import logs
from tests.standins.s3 import KEY_ID, REGION, SECRET, FlakyProxy, S3Server

pytest.importorskip("boto3")
pytestmark = pytest.mark.timeout(120)
POD = "pod-e2e-1"
# Failures show quickly: Store gives up after 2 fast tries, a failed file is tried again after 0.3-1 s.
QUICK = ("import supervisor.outputs.sync as s\n"
         "s.STORE_OPTIONS = {'attempts': 2, 'wait_initial': 0.05, 'wait_max': 0.1, 'request_attempts': 1}\n"
         "s.RETRY_INITIAL, s.RETRY_MAX = 0.3, 1.0")


def prompt(prefix: str, image: str | None = None) -> dict:
    source = {"class_type": "LoadImage", "inputs": {"image": image}} if image else \
        {"class_type": "EmptyImage", "inputs": {"width": 8, "height": 8, "batch_size": 1, "color": 0}}
    return {"1": source, "2": {"class_type": "SaveImage", "inputs": {"images": ["1", 0], "filename_prefix": prefix}}}


def queue(pod, graph: dict) -> str:
    answer = httpx.post(f"{pod.comfy_url}/prompt", json={"prompt": graph}, timeout=5, trust_env=False)
    answer.raise_for_status()
    return answer.json()["prompt_id"]


def versions(s3: S3Server, bucket: str, key: str) -> int:
    listing = s3.client().list_object_versions(Bucket=bucket, Prefix=key)
    return sum(1 for v in listing.get("Versions", []) if v["Key"] == key)


@pytest.fixture(autouse=True)
def log_stream():
    """moto (in this process) logs through the supervisor's logging: to a stream of this test's own."""
    logs.configure("info", "json", io.StringIO())


def new_bucket(server: S3Server) -> str:
    """moto keeps one store per process: every test gets a bucket of its own, keeping every version."""
    name = f"pod-outputs-{uuid.uuid4().hex[:8]}"
    server.create_bucket(name)
    server.client().put_bucket_versioning(Bucket=name, VersioningConfiguration={"Status": "Enabled"})
    return name


@pytest.fixture
def bucket():
    server = S3Server.start()
    name = new_bucket(server)
    proxy = FlakyProxy(server.port)
    yield server, proxy, name
    proxy.close()
    server.stop()


@pytest.fixture
def sync_pod(pod, bucket):
    server, proxy, name = bucket
    pod.env.update(ENABLE_R2_SYNC="true", R2_ENDPOINT=proxy.url, R2_BUCKET=name, R2_ACCESS_KEY_ID=KEY_ID,
                   R2_SECRET_ACCESS_KEY=SECRET, R2_REGION=REGION, R2_PREFIX="outputs/{pod}", RUNPOD_POD_ID=POD,
                   ENABLE_STEADYDANCER="false")
    return pod


def test_an_output_arrives_exactly_once_across_a_supervisor_restart(sync_pod, bucket, supervisor):
    server, proxy, name = bucket
    pod = sync_pod
    output = Path(pod.env["COMFYUI_DATA_DIR"]) / "output"
    state = Path(pod.env["COMFYUI_DATA_DIR"]) / ".supervisor" / "uploads"

    # Run 1: one output goes up; then the store goes away and the next one cannot.
    run = supervisor(pod, patch=QUICK)
    run.wait_for("supervise.ready")
    queue(pod, prompt("sync/first"))
    first = run.wait_for("outputs.uploaded")
    assert first["key"] == f"outputs/{POD}/sync/first_00001_.png" and first["file"] == "sync/first_00001_.png"
    status = run.status()["outputs"]
    assert status["uploaded"] == 1 and status["uploaded_bytes"] == (output / "sync/first_00001_.png").stat().st_size
    proxy.down()
    queue(pod, prompt("sync/second"))
    failed = run.wait_for("outputs.upload_failed")
    assert failed["file"] == "sync/second_00001_.png" and failed["transient"] is True
    assert "first_00001_" not in json.dumps(run.named("outputs.upload_failed"))
    metrics = httpx.get(f"{pod.status_url}/metrics", timeout=5, trust_env=False).text
    assert "supervisor_outputs_uploaded_total 1.0" in metrics and "supervisor_outputs_queued 1.0" in metrics
    run.send(signal.SIGTERM)
    assert run.wait() == 143
    # The second file waits on the volume; as if the first run had died between an upload and the removal of
    # its journal entry, the first file is pending too.
    pending = [json.loads(p.read_text())["file"] for p in (state / "pending").glob("*.json")]
    assert pending == ["sync/second_00001_.png"]
    (state / "pending" / "stale.json").write_text(json.dumps({"file": "sync/first_00001_.png", "prompt_id": "x"}))
    assert server.keys(name) == [f"outputs/{POD}/sync/first_00001_.png"]

    # Run 2, the store back: the pending file goes up, the first is not sent again, a new one goes up.
    proxy.up()
    run2 = supervisor(pod, patch=QUICK)
    second = run2.wait_for("outputs.uploaded")
    assert second["file"] == "sync/second_00001_.png"
    run2.wait_for("outputs.already_uploaded", file="sync/first_00001_.png")
    run2.wait_for("supervise.ready")
    queue(pod, prompt("sync/third"))
    run2.wait_for("outputs.uploaded", count=2)
    status = run2.status()["outputs"]
    assert status["uploaded"] == 2 and status["pending"] == 0 and status["skipped"] == 1
    page = httpx.get(f"{pod.status_url}/status", timeout=5, trust_env=False).text
    run2.send(signal.SIGTERM)
    assert run2.wait() == 143

    for which in ("first", "second", "third"):
        key = f"outputs/{POD}/sync/{which}_00001_.png"
        assert versions(server, name, key) == 1, f"{key} uploaded {versions(server, name, key)} times"
        assert server.get(name, key) == (output / f"sync/{which}_00001_.png").read_bytes()
    assert not list((state / "pending").glob("*.json"))
    printed = "".join(run.raw + run.stderr + run2.raw + run2.stderr)
    assert SECRET not in printed and SECRET not in page


class SlowProxy(FlakyProxy):
    """The proxy, at about `rate` bytes per second towards the store: an upload that takes a while."""

    rate = 4_000_000

    def _throttle(self, src: socket.socket, data: bytes) -> None:
        if src.getsockname()[1] == self.port:  # from the client, towards the store; answers go at full speed
            time.sleep(len(data) / self.rate)


def test_shutdown_waits_for_the_upload_in_flight(pod, supervisor):
    server = S3Server.start()
    name = new_bucket(server)
    proxy = SlowProxy(server.port)
    try:
        pod.env.update(ENABLE_R2_SYNC="true", R2_ENDPOINT=proxy.url, R2_BUCKET=name, R2_ACCESS_KEY_ID=KEY_ID,
                       R2_SECRET_ACCESS_KEY=SECRET, R2_REGION=REGION, R2_PREFIX="slow", ENABLE_STEADYDANCER="false",
                       SHUTDOWN_GRACE="8")
        inputs = Path(pod.env["COMFYUI_DATA_DIR"]) / "input"
        inputs.mkdir(parents=True, exist_ok=True)
        (inputs / "big.png").write_bytes(os.urandom(8_000_000))  # about 2 s through the slow proxy
        run = supervisor(pod, patch=QUICK)
        run.wait_for("supervise.ready")
        queue(pod, prompt("video/clip", image="big.png"))
        run.wait_for("outputs.uploading")
        stopped = time.monotonic()
        run.send(signal.SIGTERM)
        assert run.wait(30) == 143
        assert time.monotonic() - stopped < 8 + 2
        uploaded = run.wait_for("outputs.uploaded", timeout=1)
        exit_event = run.wait_for("supervise.exit", timeout=1)
        stopping = run.wait_for("supervise.stopping", timeout=1)
        # Still in flight when the stop came; finished before the supervisor exited.
        assert stopping["timestamp"] < uploaded["timestamp"] <= exit_event["timestamp"]
        assert uploaded["bytes"] == 8_000_000
        assert server.get(name, "slow/video/clip_00001_.png") == (inputs / "big.png").read_bytes()
    finally:
        proxy.close()
        server.stop()


def test_enable_r2_sync_needs_a_bucket():
    from supervisor.errors import ConfigError
    from supervisor.plan.environment import load_settings

    with pytest.raises(ConfigError, match="R2_BUCKET"):
        load_settings({"ENABLE_R2_SYNC": "true"})
    assert load_settings({"ENABLE_R2_SYNC": "true", "R2_BUCKET": "b"}).enable_r2_sync is True
    assert not [w for w in load_settings({"ENABLE_R2_SYNC": "true", "R2_BUCKET": "b"}).warnings if "R2" in w]
