"""The output sync (ENABLE_R2_SYNC) against a real S3-protocol server (moto over HTTP on loopback), also behind a
proxy that goes down and comes back: each file once, markers and the pending journal on the volume, multipart."""

from __future__ import annotations

import hashlib
import io
import json
import os
import threading
import time
from pathlib import Path
from types import SimpleNamespace

import pytest

from supervisor import logs
from supervisor.outputs import sync
from tests.standins.s3 import KEY_ID, REGION, SECRET, FlakyProxy, S3Server

pytest.importorskip("boto3")
pytestmark = pytest.mark.timeout(90)
BUCKET = "pod-outputs-sync-unit"  # moto keeps one store per process: a name no other test uses
MiB = 1024 * 1024


@pytest.fixture(scope="module")
def s3():
    server = S3Server.start()
    server.create_bucket(BUCKET)
    server.client().put_bucket_versioning(Bucket=BUCKET, VersioningConfiguration={"Status": "Enabled"})
    yield server
    server.stop()


@pytest.fixture(autouse=True)
def log_stream():
    """The worker logs from its thread: to a stream of this test's own (another test's may be closed by now)."""
    stream = io.StringIO()
    logs.configure("info", "json", stream)
    yield stream


@pytest.fixture(autouse=True)
def quick(monkeypatch):
    """Short waits: Store gives up after 2 quick tries, the sync retries a failed file after 0.2 s."""
    monkeypatch.setattr(sync, "STORE_OPTIONS", {"attempts": 2, "wait_initial": 0.05, "wait_max": 0.1,
                                                "request_attempts": 1})
    monkeypatch.setattr(sync, "RETRY_INITIAL", 0.2)
    monkeypatch.setattr(sync, "RETRY_MAX", 0.5)


class Reports:
    """What the worker posts (the loop would publish each as status["outputs"])."""

    def __init__(self):
        self.items: list[dict] = []
        self.cond = threading.Condition()

    def __call__(self, kind: str, generation: int, **data) -> None:
        assert kind == "outputs"
        with self.cond:
            self.items.append(data)
            self.cond.notify_all()

    def wait(self, check, timeout: float = 30.0) -> dict:
        deadline = time.monotonic() + timeout
        with self.cond:
            while True:
                for item in self.items:
                    if check(item):
                        return item
                left = deadline - time.monotonic()
                if left <= 0:
                    raise AssertionError(f"no report matching {check} in {timeout} s; last {self.items[-1:]}")
                self.cond.wait(left)


def settings(tmp_path: Path, endpoint: str, prefix: str = "pods/{pod}") -> SimpleNamespace:
    return SimpleNamespace(comfyui_data_dir=tmp_path / "data", r2_bucket=BUCKET, r2_endpoint=endpoint,
                           r2_region=REGION, r2_access_key_id=KEY_ID, r2_secret_access_key=SECRET,
                           r2_public_url="", r2_url_expiry=3600, r2_prefix=prefix)


def output(tmp_path: Path, name: str, size: int = 2048, subfolder: str = "") -> dict[str, str]:
    folder = tmp_path / "data" / "output" / subfolder
    folder.mkdir(parents=True, exist_ok=True)
    (folder / name).write_bytes(os.urandom(size))
    return {"filename": name, "subfolder": subfolder}


def versions(s3: S3Server, key: str) -> int:
    listing = s3.client().list_object_versions(Bucket=BUCKET, Prefix=key)
    return sum(1 for v in listing.get("Versions", []) if v["Key"] == key)


def test_each_file_once_with_a_marker_and_nothing_pending(s3, tmp_path):
    files = [output(tmp_path, "ComfyUI_00001_.png"), output(tmp_path, "dance_00001.mp4", subfolder="SteadyDancer")]
    reports = Reports()
    worker = sync.OutputSync(settings(tmp_path, s3.url), {"RUNPOD_POD_ID": "abc123"}, reports)
    worker.start()
    assert worker.add("prompt-1", files) == 2
    reports.wait(lambda r: r["uploaded"] == 2)
    worker.stop()
    worker.thread.join(10)
    root = tmp_path / "data" / "output"
    for key, rel in (("pods/abc123/ComfyUI_00001_.png", "ComfyUI_00001_.png"),
                     ("pods/abc123/SteadyDancer/dance_00001.mp4", "SteadyDancer/dance_00001.mp4")):
        assert s3.get(BUCKET, key) == (root / rel).read_bytes()
        marker = json.loads((tmp_path / "data/.supervisor/uploads/done" / f"{rel}.json").read_text())
        assert marker["key"] == key and marker["size"] == (root / rel).stat().st_size
    assert not list((tmp_path / "data/.supervisor/uploads/pending").glob("*.json"))

    # Another run on the same volume is handed the same files (a journal left behind, or the history listing them
    # again): the markers keep them from going up twice.
    reports2 = Reports()
    again = sync.OutputSync(settings(tmp_path, s3.url), {"RUNPOD_POD_ID": "abc123"}, reports2)
    again.start()
    again.add("prompt-1", files)
    reports2.wait(lambda r: r["skipped"] == 2)
    again.stop()
    again.thread.join(10)
    assert reports2.items[-1]["uploaded"] == 0
    assert versions(s3, "pods/abc123/ComfyUI_00001_.png") == 1
    assert versions(s3, "pods/abc123/SteadyDancer/dance_00001.mp4") == 1


