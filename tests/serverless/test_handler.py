"""One job through the handler against a stand-in ComfyUI process and the supervisor's real status endpoint:
outputs inline or in a real S3 server, ComfyUI's errors as job errors, and a cancelled or timed-out job taking its
prompt back."""

from __future__ import annotations

import asyncio
import base64
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import httpx
import pytest

from supervisor.serverless import handler as handler_module
from supervisor.serverless.handler import Worker
from supervisor.serverless.pod import Pod
from tests.serverless.conftest import PNG, set_ready

pytestmark = pytest.mark.timeout(90)
EMPTY = {"1": {"class_type": "EmptyImage", "inputs": {"width": 8, "height": 8, "batch_size": 1, "color": 0}},
         "2": {"class_type": "SaveImage", "inputs": {"images": ["1", 0], "filename_prefix": "job/out"}}}
ECHO = {"1": {"class_type": "LoadImage", "inputs": {"image": "mine.png"}},
        "2": {"class_type": "SaveImage", "inputs": {"images": ["1", 0], "filename_prefix": "echo"}}}


def worker(status_url: str, tmp_path, **kw) -> Worker:
    return Worker(pod=Pod(status_url, "http://127.0.0.1:1", poll=0.05), resolved_dir=tmp_path / "resolved",
                  poll=0.05, **kw)


def run(w: Worker, raw, job_id: str = "job-1", reports: list | None = None):
    return asyncio.run(w.run(job_id, raw, (reports if reports is not None else []).append))


def test_a_job_uploads_its_image_runs_and_returns_the_output_inline(standin_comfy, status_endpoint, tmp_path):
    comfy = standin_comfy("validate")
    status, url = status_endpoint
    set_ready(status, comfy.url)
    reports: list = []
    result = run(worker(url, tmp_path), {"workflow": ECHO, "images": [
        {"name": "mine.png", "image": base64.b64encode(PNG).decode()}]}, reports=reports)
    assert "error" not in result, result
    (image,) = result["images"]
    assert (image["filename"], image["node"], image["kind"], image["type"]) == ("echo_00001_.png", "2", "images",
                                                                                "base64")
    assert base64.b64decode(image["data"]) == PNG  # the uploaded file went through LoadImage -> SaveImage
    assert (comfy.input_dir / "mine.png").read_bytes() == PNG
    stages = [r["stage"] for r in reports]
    # (queued/running show only if a poll sees them: the cancel tests wait for those)
    assert stages[0] == "uploading_inputs" and "submitted" in stages and stages[-1] == "collecting_outputs"


def test_comfyuis_node_errors_are_the_job_error(standin_comfy, status_endpoint, tmp_path):
    comfy = standin_comfy("validate")
    status, url = status_endpoint
    set_ready(status, comfy.url)
    bad = {"1": {"class_type": "EmptyImage", "inputs": {"width": 0, "height": 8, "batch_size": 1}},
           "2": {"class_type": "SaveImage", "inputs": {"images": ["1", 0], "filename_prefix": "x"}},
           "3": {"class_type": "LoadImage", "inputs": {"image": "never-uploaded.png"}},
           "4": {"class_type": "SaveImage", "inputs": {"images": ["3", 0], "filename_prefix": "y"}}}
    result = run(worker(url, tmp_path), {"workflow": bad})
    error = result["error"]
    assert error.startswith("ComfyUI rejected the workflow (prompt_outputs_failed_validation)")
    assert "node 1 (EmptyImage): Value 0 smaller than min of 1 (width)" in error
    assert "node 1 (EmptyImage): Required input is missing (color)" in error
    assert "node 3 (LoadImage): Custom validation failed for node (image - Invalid image file: never-uploaded.png)" \
        in error
    assert set(result["details"]["node_errors"]) == {"1", "3"}
    assert comfy.records("prompt_done") == []


def test_an_out_of_memory_prompt_is_a_job_error_with_comfyuis_message(standin_comfy, status_endpoint, tmp_path):
    comfy = standin_comfy("prompt_oom")
    status, url = status_endpoint
    set_ready(status, comfy.url)
    result = run(worker(url, tmp_path), {"workflow": EMPTY})
    assert result["error"].startswith("ComfyUI ran out of GPU memory in node 1 (EmptyImage): CUDA out of memory.")
    assert result["details"]["out_of_memory"] is True


