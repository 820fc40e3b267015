"""SERVERLESS=true end to end: `supervisor run` with the stand-in ComfyUI starts `supervisor worker`, whose runpod SDK
serves its own local API (`--rp_serve_api`, from SERVERLESS_API_ADDR); jobs go in through `/runsync` and `/run` +
`/status` like a client's, and progress updates reach a stand-in of RunPod's job-output URL."""

from __future__ import annotations

import base64
import json
import os
import signal

import httpx
import psutil
import pytest

from supervisor.plan import HardwareOptions, load_context
from tests.serverless.conftest import MP4, PNG
from tests.run.conftest import REPO, free_port, present_plan_files

pytestmark = pytest.mark.timeout(120)
ECHO = {"1": {"class_type": "LoadImage", "inputs": {"image": "in.png"}},
        "2": {"class_type": "SaveImage", "inputs": {"images": ["1", 0], "filename_prefix": "echo"}}}


def serverless(pod, **env: str) -> str:
    port = free_port()
    pod.env.update(SERVERLESS="true", SERVERLESS_API_ADDR=f"127.0.0.1:{port}", STANDIN_MODE="validate", **env)
    return f"http://127.0.0.1:{port}"


def worker_line(run, text: str, timeout: float = 60.0, count: int = 1) -> dict:
    return run.wait_for("worker.log", timeout=timeout, count=count, where=lambda e: text in e.get("line", ""))


def post(url: str, body: dict, timeout: float = 60.0) -> dict:
    response = httpx.post(url, json=body, timeout=timeout, trust_env=False)
    assert response.status_code == 200, response.text
    return response.json()


def test_a_job_on_the_sdks_local_api_runs_through_supervisor_run(pod, supervisor, progress_sink):
    api = serverless(pod, PUBLIC_KEY="ssh-ed25519 AAAAC3Nza test@example",
                     RUNPOD_WEBHOOK_POST_OUTPUT=f"{progress_sink.url}/output/$ID?gpu=test")
    run = supervisor(pod)
    ready = run.wait_for("supervise.ready")
    serving = worker_line(run, "Uvicorn running on")
    # The SDK's API comes up only after the pod is ready: no job is taken during the fetch.
    assert serving["timestamp"] >= ready["timestamp"]
    job = post(f"{api}/runsync", {"input": {"workflow": ECHO, "images": [
        {"name": "in.png", "image": base64.b64encode(PNG).decode()}]}})
    assert job["status"] == "COMPLETED", job
    (image,) = job["output"]["images"]
    assert image["type"] == "base64" and base64.b64decode(image["data"]) == PNG
    assert image["filename"] == "echo_00001_.png"
    saved = pod.root / "data" / "output" / "echo_00001_.png"
    assert saved.read_bytes() == PNG  # what ComfyUI saved is what the job returned
    # Progress updates went through the SDK to RunPod's (stand-in) job-output URL, marked IN_PROGRESS.
    posts = progress_sink.wait(lambda ps: any(p["data"].get("output", {}).get("stage") == "collecting_outputs"
                                              for p in ps))
    mine = [p for p in posts if p["path"].startswith(f"/output/{job['id']}?gpu=test")]
    assert mine and all(p["data"]["status"] == "IN_PROGRESS" for p in mine)
    # Each update is sent from its own thread by the SDK, so their order on the wire is not guaranteed.
    assert {"uploading_inputs", "submitted", "collecting_outputs"} <= {p["data"]["output"]["stage"] for p in mine}
    # No sshd on a serverless worker, even with PUBLIC_KEY set.
    assert run.named("services.started", service="sshd") == []
    assert run.named("services.started", service="worker")
    assert any("PUBLIC_KEY ignored" in e.get("message", "") for e in run.named("settings.warning"))
    run.send(signal.SIGTERM)
    assert run.wait() == 143


def test_a_bad_workflow_returns_comfyuis_node_errors_as_the_job_error(pod, supervisor):
    api = serverless(pod)
    run = supervisor(pod)
    worker_line(run, "Uvicorn running on")
    bad = {"1": {"class_type": "EmptyImage", "inputs": {"height": 8, "batch_size": 1, "color": 0}},
           "2": {"class_type": "SaveImage", "inputs": {"images": ["1", 0], "filename_prefix": "x"}}}
    job = post(f"{api}/runsync", {"input": {"workflow": bad}})
    assert job["status"] == "FAILED"
    assert job["error"] == ("ComfyUI rejected the workflow (prompt_outputs_failed_validation): Prompt outputs failed "
                            "validation\nnode 1 (EmptyImage): Required input is missing (width)")
    # A bad input is refused before ComfyUI sees anything.
    job = post(f"{api}/runsync", {"input": {"workflow": {"nodes": [], "links": []}}})
    assert job["status"] == "FAILED" and "browser (UI) format" in job["error"]
    assert pod.records("prompt_done") == []
    run.send(signal.SIGTERM)
    run.wait()


