"""`supervisor run` behaviour that must not break silently (issues 13 and 19): the status port already taken, JSON-only
output, a hung ComfyUI that ignores SIGTERM, the grace's SIGKILL outside a PID namespace, OOM_DOWNGRADE=false,
each condition that keeps /readyz at 503, and no secret in anything the supervisor serves."""

from __future__ import annotations

import json
import signal
import socket
import time
from pathlib import Path

import httpx
import pytest

from .conftest import REPO, present_plan_files

pytestmark = pytest.mark.timeout(90)
SECRET = "hf_ServedSecret0123456789abcdefXYZ"
CORE_OBJECT_INFO = REPO / "tests" / "data" / "workflows" / "comfyui-core-object-info.json"


def get(url: str) -> httpx.Response:
    return httpx.get(url, timeout=5, trust_env=False)


def wait_until(predicate, timeout: float = 20.0, what: str = "") -> None:
    deadline = time.monotonic() + timeout
    while not predicate():
        assert time.monotonic() < deadline, f"not within {timeout} s: {what}"
        time.sleep(0.05)  # polling a condition, with a deadline


def readyz(pod) -> tuple[int, list[str]]:
    try:
        response = get(f"{pod.status_url}/readyz")
    except httpx.HTTPError:
        return 0, []
    return response.status_code, response.json().get("not_ready", [])


def test_a_status_port_already_taken_stops_the_start_with_an_error_naming_it(pod, supervisor):
    host, port = pod.env["STATUS_ADDR"].rsplit(":", 1)
    with socket.socket() as holder:
        holder.bind((host, int(port)))
        holder.listen()
        run = supervisor(pod)
        assert run.wait() == 2
    (error,) = run.named("config.error")
    assert error["problems"][0].startswith("STATUS_ADDR: ") and "free loopback port" in error["problems"][0]
    assert pod.records("start") == []  # ComfyUI was never started behind a blind healthcheck
    assert all(line.startswith("{") for line in run.raw + run.stderr)  # LOG_FORMAT=json: nothing but JSON


def test_a_configuration_error_is_json_only_with_json_logs(pod, supervisor):
    run = supervisor(pod, env={"COMFYUI_PORT": "http", "GPU_MEMORY_MODE": "turbo"})
    assert run.wait() == 2
    lines = run.raw + run.stderr
    assert lines and all(isinstance(json.loads(line), dict) for line in lines)
    (error,) = run.named("config.error")
    assert len(error["problems"]) == 2


def test_a_hung_comfyui_that_ignores_sigterm_gets_sigkill(pod, supervisor):
    pod.modes("hang_after:0.2,ignore_sigterm", "")
    pod.env.update(HEALTH_INTERVAL="0.2", HEALTH_TIMEOUT="0.3", HEALTH_FAILURES="2", SHUTDOWN_GRACE="0.5")
    run = supervisor(pod)
    run.wait_for("comfyui.killing", reason="hang")
    exited = run.wait_for("comfyui.exited")
    assert exited["class"] == "hang" and exited["signal"] == "SIGKILL"
    run.wait_for("supervise.ready", count=2)  # and restarted
    run.send(signal.SIGTERM)
    run.wait()


def test_the_grace_ends_with_sigkill_as_a_subreaper_too(pod, supervisor):
    # The same duty as PID 1 (test_run.py), where no PID namespace is available: a plain child subreaper.
    pod.env.update(STANDIN_MODE="ignore_sigterm", SHUTDOWN_GRACE="0.6")
    run = supervisor(pod, pid1=False)
    run.wait_for("supervise.ready")
    assert run.named("init.ready")[0]["subreaper"] is True
    run.send(signal.SIGTERM)
    assert run.wait() == 128 + signal.SIGKILL
    run.wait_for("supervise.grace_expired")
    (exiting,) = run.named("comfyui.exited")
    assert exiting["signal"] == "SIGKILL"


