"""`supervisor run` end to end: a real supervisor process, the stand-in ComfyUI as a real child, real HTTP and
real signals. Each test reads the supervisor's JSON events from its stdout and the stand-in's own records."""

from __future__ import annotations

import signal
import subprocess
import sys
import time

import httpx
import pytest
import yaml

from .conftest import REPO, present_plan_files

pytestmark = pytest.mark.timeout(60)
TOKEN = "hf_SuperviseTestToken0123456789abcdefXYZ"


def get(url: str) -> httpx.Response:
    return httpx.get(url, timeout=5, trust_env=False)


def test_launch_ready_status_health_and_clean_stop(pod, supervisor):
    pod.env.update(HF_TOKEN=TOKEN, CIVITAI_API_KEY="civitai-secret-key-42", COMFYUI_ARGS="--disable-metadata",
                   SHUTDOWN_GRACE="30")
    run = supervisor(pod)
    ready = run.wait_for("supervise.ready")
    # One event with the time of each phase.
    assert {"plan_s", "fetch_s", "comfyui_start_s", "check_s", "since_supervisor_start_s"} <= set(ready["phases"])

    # The real launch path: COMFYUI_PYTHON main.py in COMFYUI_DIR with listen/port, paths, the plan's flags, then
    # COMFYUI_ARGS last.
    (start,) = pod.records("start")
    argv = start["argv"][1:]
    assert start["cwd"] == str(pod.comfy_dir)
    assert argv[:4] == ["--listen", "127.0.0.1", "--port", pod.env["COMFYUI_PORT"]]
    assert "--cpu" in argv and argv[-1] == "--disable-metadata"
    assert argv[argv.index("--user-directory") + 1] == f"{pod.env['COMFYUI_DATA_DIR']}/user"
    # ComfyUI's default database is under COMFYUI_DIR/user, which --user-directory abandons (seen on the H100 run).
    assert argv[argv.index("--database-url") + 1] == f"sqlite:///{pod.env['COMFYUI_DATA_DIR']}/user/comfyui.db"
    paths = yaml.safe_load(open(argv[argv.index("--extra-model-paths-config") + 1]))
    (section,) = paths.values()
    assert section["base_path"] == pod.env["MODELS_DIR"] and section["is_default"] is True
    assert section["diffusion_models"] == "diffusion_models" and section["detection"] == "detection"
    # Secrets stay out of ComfyUI's environment and command line; Manager's reboot marker is set up.
    assert "HF_TOKEN" not in start["env"] and "CIVITAI_API_KEY" not in start["env"]
    assert TOKEN not in " ".join(start["argv"])
    assert start["env_values"]["__COMFY_CLI_SESSION__"].startswith(pod.env["COMFYUI_DATA_DIR"])
    # Its own session and group, so signals reach the whole group.
    assert start["pgid"] == start["pid"] == start["sid"]

    # ComfyUI's output: structured events with source comfyui, and the rotating log file.
    line = run.wait_for("comfyui.log", where=lambda e: "To see the GUI go to" in e["line"])
    assert line["source"] == "comfyui"
    log_text = (pod.root / "logs" / "comfyui.log").read_text()
    assert "Set vram state to: DISABLED" in log_text

    # Status endpoint and the health command.
    status = run.status()
    assert status["phase"] == "ready" and status["ready"] is True
    assert status["comfyui"]["pid"] and status["plan"]["comfyui_args"][0] == "--cpu"
    assert status["restarts"]["count"] == 0 and status["last_exit"] is None
    assert get(f"{pod.status_url}/healthz").status_code == 200
    assert get(f"{pod.status_url}/readyz").json() == {"ready": True, "not_ready": []}
    health = subprocess.run([sys.executable, "-m", "supervisor", "health", "--addr", pod.env["STATUS_ADDR"]],
                            cwd=REPO, capture_output=True, text=True, timeout=30)
    assert health.returncode == 0 and health.stdout.strip() == "ready"

    started = time.monotonic()
    run.send(signal.SIGTERM)
    assert run.wait() == 128 + signal.SIGTERM  # ComfyUI died of the forwarded SIGTERM
    assert time.monotonic() - started < 10  # at once, not after SHUTDOWN_GRACE=30; bench/supervise.py times it
    exited = run.wait_for("comfyui.exited")
    assert exited["class"] == "shutdown"
    assert TOKEN not in "".join(run.raw) + "".join(run.stderr)
    # Afterwards nothing answers: the health command says so.
    health = subprocess.run([sys.executable, "-m", "supervisor", "health", "--addr", pod.env["STATUS_ADDR"],
                             "--timeout", "1"], cwd=REPO, capture_output=True, text=True, timeout=30)
    assert health.returncode == 1 and "unhealthy" in health.stdout


