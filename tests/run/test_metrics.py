"""`/metrics`: made from the published status at scrape time (a custom collector), scraped by a real Prometheus
(Debian's `prometheus`, started by the test on loopback) while the stand-in ComfyUI runs prompts."""

from __future__ import annotations

import shutil
import signal
import socket
import subprocess
import time
from pathlib import Path

import httpx
import pytest
from prometheus_client.parser import text_string_to_metric_families

from supervisor.run import metrics
from supervisor.run.activity import Activity
from supervisor.run.status import Status

from .conftest import free_port

pytestmark = pytest.mark.timeout(120)
TOKEN = "metrics-scrape-token-8d1e"
HF_TOKEN = "hf_MetricsSecret0123456789abcdefXYZ"
PROMPT = {"1": {"class_type": "EmptyImage", "inputs": {"width": 8, "height": 8, "batch_size": 1, "color": 0}},
          "2": {"class_type": "SaveImage", "inputs": {"images": ["1", 0], "filename_prefix": "metrics/test"}}}


def samples(text: str) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    found = {}
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            found[(sample.name, tuple(sorted(sample.labels.items())))] = sample.value
    return found


def test_the_collector_turns_the_status_into_metrics():
    status = Status()
    status.set(phase="fetching", ready=False, plan={
        "models": [{"feature": "steadydancer", "variant": "fp8", "offload": "model_cpu_offload", "blocks_to_swap": 12}],
        "degrade": {"steadydancer": 1}, "downloads": {"files": 9, "missing": 2, "missing_bytes": 30_400_000_000}})
    status.fetch_progress({"files": [{"dest": "a", "state": "done"}, {"dest": "b", "state": "downloading"}],
                           "total": {"size": 30_400_000_000, "bytes": 12_300_000_000, "fetched": 12_000_000_000,
                                     "bytes_per_s": 70_000_000, "eta_s": 240.0}})
    status.merge("fetch", state="running")
    status.append_exit({"class": "oom"})
    status.append_exit({"class": "crash"})
    status.append_exit({"class": "oom"})
    status.set(restarts={"count": 3}, oom={"in_prompt": 3, "by_rung": {"fp8/model_cpu_offload/12": 2, "gguf:Q6_K/x/1": 1}},
               services={"sshd": {"state": "running", "restarts": 1}},
               outputs={"enabled": True, "uploaded": 4, "uploaded_bytes": 4096, "failures": 1, "pending": 2,
                        "current": {"file": "x.mp4", "size": 10}},
               comfyui={"state": "answering", "liveness_failures": 0})
    activity = Activity(status)
    activity.on_message({"url": "http://127.0.0.1:8188", "ok": True, "queue_remaining": 3,
                         "gpus": [{"name": "cuda:0 H100", "index": 0, "vram_total": 80_000, "vram_free": 30_000}],
                         "finished": [{"prompt_id": "p1", "status": "success", "seconds": 42.0, "outputs": []},
                                      {"prompt_id": "p2", "status": "error", "seconds": 3.0, "outputs": []}]})
    body, content_type = metrics.render(status)
    assert content_type.startswith("text/plain")
    got = samples(body.decode())
    assert got[("supervisor_phase", (("phase", "fetching"),))] == 1
    assert got[("supervisor_phase", (("phase", "ready"),))] == 0
    assert got[("supervisor_phase_seconds_total", (("phase", "fetching"),))] >= 0
    assert got[("supervisor_download_size_bytes", ())] == 30_400_000_000
    assert got[("supervisor_download_done_bytes", ())] == 12_300_000_000
    assert got[("supervisor_download_speed_bytes_per_second", ())] == 70_000_000
    assert got[("supervisor_download_eta_seconds", ())] == 240
    assert got[("supervisor_download_files_verified", ())] == 1
    assert got[("supervisor_fetch_state", (("state", "running"),))] == 1
    assert got[("supervisor_comfyui_exits_total", (("class", "oom"),))] == 2
    assert got[("supervisor_comfyui_exits_total", (("class", "crash"),))] == 1
    assert got[("supervisor_comfyui_restarts_total", (("comfyui", "comfyui"),))] == 3
    assert got[("supervisor_comfyui_prompt_oom_total", (("comfyui", "comfyui"), ("rung", "fp8/model_cpu_offload/12")))] == 2
    assert got[("supervisor_plan_rung", (("feature", "steadydancer"),))] == 1
    assert got[("supervisor_plan_model_info", (("blocks_to_swap", "12"), ("feature", "steadydancer"),
                                               ("offload", "model_cpu_offload"), ("variant", "fp8")))] == 1
    assert got[("comfyui_up", (("comfyui", "comfyui"),))] == 1 and got[("comfyui_ready", (("comfyui", "comfyui"),))] == 0
    assert got[("comfyui_queue_pending", ())] == 2 and got[("comfyui_queue_running", ())] == 1
    assert got[("comfyui_prompts_total", (("status", "success"),))] == 1
    assert got[("comfyui_prompt_duration_seconds_bucket", (("le", "30.0"), ("status", "success")))] == 0
    assert got[("comfyui_prompt_duration_seconds_bucket", (("le", "60.0"), ("status", "success")))] == 1
    assert got[("comfyui_prompt_duration_seconds_bucket", (("le", "+Inf"), ("status", "error")))] == 1
    assert got[("comfyui_prompt_duration_seconds_sum", (("status", "success"),))] == 42
    gpu = (("comfyui", "http://127.0.0.1:8188"), ("gpu", "0"), ("name", "cuda:0 H100"))
    assert got[("comfyui_gpu_memory_used_bytes", gpu)] == 50_000
    assert got[("comfyui_gpu_memory_total_bytes", gpu)] == 80_000
    assert got[("supervisor_outputs_uploaded_total", ())] == 4 and got[("supervisor_outputs_queued", ())] == 2
    assert got[("supervisor_outputs_upload_failures_total", ())] == 1 and got[("supervisor_outputs_uploading", ())] == 1
    assert got[("supervisor_service_up", (("service", "sshd"),))] == 1
    assert ("process_resident_memory_bytes", ()) in got