def test_a_cancelled_job_interrupts_its_running_prompt(standin_comfy, status_endpoint, tmp_path):
    comfy = standin_comfy(prompt_seconds=60)
    status, url = status_endpoint
    set_ready(status, comfy.url)
    w = worker(url, tmp_path)
    running = threading.Event()

    async def scenario():
        task = asyncio.ensure_future(w.run("job-c", {"workflow": EMPTY},
                                           lambda p: p.get("stage") == "running" and running.set()))
        while not running.is_set():
            await asyncio.sleep(0.02)
        task.cancel()  # what the runpod SDK does when RunPod stops the job
        with pytest.raises(asyncio.CancelledError):
            await task

    started = time.monotonic()
    asyncio.run(scenario())
    interrupt = comfy.wait_record("interrupt")
    assert interrupt["acted"] is True and interrupt["prompt_id"] == interrupt["running"]
    done = comfy.wait_record("prompt_done")
    assert done["ok"] is False and time.monotonic() - started < 30


def test_a_cancelled_queued_job_is_dropped_without_touching_the_running_prompt(standin_comfy, status_endpoint,
                                                                                tmp_path):
    comfy = standin_comfy(prompt_seconds=3)
    status, url = status_endpoint
    set_ready(status, comfy.url)
    other = httpx.post(f"{comfy.url}/prompt", json={"prompt": EMPTY}, trust_env=False).json()["prompt_id"]
    w = worker(url, tmp_path)
    queued = threading.Event()
    ours: dict = {}

    async def scenario():
        def report(p):
            ours.update({"id": p["prompt_id"]} if "prompt_id" in p else {})
            if p.get("stage") == "queued":
                queued.set()
        task = asyncio.ensure_future(w.run("job-q", {"workflow": EMPTY}, report))
        while not queued.is_set():
            await asyncio.sleep(0.02)
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task

    asyncio.run(scenario())
    interrupt = comfy.wait_record("interrupt")
    assert interrupt["prompt_id"] == ours["id"] and interrupt["acted"] is False  # not the running one
    done = comfy.wait_record("prompt_done", prompt_id=other)
    assert done["ok"] is True  # the other prompt ran to its end
    queue = httpx.get(f"{comfy.url}/queue", trust_env=False).json()
    assert queue == {"queue_running": [], "queue_pending": []}
    assert comfy.records("prompt_done") == [done]  # ours never ran


def test_a_job_over_its_timeout_is_interrupted_and_fails(standin_comfy, status_endpoint, tmp_path):
    comfy = standin_comfy(prompt_seconds=60)
    status, url = status_endpoint
    set_ready(status, comfy.url)
    started = time.monotonic()
    result = run(worker(url, tmp_path, job_timeout=0.5), {"workflow": EMPTY})
    assert "ran longer than 0.5 s (SERVERLESS_JOB_TIMEOUT)" in result["error"]
    assert comfy.wait_record("interrupt")["acted"] is True
    assert comfy.wait_record("prompt_done")["ok"] is False
    assert time.monotonic() - started < 20


def test_a_job_waits_until_the_pod_is_ready_again(standin_comfy, status_endpoint, tmp_path):
    comfy = standin_comfy()
    status, url = status_endpoint
    set_ready(status, comfy.url, ready=False, reasons=["ComfyUI is restarting"])
    reports: list = []

    def report(payload: dict) -> None:
        reports.append(payload)
        if payload["stage"] == "waiting_for_pod":  # the job saw the pod unready: now it comes back
            threading.Timer(0.3, lambda: set_ready(status, comfy.url)).start()

    result = asyncio.run(worker(url, tmp_path, ready_timeout=30).run("job-w", {"workflow": EMPTY}, report))
    assert "error" not in result
    assert reports[0] == {"stage": "waiting_for_pod", "not_ready": ["ComfyUI is restarting"]}
    assert comfy.records("prompt_done")[0]["ok"] is True