def test_sigint_is_forwarded_and_comfyui_stops_gracefully_with_code_0(pod, supervisor):
    run = supervisor(pod)
    run.wait_for("supervise.ready")
    run.send(signal.SIGINT)
    assert run.wait() == 0  # ComfyUI's graceful stop on SIGINT exits 0, and so do we
    assert pod.records("exiting")[-1]["code"] == 0
    assert any("Stopped server" in e.get("line", "") for e in run.named("comfyui.log"))


def test_crash_restarts_with_backoff_then_gives_up(pod, supervisor):
    pod.env.update(STANDIN_MODE="crash_at_start:7", RESTART_MAX="4", RESTART_BACKOFF_INITIAL="0.1",
                   RESTART_BACKOFF_MAX="0.3")
    run = supervisor(pod)
    code = run.wait(20)
    assert code == 7  # ComfyUI's own exit code
    spawned = run.named("comfyui.spawned")
    assert len(spawned) == 4
    delays = [e["delay_s"] for e in run.named("supervise.restart_scheduled")]
    assert delays == [0.1, 0.2, 0.3]  # doubling, capped at RESTART_BACKOFF_MAX
    exits = run.named("comfyui.exited")
    assert {e["class"] for e in exits} == {"crash"}
    assert "No module named 'requests'" in exits[0]["message"]
    gave_up = run.wait_for("supervise.gave_up")
    assert "4 failures" in gave_up["reason"] and gave_up["code"] == 7
    # The restart happened after the backoff, not on a polling tick: spawn follows exit by about the delay.
    t_exit = _ts(exits[0]["timestamp"])
    t_spawn = _ts(spawned[1]["timestamp"])
    assert 0.1 <= t_spawn - t_exit < 0.1 + 0.5


def test_exit_2_is_bad_arguments_and_is_not_restarted(pod, supervisor):
    pod.env.update(STANDIN_MODE="exit2")
    run = supervisor(pod)
    assert run.wait() == 2
    assert len(run.named("comfyui.spawned")) == 1
    gave_up = run.wait_for("supervise.gave_up")
    assert gave_up["exit_class"] == "bad_arguments" and gave_up["flag"] == "--preview-size"
    assert "COMFYUI_ARGS" in gave_up["advice"]


def test_unknown_flag_is_rejected_before_launch_naming_it(pod, supervisor):
    pod.env.update(COMFYUI_ARGS="--medvram --cpu-text-encoder --lowvram")
    run = supervisor(pod)
    assert run.wait() == 2
    assert run.named("comfyui.spawned") == []
    bad = run.wait_for("comfyui.bad_command")
    text = " ".join(bad["problems"])
    assert "--medvram" in text and "--cpu-text-encoder" in text and "COMFYUI_ARGS" in text
    assert "--lowvram" not in text.replace("did you mean --lowvram", "")
    # LOG_FORMAT=json: the event is the whole story, every line is JSON (a person's block only with console logs).
    assert all(line.startswith("{") for line in run.raw + run.stderr)
    console = supervisor(pod, env={"LOG_FORMAT": "console"})
    assert console.wait() == 2
    assert "ComfyUI does not accept --medvram" in "".join(console.stderr)