def test_a_server_that_fails_and_recovers(s3, tmp_path):
    proxy = FlakyProxy(s3.port)
    proxy.down()
    files = [output(tmp_path, "flaky_00001_.png")]
    reports = Reports()
    worker = sync.OutputSync(settings(tmp_path, proxy.url, prefix="flaky"), {}, reports)
    worker.start()
    worker.add("p", files)
    failed = reports.wait(lambda r: r["failures"] >= 2)  # failed, queued again, failed again
    assert failed["pending"] == 1 and "flaky_00001_.png" in failed["last_error"]
    assert SECRET not in json.dumps(reports.items)
    proxy.up()
    done = reports.wait(lambda r: r["uploaded"] == 1)
    assert done["last_error"] is None and done["pending"] == 0
    worker.stop()
    worker.thread.join(10)
    proxy.close()
    assert s3.get(BUCKET, "flaky/flaky_00001_.png") == (tmp_path / "data/output/flaky_00001_.png").read_bytes()
    assert versions(s3, "flaky/flaky_00001_.png") == 1


def test_pending_files_survive_a_restart(s3, tmp_path):
    proxy = FlakyProxy(s3.port)
    proxy.down()
    reports = Reports()
    first = sync.OutputSync(settings(tmp_path, proxy.url, prefix="restart"), {}, reports)
    first.start()
    first.add("p", [output(tmp_path, "late_00001_.png")])
    reports.wait(lambda r: r["failures"] >= 1)
    first.stop()
    first.thread.join(10)
    pending = list((tmp_path / "data/.supervisor/uploads/pending").glob("*.json"))
    assert len(pending) == 1 and json.loads(pending[0].read_text())["file"] == "late_00001_.png"
    # Added while stopped: journaled at once, not lost.
    first.add("q", [output(tmp_path, "later_00001_.png")])
    assert len(list((tmp_path / "data/.supervisor/uploads/pending").glob("*.json"))) == 2

    proxy.up()
    reports2 = Reports()
    second = sync.OutputSync(settings(tmp_path, proxy.url, prefix="restart"), {}, reports2)
    second.start()
    reports2.wait(lambda r: r["uploaded"] == 2)
    second.stop()
    second.thread.join(10)
    proxy.close()
    assert versions(s3, "restart/late_00001_.png") == 1 and versions(s3, "restart/later_00001_.png") == 1
    assert not list((tmp_path / "data/.supervisor/uploads/pending").glob("*.json"))


def test_a_large_video_goes_up_in_parts_with_progress(s3, tmp_path, monkeypatch):
    monkeypatch.setattr(sync, "STORE_OPTIONS", {**sync.STORE_OPTIONS, "multipart_threshold": 5 * MiB,
                                                "multipart_chunk": 5 * MiB})
    files = [output(tmp_path, "video_00001.mp4", size=12 * MiB, subfolder="SteadyDancer")]
    reports = Reports()
    worker = sync.OutputSync(settings(tmp_path, s3.url, prefix="big"), {}, reports)
    worker.start()
    worker.add("p", files)
    started = reports.wait(lambda r: r["current"] is not None)
    assert started["current"]["file"] == "SteadyDancer/video_00001.mp4" and started["current"]["size"] == 12 * MiB
    reports.wait(lambda r: r["uploaded"] == 1)
    worker.stop()
    worker.thread.join(10)
    head = s3.client().head_object(Bucket=BUCKET, Key="big/SteadyDancer/video_00001.mp4")
    assert head["ETag"].strip('"').endswith("-3") and head["ContentType"] == "video/mp4"
    body = s3.get(BUCKET, "big/SteadyDancer/video_00001.mp4")
    assert hashlib.sha256(body).digest() == hashlib.sha256(
        (tmp_path / "data/output/SteadyDancer/video_00001.mp4").read_bytes()).digest()


def test_a_file_outside_the_output_folder_is_refused(s3, tmp_path):
    worker = sync.OutputSync(settings(tmp_path, s3.url), {}, Reports())
    (tmp_path / "data" / "output").mkdir(parents=True)
    assert worker.add("p", [{"filename": "passwd", "subfolder": "../../../../etc"}]) == 0


def test_the_pod_id_is_kept_on_the_volume(tmp_path):
    first = sync.pod_name(SimpleNamespace(comfyui_data_dir=tmp_path), {})
    assert first.startswith("pod-") and sync.pod_name(SimpleNamespace(comfyui_data_dir=tmp_path), {}) == first
    assert sync.pod_name(SimpleNamespace(comfyui_data_dir=tmp_path), {"RUNPOD_POD_ID": "x1"}) == "x1"


def test_a_second_instance_outputs_go_under_its_folder(s3, tmp_path):
    """With one ComfyUI per GPU, instance 1 writes to output/gpu1/: its files keep that folder in the key."""
    files = [output(tmp_path, "gpu_00001_.png", subfolder="gpu1/runs")]
    reports = Reports()
    worker = sync.OutputSync(settings(tmp_path, s3.url, prefix="multi"), {}, reports)
    worker.start()
    worker.add("p", [{"filename": "gpu_00001_.png", "subfolder": "runs"}],
               output_dir=tmp_path / "data" / "output" / "gpu1")
    reports.wait(lambda r: r["uploaded"] == 1)
    worker.stop()
    worker.thread.join(10)
    assert files and s3.get(BUCKET, "multi/gpu1/runs/gpu_00001_.png") == (
        tmp_path / "data/output/gpu1/runs/gpu_00001_.png").read_bytes()