def test_run_then_status_and_a_crashed_worker_is_restarted_without_touching_comfyui(pod, supervisor):
    api = serverless(pod)
    run = supervisor(pod)
    worker_line(run, "Uvicorn running on")
    workflow = {"1": {"class_type": "EmptyImage", "inputs": {"width": 8, "height": 8, "batch_size": 1, "color": 0}},
                "2": {"class_type": "SaveImage", "inputs": {"images": ["1", 0], "filename_prefix": "async"}}}
    queued = post(f"{api}/run", {"input": {"workflow": workflow}})
    assert queued["status"] == "IN_PROGRESS" and queued["id"]
    done = post(f"{api}/status/{queued['id']}", {})
    assert done["status"] == "COMPLETED" and done["output"]["images"][0]["filename"] == "async_00001_.png"

    (started,) = run.named("services.started", service="worker")
    comfy_pid = run.status()["comfyui"]["pid"]
    os.kill(started["pid"], signal.SIGKILL)
    exited = run.wait_for("services.exited", service="worker")
    assert "SIGKILL" in exited["exit"]
    run.wait_for("services.started", service="worker", count=2)
    worker_line(run, "Uvicorn running on", count=2)
    assert run.named("comfyui.exited") == [] and run.status()["comfyui"]["pid"] == comfy_pid
    again = post(f"{api}/runsync", {"input": {"workflow": workflow}})
    assert again["status"] == "COMPLETED" and again["output"]["images"][0]["filename"] == "async_00002_.png"
    assert psutil.pid_exists(comfy_pid)
    run.send(signal.SIGTERM)
    run.wait()


def test_a_steadydancer_preset_job_runs_the_workflow_resolved_for_this_pods_plan(pod, supervisor):
    # The stand-in knows the node types of the shipped workflows (the pinned node packs' definitions that the
    # browser copies are built from), and the plan for an H100 finds its files on the volume: the supervisor
    # resolves the workflows as on a real pod. `validate` makes it check the input files exist (were uploaded).
    api = serverless(pod, STANDIN_OBJECT_INFO=str(REPO / "workflows" / "node_defs.json"))
    hardware = ("--gpu", "h100", "--ram", "128GiB", "--disk", "500GiB")  # the same plan whatever this machine has
    present_plan_files(pod, *hardware)
    run = supervisor(pod, *hardware)
    worker_line(run, "Uvicorn running on")
    job = post(f"{api}/runsync", {"input": {
        "preset": "fast", "reference_image": base64.b64encode(PNG).decode(),
        "driving_video": "data:video/mp4;base64," + base64.b64encode(MP4).decode(),
        "prompt": "a dancer on a beach", "seed": 42, "frames": 49}})
    assert job["status"] == "COMPLETED", job
    (video,) = job["output"]["images"]
    assert (video["kind"], video["subfolder"], video["filename"]) == ("gifs", "SteadyDancer", "fast_00001.mp4")
    assert base64.b64decode(video["data"]).startswith(MP4[:12])
    history = httpx.get(f"{pod.comfy_url}/history/{job['output']['prompt_id']}", trust_env=False).json()
    prompt = next(iter(history.values()))["prompt"][2]
    nodes = {n["_meta"]["title"]: n["inputs"] for n in prompt.values()}
    assert nodes["Encode prompt"]["positive_prompt"] == "a dancer on a beach"
    assert (nodes["Sampler"]["seed"], nodes["Sampler"]["steps"]) == (42, 4)  # steps: the fast preset's own
    assert nodes["Driving video"]["frame_load_cap"] == 49
    # Everything else is the supervisor's resolution of the template for this pod's plan (model file, block swap,
    # precision...), as it wrote it for ComfyUI's browser.
    resolved = json.loads((pod.root / "data" / "user" / "default" / "workflows_api" / "steadydancer_fast.json")
                          .read_text())
    changed = {(resolved[n]["_meta"]["title"], k) for n in resolved for k, v in resolved[n]["inputs"].items()
               if prompt[n]["inputs"][k] != v}
    assert changed == {("Encode prompt", "positive_prompt"), ("Sampler", "seed"), ("Driving video", "frame_load_cap"),
                       ("Reference image", "image"), ("Driving video", "video")}
    plan = load_context(pod.env, HardwareOptions(gpu="h100", ram="128GiB", disk="500GiB")).plan()
    assert nodes["Load SteadyDancer model"]["model"] == plan.model("steadydancer").knobs.files["model"]
    uploaded = pod.root / "data" / "input" / nodes["Reference image"]["image"]
    assert uploaded.read_bytes() == PNG
    run.send(signal.SIGTERM)
    run.wait()


def test_serverless_without_a_job_source_does_not_start_the_worker(pod, supervisor):
    pod.env.update(SERVERLESS="true")
    run = supervisor(pod)
    refused = run.wait_for("services.worker_not_started")
    assert "RUNPOD_WEBHOOK_GET_JOB" in refused["problems"][0] and "SERVERLESS_API_ADDR" in refused["problems"][0]
    run.wait_for("supervise.ready")  # ComfyUI runs anyway
    assert run.named("services.started") == []
    run.send(signal.SIGTERM)
    assert run.wait() == 143