def test_sigterm_ignored_gets_sigkill_after_the_grace(pod, supervisor):
    pod.env.update(STANDIN_MODE="ignore_sigterm", SHUTDOWN_GRACE="0.6")
    run = supervisor(pod, pid1=True)
    run.wait_for("supervise.ready")
    started = time.monotonic()
    run.send(signal.SIGTERM)
    assert run.wait() == 128 + signal.SIGKILL
    assert time.monotonic() - started >= 0.6  # not before the grace (how soon after it: bench/supervise.py)
    run.wait_for("supervise.grace_expired")


def test_a_second_sigterm_kills_at_once(pod, supervisor):
    pod.env.update(STANDIN_MODE="ignore_sigterm", SHUTDOWN_GRACE="30")
    run = supervisor(pod, pid1=True)
    run.wait_for("supervise.ready")
    run.send(signal.SIGTERM)
    run.wait_for("supervise.stopping")
    started = time.monotonic()
    run.send(signal.SIGTERM)
    assert run.wait() == 128 + signal.SIGKILL
    assert time.monotonic() - started < 10  # long before SHUTDOWN_GRACE=30
    run.wait_for("supervise.kill_now")


def test_out_of_memory_exit_restarts_on_the_next_lower_step(pod, supervisor, tmp_path):
    hardware = ("--gpu", "RTX 4090", "--ram", "64GiB", "--disk", "500GB")  # the plan must not depend on this disk
    present_plan_files(pod, *hardware)
    pod.modes("oom_after:0.3", "")
    run = supervisor(pod, *hardware)
    first = run.wait_for("supervise.ready")
    assert first["generation"] == 1
    exited = run.wait_for("comfyui.exited")
    assert exited["class"] == "oom" and "CUDA out of memory" in exited["message"]
    down = run.wait_for("supervise.downgrade")
    assert down["before"]["blocks_to_swap"] == 0 and down["after"]["blocks_to_swap"] > 0
    assert down["after"]["offload"] == "model_cpu_offload" and "out of memory" in down["why"]
    run.wait_for("supervise.ready", count=2)
    status = run.status()
    (model,) = status["plan"]["models"]
    assert status["plan"]["degrade"] == {"steadydancer": 1}
    assert model["blocks_to_swap"] == down["after"]["blocks_to_swap"]
    assert status["last_exit"]["class"] == "oom" and status["restarts"]["count"] == 1
    run.send(signal.SIGTERM)
    run.wait()


def test_hang_is_detected_killed_and_restarted(pod, supervisor):
    pod.modes("hang_after:0.2", "")
    pod.env.update(HEALTH_INTERVAL="0.2", HEALTH_TIMEOUT="0.3", HEALTH_FAILURES="2", SHUTDOWN_GRACE="1")
    run = supervisor(pod)
    run.wait_for("comfyui.killing", reason="hang")
    exited = run.wait_for("comfyui.exited")
    assert exited["class"] == "hang"
    assert len(run.named("comfyui.liveness_failed")) >= 2
    run.wait_for("supervise.ready", count=2)
    run.send(signal.SIGTERM)
    run.wait()


def test_startup_timeout_kills_a_live_but_silent_comfyui(pod, supervisor):
    pod.modes("slow_start:30", "")
    pod.env.update(STARTUP_TIMEOUT="1", SHUTDOWN_GRACE="1")
    run = supervisor(pod)
    exited = run.wait_for("comfyui.exited", timeout=10)
    assert exited["class"] == "startup_timeout"
    run.wait_for("supervise.ready")
    run.send(signal.SIGTERM)
    run.wait()