def test_oom_downgrade_false_restarts_on_the_same_plan(pod, supervisor):
    present_plan_files(pod, "--gpu", "RTX 4090", "--ram", "64GiB")
    pod.modes("oom_after:0.3", "")
    pod.env.update(OOM_DOWNGRADE="false")
    run = supervisor(pod, "--gpu", "RTX 4090", "--ram", "64GiB")
    run.wait_for("supervise.ready")
    exited = run.wait_for("comfyui.exited")
    assert exited["class"] == "oom"
    run.wait_for("supervise.ready", count=2)
    assert run.named("supervise.downgrade") == []
    status = run.status()
    assert status["plan"]["degrade"] == {} and status["last_exit"]["class"] == "oom"
    run.send(signal.SIGTERM)
    run.wait()


def test_not_ready_while_comfyui_starts(pod, supervisor):
    pod.modes("slow_start:3", "")
    run = supervisor(pod)
    wait_until(lambda: "ComfyUI is starting" in readyz(pod)[1], what="the starting reason")
    assert readyz(pod)[0] == 503
    status = run.status()  # the one instance says the same, once
    assert status["instances"][0]["not_ready"] == status["not_ready"] and status["instances"][0]["ready"] is False
    run.wait_for("supervise.ready")
    assert readyz(pod) == (200, [])
    run.send(signal.SIGTERM)
    run.wait()


def test_not_ready_while_the_plan_has_errors(pod, supervisor):
    pod.env.update(STEADYDANCER_VARIANT="bf16", GPU_MEMORY_MODE="full")
    run = supervisor(pod, "--vram", "8GiB", "--ram", "64GiB", "--disk", "500GB")
    run.wait_for("comfyui.answering")
    wait_until(lambda: any(r.startswith("plan has errors") for r in readyz(pod)[1]), what="the plan's errors")
    assert readyz(pod)[0] == 503
    run.send(signal.SIGTERM)
    run.wait()


@pytest.mark.parametrize("blocks", [True, False])
def test_a_failed_workflow_check_blocks_readiness_only_when_asked(pod, supervisor, blocks):
    present_plan_files(pod, "--gpu", "RTX 4090", "--ram", "64GiB")
    # A ComfyUI without the SteadyDancer node packs: the shipped workflows fail the check.
    pod.env.update(STANDIN_OBJECT_INFO=str(CORE_OBJECT_INFO), CHECK_BLOCKS_READY=str(blocks).lower())
    run = supervisor(pod, "--gpu", "RTX 4090", "--ram", "64GiB")
    run.wait_for("workflows.check_failed")
    if blocks:
        wait_until(lambda: any(r.startswith("workflow check failed") for r in readyz(pod)[1]), what="check reason")
        assert readyz(pod)[0] == 503 and run.named("supervise.ready") == []
    else:
        run.wait_for("supervise.ready")
        assert readyz(pod) == (200, [])
    run.send(signal.SIGTERM)
    run.wait()


def test_no_secret_in_anything_the_supervisor_serves(pod, supervisor):
    pod.env.update(HF_TOKEN=SECRET, CIVITAI_API_KEY="civitai-served-secret-42", JUPYTER_PASSWORD="jupyter-secret-77",
                   R2_SECRET_ACCESS_KEY="r2-served-secret-99", COMFYUI_ARGS="--disable-metadata")
    run = supervisor(pod)
    run.wait_for("supervise.ready")
    bodies = [get(f"{pod.status_url}{route}").text for route in ("/status", "/readyz", "/healthz", "/metrics", "/")]
    served = "\n".join(bodies)
    assert '"phase"' in bodies[0]  # the status page itself was read
    for secret in (SECRET, "civitai-served-secret-42", "jupyter-secret-77", "r2-served-secret-99"):
        assert secret not in served
    assert SECRET not in Path(pod.env["LOG_DIR"], "comfyui.log").read_text()
    run.send(signal.SIGTERM)
    run.wait()


def test_the_flag_check_is_cached_per_checkout(pod, supervisor):
    def flags_read() -> dict:
        run = supervisor(pod)
        event = run.wait_for("comfyui.flags_read")
        run.wait_for("supervise.ready")
        run.send(signal.SIGTERM)
        run.wait()
        return event

    first = flags_read()
    assert first["cached"] is False and first["flags"] > 50
    again = flags_read()
    assert again["cached"] is True and again["flags"] == first["flags"]  # no `main.py --help` this time
    main = Path(pod.env["COMFYUI_DIR"]) / "main.py"
    main.write_text(main.read_text() + "\n# updated checkout\n")  # a git pull, a new image: ask again
    assert flags_read()["cached"] is False