def _outside_address() -> str | None:
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
        try:
            s.connect(("192.0.2.123", 9))
            address = s.getsockname()[0]
        except OSError:
            return None
    return None if address.startswith("127.") else address


class Prometheus:
    def __init__(self, root: Path, target: str, token: str | None):
        self.port = free_port()
        root.mkdir(parents=True, exist_ok=True)
        auth = f"    authorization:\n      type: Bearer\n      credentials: {token}\n" if token else ""
        config = root / "prometheus.yml"
        config.write_text("global:\n  scrape_interval: 1s\n  scrape_timeout: 1s\nscrape_configs:\n"
                          f"  - job_name: supervisor\n{auth}    static_configs:\n      - targets: ['{target}']\n")
        self.proc = subprocess.Popen(
            [shutil.which("prometheus"), f"--config.file={config}", f"--storage.tsdb.path={root / 'data'}",
             f"--web.listen-address=127.0.0.1:{self.port}", "--log.level=warn"],
            stdout=subprocess.DEVNULL, stderr=open(root / "prometheus.log", "w"), stdin=subprocess.DEVNULL)

    def query(self, expr: str) -> list[dict]:
        try:
            answer = httpx.get(f"http://127.0.0.1:{self.port}/api/v1/query", params={"query": expr}, timeout=5,
                               trust_env=False).json()
        except (httpx.HTTPError, ValueError):
            return []
        return answer.get("data", {}).get("result", []) if answer.get("status") == "success" else []

    def wait(self, expr: str, timeout: float = 40.0, check=lambda value: True) -> list[dict]:
        deadline = time.monotonic() + timeout
        while True:
            result = self.query(expr)
            if result and all(check(float(item["value"][1])) for item in result):
                return result
            if time.monotonic() > deadline or self.proc.poll() is not None:
                raise AssertionError(f"Prometheus has no {expr} within {timeout} s (last: {result})")
            time.sleep(0.25)

    def stop(self) -> None:
        self.proc.terminate()
        try:
            self.proc.wait(10)
        except subprocess.TimeoutExpired:
            self.proc.kill()