def test_manager_reboot_restarts_at_once_and_is_not_a_failure(pod, supervisor):
    pod.modes("reboot_after:0.2", "")
    pod.env.update(RESTART_MAX="1", RESTART_BACKOFF_INITIAL="5")
    run = supervisor(pod)
    exited = run.wait_for("comfyui.exited")
    assert exited["class"] == "reboot"
    scheduled = run.wait_for("supervise.restart_scheduled")
    assert scheduled["delay_s"] == 0 and scheduled["failure"] is False
    run.wait_for("supervise.ready", count=2)
    run.send(signal.SIGTERM)
    assert run.wait() == 143


def test_port_in_use_is_classified(pod, supervisor):
    import socket

    pod.env.update(RESTART_MAX="2")
    with socket.socket() as holder:
        holder.bind(("127.0.0.1", int(pod.env["COMFYUI_PORT"])))
        holder.listen()
        run = supervisor(pod)
        assert run.wait() == 1
    exited = run.named("comfyui.exited")
    assert [e["class"] for e in exited] == ["port_in_use", "port_in_use"]
    assert "address already in use" in exited[0]["message"]
    assert "COMFYUI_PORT" in run.wait_for("supervise.gave_up")["advice"]


def test_driver_mismatch_is_not_restarted(pod, supervisor):
    pod.env.update(STANDIN_MODE="no_driver")
    run = supervisor(pod)
    assert run.wait() == 1
    assert len(run.named("comfyui.spawned")) == 1
    assert run.wait_for("supervise.gave_up")["exit_class"] == "driver"


def test_readiness_waits_for_warmup_and_queue_limit(pod, supervisor, tmp_path):
    import json

    workflow = tmp_path / "warmup.json"
    workflow.write_text(json.dumps({"1": {"class_type": "EmptyImage", "inputs": {"width": 8, "height": 8}},
                                    "2": {"class_type": "SaveImage", "inputs": {"images": ["1", 0]}}}))
    pod.env.update(WARMUP_WORKFLOW=str(workflow), READY_MAX_QUEUE="1", STANDIN_PROMPT_SECONDS="0.3",
                   HEALTH_INTERVAL="0.1")
    run = supervisor(pod)
    ready = run.wait_for("supervise.ready")
    assert ready["phases"]["warmup_s"] >= 0.3
    done = pod.records("prompt_done")
    assert len(done) == 1 and done[0]["ok"] is True
    assert _ts(run.wait_for("supervise.warmup_done")["timestamp"]) <= _ts(ready["timestamp"])
    # Three prompts queued: more than READY_MAX_QUEUE, so not ready until they ran.
    prompt = json.loads(workflow.read_text())
    for _ in range(3):
        httpx.post(f"{pod.comfy_url}/prompt", json={"prompt": prompt}, timeout=5, trust_env=False)
    run.wait_for("supervise.not_ready", timeout=5)
    reasons = get(f"{pod.status_url}/readyz").json()["not_ready"]
    assert any("READY_MAX_QUEUE=1" in r for r in reasons)
    assert get(f"{pod.status_url}/readyz").status_code == 503
    deadline = time.monotonic() + 10
    while get(f"{pod.status_url}/readyz").status_code != 200:
        assert time.monotonic() < deadline
        time.sleep(0.1)
    run.send(signal.SIGTERM)
    run.wait()


def test_failed_warmup_keeps_the_pod_not_ready(pod, supervisor, tmp_path):
    import json

    workflow = tmp_path / "warmup.json"
    workflow.write_text(json.dumps({"1": {"class_type": "EmptyImage", "inputs": {}},
                                    "2": {"class_type": "SaveImage", "inputs": {"images": ["1", 0]}}}))
    pod.env.update(WARMUP_WORKFLOW=str(workflow), STANDIN_MODE="prompt_oom")
    run = supervisor(pod)
    failed = run.wait_for("supervise.warmup_failed")
    assert "CUDA out of memory" in failed["error"]
    deadline = time.monotonic() + 10
    while True:  # the loop publishes the reason at its next tick
        body = get(f"{pod.status_url}/readyz").json()
        if any("warmup failed" in r for r in body["not_ready"]) or time.monotonic() > deadline:
            break
        time.sleep(0.05)
    assert body["ready"] is False and "warmup failed" in body["not_ready"][0]
    assert run.named("comfyui.exited") == []  # an OOM inside a prompt is not a restart case
    run.send(signal.SIGTERM)
    run.wait()


