"""Out of memory inside a prompt (ComfyUI catches it and goes on): seen, counted per rung, stepped down by policy,
remembered across starts; and the exits that follow such an error classified by their own evidence."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
from pathlib import Path

import httpx

from .conftest import REPO, present_plan_files

HARDWARE = ("--gpu", "RTX 4090", "--ram", "64GiB", "--disk", "500GB")  # fp8 resident, a ladder below it
PROMPT = {"1": {"class_type": "EmptyImage", "inputs": {}}, "2": {"class_type": "SaveImage", "inputs": {"images": ["1", 0]}}}


def post_prompt(pod) -> str:
    response = httpx.post(f"{pod.comfy_url}/prompt", json={"prompt": PROMPT, "client_id": "test-client"}, timeout=5,
                          trust_env=False)
    assert response.status_code == 200, response.text
    return response.json()["prompt_id"]


def survive_an_oom(run, pod, count: int) -> None:
    """Queue a prompt that runs out of memory; return once the supervisor counted it and the prompt has ended."""
    post_prompt(pod)
    run.wait_for("comfyui.prompt_oom", count=count)
    run.wait_for("comfyui.log", where=lambda e: e["line"].startswith("Prompt executed in"), count=count)


def plan_cli(pod, *args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "supervisor", "plan", *HARDWARE, *args], cwd=REPO, env=pod.env,
                          capture_output=True, text=True, timeout=60)


def test_in_prompt_oom_is_counted_stepped_down_when_idle_and_remembered(pod, supervisor):
    present_plan_files(pod, *HARDWARE)
    pod.modes("prompt_oom", "")  # the first ComfyUI runs out of memory in every prompt, the next one does not
    pod.env.update(OOM_STEP_DOWN_AFTER="2")
    run = supervisor(pod, *HARDWARE)
    run.wait_for("supervise.ready")
    first = post_prompt(pod)
    oom = run.wait_for("comfyui.prompt_oom")
    assert oom["prompt_id"] == first and oom["node_id"] == "1" and oom["node_type"] == "EmptyImage"
    assert "Tried to allocate 11.25 GiB" in oom["message"] and oom["count_on_rung"] == 1
    assert oom["rung"] == "fp8/full/0" and oom["action"] == "count"
    status = run.status()
    assert status["oom"]["in_prompt"] == 1 and status["oom"]["by_rung"] == {"fp8/full/0": 1}
    assert run.named("supervise.downgrade") == []  # one error on this rung is not yet a pattern

    second = post_prompt(pod)
    oom = run.wait_for("comfyui.prompt_oom", count=2)
    assert oom["prompt_id"] == second and oom["count_on_rung"] == 2 and oom["action"] == "step_down_now"
    down = run.wait_for("supervise.downgrade")
    assert down["before"]["offload"] == "full" and down["after"]["blocks_to_swap"] > 0
    assert "2 out-of-memory errors inside prompts on fp8/full/0" in down["why"]
    exited = run.wait_for("comfyui.exited")
    assert exited["class"] == "step_down"
    ready = run.wait_for("supervise.ready", count=2)
    assert ready["generation"] == 2
    status = run.status()
    assert status["plan"]["degrade"] == {"steadydancer": 1} and status["oom"]["step_down_pending"] is False
    assert status["restarts"]["failures_in_window"] == 0  # our own step down is not a failure
    run.send(signal.SIGTERM)
    run.wait()

    # Remembered on the volume for the next start, shown by `supervisor plan`, forgotten on request.
    remembered = json.loads((Path(pod.env["COMFYUI_DATA_DIR"]) / ".supervisor" / "oom-steps.json").read_text())
    (entry,) = remembered.values()
    assert entry["degrade"] == {"steadydancer": 1} and "inside prompts" in entry["why"]
    shown = plan_cli(pod)
    assert "remembered from an earlier run" in shown.stdout and "--reset-oom" in shown.stdout
    again = supervisor(pod, *HARDWARE)
    event = again.wait_for("plan.remembered_step_down")
    assert event["degrade"] == {"steadydancer": 1}
    again.wait_for("supervise.ready")
    assert again.status()["plan"]["models"][0]["blocks_to_swap"] == down["after"]["blocks_to_swap"]
    again.send(signal.SIGTERM)
    again.wait()
    # A changed plan input (another card) does not inherit it.
    other = subprocess.run([sys.executable, "-m", "supervisor", "plan", "--gpu", "A100 80GB"], cwd=REPO, env=pod.env,
                           capture_output=True, text=True, timeout=60)
    assert "remembered" not in other.stdout
    reset = plan_cli(pod, "--reset-oom")
    assert reset.returncode == 0 and "remembered" not in reset.stdout


def test_step_down_waits_for_an_idle_comfyui_and_retries_the_prompt(pod, supervisor):
    present_plan_files(pod, *HARDWARE)
    pod.modes("prompt_oom,prompt_seconds:0.5", "")
    pod.env.update(OOM_STEP_DOWN_AFTER="1", OOM_RETRY_PROMPT="true", HEALTH_INTERVAL="0.1")
    run = supervisor(pod, *HARDWARE)
    run.wait_for("supervise.ready")
    first = post_prompt(pod)
    post_prompt(pod)  # still queued when the first one fails: the restart waits for it
    oom = run.wait_for("comfyui.prompt_oom")
    assert oom["prompt_id"] == first and oom["action"] == "step_down_when_idle"
    run.wait_for("supervise.step_down_waiting")
    run.wait_for("supervise.downgrade")
    assert len(pod.records("prompt_done")) == 2  # both prompts ran before the restart
    retried = run.wait_for("comfyui.prompt_retried", timeout=30)
    assert retried["ok"] is True and retried["original"] == first and retried["prompt_id"] != first
    (done,) = pod.wait_record("prompt_done", prompt_id=retried["prompt_id"])
    assert done["ok"] is True  # on the new rung (the second ComfyUI has no OOM mode)
    run.send(signal.SIGTERM)
    run.wait()


def test_next_start_policy_only_remembers(pod, supervisor):
    present_plan_files(pod, *HARDWARE)
    pod.env.update(OOM_STEP_DOWN="next-start", OOM_STEP_DOWN_AFTER="1", STANDIN_MODE="prompt_oom")
    run = supervisor(pod, *HARDWARE)
    run.wait_for("supervise.ready")
    post_prompt(pod)
    oom = run.wait_for("comfyui.prompt_oom")
    assert oom["action"] == "remember"
    remembered = run.wait_for("supervise.step_down_remembered")
    assert remembered["degrade"] == {"steadydancer": 1}
    assert run.named("supervise.downgrade") == [] and run.named("comfyui.exited") == []
    assert run.status()["plan"]["degrade"] == {}
    run.send(signal.SIGTERM)
    run.wait()
    assert "remembered from an earlier run" in plan_cli(pod).stdout


def test_exits_after_a_survived_oom_are_classified_by_their_own_evidence(pod, supervisor):
    """A Manager reboot, a kill -9 and a crash after in-prompt OOMs: reboot, killed, crash; never a downgrade."""
    present_plan_files(pod, *HARDWARE)
    pod.env.update(STANDIN_MODE="prompt_oom", OOM_STEP_DOWN="off", RESTART_MAX="10")
    run = supervisor(pod, *HARDWARE)
    run.wait_for("supervise.ready")

    survive_an_oom(run, pod, 1)
    httpx.get(f"{pod.comfy_url}/manager/reboot", timeout=5, trust_env=False)
    assert run.wait_for("comfyui.exited")["class"] == "reboot"
    run.wait_for("supervise.ready", count=2)

    survive_an_oom(run, pod, 2)
    os.kill(run.status()["comfyui"]["pid"], signal.SIGKILL)
    killed = run.wait_for("comfyui.exited", count=2)
    assert killed["class"] == "killed", killed
    run.wait_for("supervise.ready", count=3)

    survive_an_oom(run, pod, 3)
    httpx.post(f"{pod.comfy_url}/standin/crash", json={}, timeout=5, trust_env=False)
    crash = run.wait_for("comfyui.exited", count=3)
    assert crash["class"] == "crash" and "stand-in crash on request" in crash["message"], crash
    run.wait_for("supervise.ready", count=4)
    assert run.named("supervise.downgrade") == []
    assert run.status()["oom"]["in_prompt"] == 3
    run.send(signal.SIGTERM)
    run.wait()


def test_five_oom_then_reboot_cycles_do_not_end_the_supervisor(pod, supervisor):
    present_plan_files(pod, *HARDWARE)
    pod.env.update(STANDIN_MODE="prompt_oom", OOM_STEP_DOWN="off", RESTART_MAX="3")
    run = supervisor(pod, *HARDWARE)
    run.wait_for("supervise.ready")
    for cycle in range(1, 6):
        survive_an_oom(run, pod, cycle)
        httpx.get(f"{pod.comfy_url}/manager/reboot", timeout=5, trust_env=False)
        assert run.wait_for("comfyui.exited", count=cycle)["class"] == "reboot"
        run.wait_for("supervise.ready", count=cycle + 1)
    assert run.proc.poll() is None and run.named("supervise.gave_up") == []
    assert run.named("supervise.downgrade") == []
    run.send(signal.SIGTERM)
    assert run.wait() == 143
