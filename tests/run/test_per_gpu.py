"""`supervisor run` with COMFYUI_PER_GPU on a simulated 2-GPU host and stand-in ComfyUIs: an instance per GPU on
its own device and port, one fetch of the files, a crash restarts only that instance, readiness per instance and
overall, and one shutdown for all."""

from __future__ import annotations

import os
import random
import signal
import subprocess
import sys
import time
from pathlib import Path

import httpx
import pytest

from tests.standins.hub import Hub

from .conftest import REPO, free_port

pytestmark = pytest.mark.timeout(90)
MB = 1_000_000
TWO_GPUS = ("--gpu", "h200", "--gpu-count", "2", "--ram", "256GiB")


@pytest.fixture
def two_gpu_pod(pod, tmp_path):
    ports = [free_port(), free_port()]
    pod.env.update(COMFYUI_PER_GPU="true", COMFYUI_PORTS=",".join(map(str, ports)), ENABLE_STEADYDANCER="false")
    return pod, ports


def readyz(pod, path: str = "/readyz") -> httpx.Response:
    return httpx.get(f"{pod.status_url}{path}", timeout=5, trust_env=False)


def test_two_instances_on_their_own_devices_and_ports_with_one_fetch(two_gpu_pod, supervisor, tmp_path):
    pod, ports = two_gpu_pod
    data = random.Random(3).randbytes(3 * MB)
    with Hub(tmp_path / "hub", lfs_threshold=100_000) as hub:
        hub.add_file("org/repo", "weights.safetensors", data)
        catalog = tmp_path / "catalog.toml"
        catalog.write_text('[files.weights]\nrepo = "org/repo"\npath = "weights.safetensors"\n'
                           f'dest = "loras/weights.safetensors"\nsize = {len(data)}\n\n'
                           '[features.testfiles]\nswitch = "ENABLE_TESTFILES"\ndescription = "test weights"\n'
                           'files = ["weights"]\n')
        pod.env.update(HF_ENDPOINT=hub.url, SUPERVISOR_CATALOG=str(catalog), ENABLE_TESTFILES="true",
                       DISK_RESERVE_GB="0")
        run = supervisor(pod, *TWO_GPUS)
        readies = [run.wait_for("supervise.ready", instance=name) for name in ("comfyui-0", "comfyui-1")]
        assert {r["url"] for r in readies} == {f"http://127.0.0.1:{port}" for port in ports}
        assert len(run.named("fetch.started")) == 1 and hub.bytes_sent() == len(data)  # one fetch, each file once
    starts = pod.records("start")
    by_device = {s["env_values"]["CUDA_VISIBLE_DEVICES"]: s for s in starts}
    assert set(by_device) == {"GPU-simulated-0", "GPU-simulated-1"}
    for device, port in zip(("GPU-simulated-0", "GPU-simulated-1"), ports):
        argv = by_device[device]["argv"]
        assert argv[argv.index("--port") + 1] == str(port)
    second = by_device["GPU-simulated-1"]["argv"]
    assert second[second.index("--output-directory") + 1].endswith("/output/gpu1")  # no shared file numbering
    status = run.status()
    assert [(i["name"], i["port"], i["ready"]) for i in status["instances"]] == [
        ("comfyui-0", ports[0], True), ("comfyui-1", ports[1], True)]
    assert readyz(pod).status_code == 200 and readyz(pod, "/readyz/comfyui-1").json()["ready"] is True
    assert readyz(pod, "/readyz/7").status_code == 404
    health = subprocess.run([sys.executable, "-m", "supervisor", "health", "--addr", pod.env["STATUS_ADDR"],
                             "--instance", "1"], cwd=REPO, capture_output=True, text=True, timeout=30)
    assert health.returncode == 0 and health.stdout.strip() == "1 ready"
    assert (Path(pod.env["LOG_DIR"]) / "comfyui-1.log").is_file()

    # A crash of one instance restarts that one only.
    victim = status["instances"][1]["pid"]
    survivor = status["instances"][0]["pid"]
    os.kill(victim, signal.SIGKILL)
    exited = run.wait_for("comfyui.exited")
    assert exited["pid"] == victim and exited["class"] == "killed"
    respawned = run.wait_for("comfyui.spawned", count=3)
    assert respawned["instance"] == "comfyui-1"
    run.wait_for("supervise.ready", instance="comfyui-1", count=2)
    after = run.status()["instances"]
    assert after[0]["pid"] == survivor and after[0]["restarts"]["count"] == 0
    assert after[1]["restarts"]["count"] == 1

    # One SIGTERM stops both, within the one grace period.
    started = time.monotonic()
    run.send(signal.SIGTERM)
    assert run.wait() == 128 + signal.SIGTERM
    assert time.monotonic() - started < float(pod.env["SHUTDOWN_GRACE"]) + 2
    for pid in (survivor, after[1]["pid"]):
        with pytest.raises(ProcessLookupError):
            os.kill(pid, 0)


def test_ready_when_any_and_all(two_gpu_pod, supervisor):
    pod, ports = two_gpu_pod
    pod.env["STANDIN_MODE_GPU_simulated_1"] = "slow_start:60"  # the second GPU's ComfyUI never answers here
    run = supervisor(pod, *TWO_GPUS, env={"READY_WHEN": "any"})
    run.wait_for("supervise.ready", instance="comfyui-0")
    deadline = time.monotonic() + 10
    while readyz(pod).status_code != 200:  # the overall state is published on the loop's next round
        assert time.monotonic() < deadline
        time.sleep(0.05)
    assert readyz(pod, "/readyz/comfyui-1").json()["not_ready"] == ["ComfyUI is starting"]
    run.send(signal.SIGTERM)
    run.wait()

    strict = supervisor(pod, *TWO_GPUS)  # READY_WHEN=all (default)
    strict.wait_for("supervise.ready", instance="comfyui-0")
    body = readyz(pod).json()
    assert body["ready"] is False and "comfyui-1: ComfyUI is starting" in body["not_ready"]
    strict.send(signal.SIGTERM)
    strict.wait()