def test_a_pod_that_stays_unready_fails_the_job_with_the_reasons(status_endpoint, tmp_path):
    status, url = status_endpoint
    set_ready(status, "http://127.0.0.1:1", ready=False, reasons=["fetch: 3 files missing"])
    result = run(worker(url, tmp_path, ready_timeout=0.3), {"workflow": EMPTY})
    assert result["error"] == "the pod is not ready after 0.3 s (SERVERLESS_READY_TIMEOUT): fetch: 3 files missing"


def test_outputs_go_to_the_bucket_and_come_back_as_urls(standin_comfy, status_endpoint, tmp_path):
    from supervisor.outputs import Store, StoreConfig
    from tests.standins.s3 import KEY_ID, SECRET, S3Server

    s3 = S3Server.start()
    try:
        s3.create_bucket("jobs")
        comfy = standin_comfy()
        status, url = status_endpoint
        set_ready(status, comfy.url)
        store = Store(StoreConfig(bucket="jobs", endpoint=s3.url, access_key_id=KEY_ID, secret_access_key=SECRET))
        result = run(worker(url, tmp_path, store=store), {"workflow": EMPTY}, job_id="job-s3")
        (image,) = result["images"]
        assert image["type"] == "s3_url" and image["key"] == "serverless/job-s3/job/out_00001_.png"
        on_disk = (comfy.output_dir / "job" / "out_00001_.png").read_bytes()
        assert s3.get("jobs", image["key"]) == on_disk
        assert httpx.get(image["data"], trust_env=False).content == on_disk
    finally:
        s3.stop()


def test_inline_outputs_over_runpods_limit_are_a_clear_error(standin_comfy, status_endpoint, tmp_path, monkeypatch):
    comfy = standin_comfy()
    status, url = status_endpoint
    set_ready(status, comfy.url)
    monkeypatch.setattr(handler_module, "MAX_INLINE_BYTES", 50)
    result = run(worker(url, tmp_path), {"workflow": EMPTY})
    assert "over RunPod's result limit: set R2_BUCKET" in result["error"]


@pytest.fixture
def file_server():
    class Handler(BaseHTTPRequestHandler):
        def do_GET(self) -> None:  # noqa: N802
            if self.path.startswith("/ref.png"):
                self.send_response(200)
                self.send_header("Content-Length", str(len(PNG)))
                self.end_headers()
                self.wfile.write(PNG)
            else:
                self.send_response(404)
                self.send_header("Content-Length", "0")
                self.end_headers()

        def log_message(self, format, *args):  # noqa: A002
            pass

    server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    threading.Thread(target=server.serve_forever, kwargs={"poll_interval": 0.1}, daemon=True).start()
    yield f"http://127.0.0.1:{server.server_address[1]}"
    server.shutdown()
    server.server_close()


def test_input_images_by_url_are_fetched_and_a_bad_url_is_named(standin_comfy, status_endpoint, tmp_path,
                                                                file_server):
    comfy = standin_comfy("validate")
    status, url = status_endpoint
    set_ready(status, comfy.url)
    result = run(worker(url, tmp_path), {"workflow": ECHO, "images": [
        {"name": "mine.png", "image": f"{file_server}/ref.png?X-Amz-Signature=secret"}]})
    assert base64.b64decode(result["images"][0]["data"]) == PNG
    result = run(worker(url, tmp_path), {"workflow": ECHO, "images": [
        {"name": "mine.png", "image": f"{file_server}/gone.png?X-Amz-Signature=secret"}]})
    assert result["error"] == f"images[0]: GET {file_server}/gone.png answered HTTP 404"


def test_a_preset_that_this_pod_did_not_resolve_is_a_clear_error(standin_comfy, status_endpoint, tmp_path):
    comfy = standin_comfy()
    status, url = status_endpoint
    set_ready(status, comfy.url)
    png = base64.b64encode(PNG).decode()
    result = run(worker(url, tmp_path), {"preset": "fast", "reference_image": png, "driving_video": png})
    assert result["error"].startswith("preset steadydancer_fast is not available on this worker:")
    assert "SteadyDancer is in the plan" in result["error"]