def test_drain_lets_the_running_prompt_finish(pod, supervisor):
    pod.env.update(DRAIN_TIMEOUT="5", STANDIN_PROMPT_SECONDS="1.0")
    run = supervisor(pod)
    run.wait_for("supervise.ready")
    prompt = {"1": {"class_type": "EmptyImage", "inputs": {}}, "2": {"class_type": "SaveImage", "inputs": {}}}
    httpx.post(f"{pod.comfy_url}/prompt", json={"prompt": prompt}, timeout=5, trust_env=False)
    deadline = time.monotonic() + 10
    while not get(f"{pod.comfy_url}/queue").json()["queue_running"]:  # the prompt is running now
        assert time.monotonic() < deadline
        time.sleep(0.02)
    run.send(signal.SIGTERM)
    run.wait_for("supervise.draining")
    assert run.wait() == 143
    (done,) = pod.records("prompt_done")
    drained = run.wait_for("supervise.drained")
    assert drained["unfinished"] == []
    assert done["t"] <= _ts(drained["timestamp"]) + 0.05


def test_dry_run_launches_comfyui_but_is_not_ready(pod, supervisor):
    pod.env.update(DRY_RUN="true", HF_HUB_OFFLINE="true")
    run = supervisor(pod, "--gpu", "RTX 4090", "--ram", "64GiB", "--disk", "500GB")
    run.wait_for("comfyui.answering")
    deadline = time.monotonic() + 10
    while True:
        body = get(f"{pod.status_url}/readyz").json()
        if any("DRY_RUN" in r for r in body["not_ready"]) or time.monotonic() > deadline:
            break
        time.sleep(0.1)
    assert any("DRY_RUN=true" in r for r in body["not_ready"]), body
    run.send(signal.SIGTERM)
    assert run.wait() == 143


def _ts(text: str) -> float:
    from datetime import datetime

    return datetime.fromisoformat(text.replace("Z", "+00:00")).timestamp()


def test_stop_during_backoff_is_immediate(pod, supervisor):
    pod.env.update(STANDIN_MODE="crash_at_start", RESTART_BACKOFF_INITIAL="30")
    run = supervisor(pod)
    run.wait_for("supervise.restart_scheduled")
    assert run.status()["phase"] == "backoff"
    started = time.monotonic()
    run.send(signal.SIGTERM)
    assert run.wait() == 143
    assert time.monotonic() - started < 10  # not the 30 s backoff
    assert len(run.named("comfyui.spawned")) == 1


def test_custom_command_and_an_in_place_reboot(pod, supervisor):
    # A custom launcher that drops Manager's session variable: Manager then reboots in place (os.execv, same pid).
    pod.modes("reboot_after:0.3", "")
    pod.env["COMFYUI_COMMAND"] = (f"env -u __COMFY_CLI_SESSION__ {sys.executable} main.py --listen 127.0.0.1 "
                                  f"--port {pod.env['COMFYUI_PORT']}")
    run = supervisor(pod)
    first = run.wait_for("supervise.ready")
    assert run.named("comfyui.flags_read") == []  # a custom command is not checked against --help
    again = run.wait_for("comfyui.restarting_in_place")
    second = run.wait_for("supervise.ready", count=2)
    assert first["pid"] == again["pid"] == second["pid"]  # the same process, started over
    assert run.named("comfyui.exited") == [] and len(pod.records("start")) == 2
    run.send(signal.SIGTERM)
    assert run.wait() == 143