@pytest.mark.skipif(shutil.which("prometheus") is None, reason="prometheus is not installed (apt-get install prometheus)")
def test_a_real_prometheus_scrapes_the_series(pod, supervisor, tmp_path):
    outside = _outside_address()
    port = pod.env["STATUS_ADDR"].rpartition(":")[2]
    pod.env.update(ENABLE_STEADYDANCER="false", STANDIN_PROMPT_SECONDS="1.5", HF_TOKEN=HF_TOKEN)
    if outside:  # as from another host: all interfaces and the token, which Prometheus sends as a bearer header
        pod.env.update(STATUS_PUBLIC="true", STATUS_TOKEN=TOKEN)
    run = supervisor(pod, "--gpu", "RTX 4090")  # a GPU plan: ComfyUI runs without --cpu and reports a CUDA device
    run.wait_for("supervise.ready")
    prometheus = Prometheus(tmp_path / "prometheus", f"{outside or '127.0.0.1'}:{port}", TOKEN if outside else None)
    try:
        prometheus.wait('up{job="supervisor"}', check=lambda v: v == 1)
        prometheus.wait('supervisor_phase{phase="ready"}', check=lambda v: v == 1)
        for _ in range(3):
            httpx.post(f"{pod.comfy_url}/prompt", json={"prompt": PROMPT}, timeout=5, trust_env=False).raise_for_status()
        # Three prompts of 1.5 s: while the first runs, two wait.
        prometheus.wait("comfyui_queue_pending", check=lambda v: v >= 1)
        prometheus.wait("comfyui_queue_running", check=lambda v: v == 1)
        prometheus.wait('comfyui_prompts_total{status="success"}', check=lambda v: v == 3)
        prometheus.wait("comfyui_queue_pending", check=lambda v: v == 0)
        count = prometheus.wait('comfyui_prompt_duration_seconds_count{status="success"}', check=lambda v: v == 3)
        assert count
        durations = prometheus.wait('comfyui_prompt_duration_seconds_sum{status="success"}')
        assert 4.0 <= float(durations[0]["value"][1]) < 30
        le = prometheus.wait('comfyui_prompt_duration_seconds_bucket{status="success",le="5.0"}')
        assert float(le[0]["value"][1]) == 3
        gpu = prometheus.wait("comfyui_gpu_memory_total_bytes")
        assert float(gpu[0]["value"][1]) == 25_757_220_864 and gpu[0]["metric"]["gpu"] == "0"
        used = prometheus.wait("comfyui_gpu_memory_used_bytes")
        assert 0 < float(used[0]["value"][1]) < 25_757_220_864
        for expr in ('comfyui_up{comfyui="comfyui"} == 1', "comfyui_ready == 1", "supervisor_ready == 1",
                     "supervisor_download_size_bytes", "supervisor_download_files_verified",
                     'supervisor_fetch_state{state="done"} == 1', "supervisor_comfyui_restarts_total == 0",
                     'supervisor_phase_seconds_total{phase="ready"} > 0', "supervisor_startup_phase_seconds",
                     "supervisor_plan_files", 'supervisor_log_events_total{level="warning"}',
                     "process_resident_memory_bytes"):
            prometheus.wait(expr)
        # The scrape never carries a secret.
        scraped = httpx.get(f"http://127.0.0.1:{port}/metrics", timeout=5, trust_env=False).text
        assert HF_TOKEN not in scraped and TOKEN not in scraped
    finally:
        prometheus.stop()
    run.send(signal.SIGTERM)
    assert run.wait() == 143
