"""The whole pipeline on a real machine: real NVML, real ComfyUI, `supervisor run` as PID 1, measured.

One command on any CUDA host that has ComfyUI (the pinned commit) with its node packs:

    python bench/pod_e2e.py --comfyui-dir /opt/ComfyUI [--comfyui-python PY] [--out bench/results]

It runs, in order, and prints a table (also written as dated JSON and text under --out):

1. `supervisor probe` (the real NVML reading) and `supervisor plan` for this machine, for no visible GPU
   (`CUDA_VISIBLE_DEVICES=`) and for simulated cards (`--gpu ...`);
2. a stand-in Hub (tests/standins/hub.py) on loopback serving small stand-in weight files under the real
   SteadyDancer/Wan file names of this machine's plan, so the fetch phase runs for real and ComfyUI lists them;
3. `supervisor run` as PID 1 (`unshare --pid --fork --mount-proc`) with ENABLE_STEADYDANCER=true: plan, fetch,
   launch of ComfyUI with the plan's flags, health checks, until the `supervise.ready` event;
4. `supervisor check --resolved` of the shipped workflows against the live `/object_info`, and a `POST /prompt` of
   each resolved workflow (validation only: stand-in weights cannot execute), then a small core prompt executed;
5. `kill -9` of ComfyUI and the time until the restarted ComfyUI is spawned and ready again;
6. SIGTERM to the supervisor, its exit code and how long it took against the grace period;
7. the supervisor's RSS, and a scan of every log for the (fake) HF_TOKEN.

On a machine without a GPU, `--simulate-gpu h100 --comfyui-args=--cpu` rehearses the same run on the CPU.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
import urllib.error
import urllib.request
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import psutil

REPO = Path(__file__).resolve().parents[1]
TOKEN = "hf_PodE2eFakeToken0123456789abcdefghij"
SIMULATED_CARDS = ["A100 40GB", "RTX 4090", "RTX 4080", "RTX 3060"]


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def http(method: str, url: str, body: Any = None, timeout: float = 30) -> tuple[int, Any]:
    data = json.dumps(body).encode() if body is not None else None
    request = urllib.request.Request(url, data=data, method=method, headers={"Content-Type": "application/json"})
    try:
        with urllib.request.urlopen(request, timeout=timeout) as response:
            text = response.read().decode()
            return response.status, json.loads(text) if text.strip().startswith(("{", "[")) else text
    except urllib.error.HTTPError as exc:
        text = exc.read().decode()
        try:
            return exc.code, json.loads(text)
        except ValueError:
            return exc.code, text


class Events:
    """Reads the supervisor's JSON-line stdout in a thread, stamping each event with its arrival time."""

    def __init__(self, stream) -> None:
        self.items: list[dict[str, Any]] = []
        self.raw: list[str] = []
        self.cond = threading.Condition()
        threading.Thread(target=self._read, args=(stream,), daemon=True).start()

    def _read(self, stream) -> None:
        for line in stream:
            with self.cond:
                self.raw.append(line)
                try:
                    event = json.loads(line)
                except ValueError:
                    continue
                event["_t"] = time.time()
                self.items.append(event)
                self.cond.notify_all()

    def wait(self, name: str, count: int = 1, timeout: float = 300, since: int = 0) -> dict[str, Any]:
        deadline = time.monotonic() + timeout
        with self.cond:
            while True:
                found = [e for e in self.items[since:] if e.get("event") == name]
                if len(found) >= count:
                    return found[count - 1]
                left = deadline - time.monotonic()
                if left <= 0:
                    tail = [e.get("event") for e in self.items[-15:]]
                    raise TimeoutError(f"no {name} within {timeout} s; last events: {tail}")
                self.cond.wait(min(left, 0.5))

    def named(self, name: str) -> list[dict[str, Any]]:
        with self.cond:
            return [e for e in self.items if e.get("event") == name]


class Pod:
    def __init__(self, args: argparse.Namespace, work: Path):
        self.args, self.work = args, work
        self.models, self.data, self.logs = work / "models", work / "data", work / "logs"
        self.port, self.status_port = free_port(), free_port()
        self.env = {
            **{k: v for k, v in os.environ.items() if k in ("PATH", "HOME", "PYTHONPATH", "LANG", "LD_LIBRARY_PATH")},
            "LOG_FORMAT": "json", "MODELS_DIR": str(self.models), "COMFYUI_DATA_DIR": str(self.data),
            "LOG_DIR": str(self.logs), "COMFYUI_DIR": str(args.comfyui_dir),
            "COMFYUI_PYTHON": args.comfyui_python, "COMFYUI_PORT": str(self.port), "COMFYUI_LISTEN": "127.0.0.1",
            "STATUS_ADDR": f"127.0.0.1:{self.status_port}", "ENABLE_STEADYDANCER": "true", "HF_TOKEN": TOKEN,
            "HEALTH_INTERVAL": "2", "RESTART_BACKOFF_INITIAL": "0.5", "SHUTDOWN_GRACE": str(args.grace),
            "STARTUP_TIMEOUT": "600", "DISK_RESERVE_GB": "1",
        }
        if args.comfyui_args:
            self.env["COMFYUI_ARGS"] = args.comfyui_args

    @property
    def hardware_args(self) -> list[str]:
        return ["--gpu", self.args.simulate_gpu] if self.args.simulate_gpu else []

    def supervisor(self, *argv: str, env: dict[str, str] | None = None, timeout: float = 300) -> subprocess.CompletedProcess:
        return subprocess.run([sys.executable, "-m", "supervisor", *argv], cwd=REPO, env={**self.env, **(env or {})},
                              capture_output=True, text=True, timeout=timeout)


def plans(pod: Pod) -> dict[str, Any]:
    """The plan for this machine, for no visible GPU and for simulated cards."""
    cases: list[tuple[str, list[str], dict[str, str]]] = [("this machine", pod.hardware_args, {}),
                                                          ("CUDA_VISIBLE_DEVICES=''", [], {"CUDA_VISIBLE_DEVICES": ""})]
    cases += [(card, ["--gpu", card], {}) for card in SIMULATED_CARDS]
    out = {}
    for label, argv, env in cases:
        proc = pod.supervisor("plan", "--json", *argv, env=env)
        plan = json.loads(proc.stdout)
        model = next((m for m in plan["models"] if m["feature"] == "steadydancer"), {})
        knobs = model.get("knobs") or {}
        out[label] = {"exit": proc.returncode, "gpu": (plan.get("gpu") or {}).get("name", "none"),
                      "vram_class": plan["vram_class"], "variant": model.get("variant"),
                      "offload": model.get("offload"), "blocks_to_swap": knobs.get("blocks_to_swap"),
                      "comfyui_args": plan["comfyui_args"], "reason": model.get("reason"),
                      "downloads": plan["downloads"]}
    return out


def stand_in_files(root: Path, downloads: list[dict[str, Any]], size: int) -> int:
    """Small files under the real repos and paths: content is junk, names are what ComfyUI lists."""
    total = 0
    for d in downloads:
        if d["kind"] != "file":
            continue
        path = root / d["repo"] / d["path"]
        path.parent.mkdir(parents=True, exist_ok=True)
        n = size * 8 if d["dest"].startswith("diffusion_models/") else size  # one file big enough for ranges
        path.write_bytes(os.urandom(n))
        total += n
    return total


INPUTS_CODE = """
import sys, numpy as np, cv2
folder = sys.argv[1]
cv2.imwrite(folder + '/steadydancer_reference.png', np.full((832, 480, 3), 200, np.uint8))
video = cv2.VideoWriter(folder + '/steadydancer_driving.mp4', cv2.VideoWriter_fourcc(*'mp4v'), 16, (480, 832))
for i in range(81):
    video.write(np.full((832, 480, 3), i * 3, np.uint8))
video.release()
"""


def stand_in_inputs(python: str, folder: Path) -> bool:
    """The reference image and driving video the workflows load, made with ComfyUI's own Python (it has cv2)."""
    folder.mkdir(parents=True, exist_ok=True)
    return subprocess.run([python, "-c", INPUTS_CODE, str(folder)], capture_output=True).returncode == 0


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--comfyui-dir", type=Path, required=True)
    parser.add_argument("--comfyui-python", default=sys.executable)
    parser.add_argument("--comfyui-args", default="", help="extra ComfyUI flags (e.g. --cpu for a rehearsal)")
    parser.add_argument("--simulate-gpu", default="", help="plan as this GPU (rehearsal on a machine without one)")
    parser.add_argument("--work", type=Path, default=None)
    parser.add_argument("--out", type=Path, default=REPO / "bench" / "results")
    parser.add_argument("--stand-in-bytes", type=int, default=4 << 20)
    parser.add_argument("--grace", type=float, default=8.0)
    parser.add_argument("--no-pid1", action="store_true", help="run as a child subreaper instead of PID 1")
    args = parser.parse_args()
    work = args.work or Path(tempfile.mkdtemp(prefix="pod-e2e-"))
    pod = Pod(args, work)
    results: dict[str, Any] = {"started": datetime.now(timezone.utc).isoformat(timespec="seconds"),
                               "host": platform.node(), "python": platform.python_version()}

    probe = pod.supervisor("probe", *pod.hardware_args)
    hardware = json.loads(probe.stdout)
    results["hardware"] = hardware
    gpu_name = hardware["gpus"][0]["name"] if hardware["gpus"] else "no GPU"
    results["plans"] = plans(pod)
    downloads = results["plans"]["this machine"].pop("downloads")
    for case in results["plans"].values():
        case.pop("downloads", None)

    hub_root = work / "hub"
    stand_in_bytes = stand_in_files(hub_root, downloads, args.stand_in_bytes)
    hub = subprocess.Popen([sys.executable, "-m", "tests.standins.hub", "--root", str(hub_root)], cwd=REPO,
                           stdout=subprocess.PIPE, text=True)
    urls = json.loads(hub.stdout.readline())  # type: ignore[union-attr]
    pod.env["HF_ENDPOINT"] = urls["hub"]
    results["stand_in"] = {"files": len(downloads), "bytes": stand_in_bytes,
                           "inputs": stand_in_inputs(args.comfyui_python, pod.data / "input")}

    argv = [sys.executable, "-m", "supervisor", "run", *pod.hardware_args]
    if not args.no_pid1:
        argv = ["unshare", "--pid", "--fork", "--mount-proc", "--kill-child", *argv]
    t_start = time.time()
    proc = subprocess.Popen(argv, cwd=REPO, env=pod.env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    events = Events(proc.stdout)
    base = f"http://127.0.0.1:{pod.port}"
    try:
        ready = events.wait("supervise.ready", timeout=600)
        spawned = events.wait("comfyui.spawned")
        answering = events.wait("comfyui.answering")
        supervisor_pid = proc.pid if args.no_pid1 else psutil.Process(proc.pid).children()[0].pid
        phases = ready.get("phases", {})
        results["run"] = {
            "ready_s": round(ready["_t"] - t_start, 3), "phases": phases,
            "comfyui_argv": spawned.get("argv"),
            "comfyui_own_startup_s": phases.get("comfyui_start_s"),
            "launch_after_start_s": round(spawned["_t"] - t_start, 3),
            "answer_to_ready_ms": round((ready["_t"] - answering["_t"]) * 1000, 1),
            "fetch": (events.named("fetch.done") or events.named("fetch.failed") or [{}])[0].get("event"),
            "downloaded_bytes": (events.named("fetch.done") or [{}])[0].get("bytes"),
            "pid1": not args.no_pid1,
        }
        # Time the supervisor adds on top of ComfyUI's own start: everything before the spawn, plus answer -> ready.
        results["run"]["supervisor_overhead_s"] = round(
            results["run"]["launch_after_start_s"] + results["run"]["answer_to_ready_ms"] / 1000, 3)
        status = http("GET", f"http://127.0.0.1:{pod.status_port}/status")[1]
        results["status_at_ready"] = {k: status.get(k) for k in ("phase", "ready", "plan", "workflows")}
        health = subprocess.run([sys.executable, "-m", "supervisor", "health", "--addr",
                                 f"127.0.0.1:{pod.status_port}"], cwd=REPO, env=pod.env, capture_output=True,
                                text=True)
        results["health"] = {"exit": health.returncode, "output": health.stdout.strip() or health.stderr.strip()}

        check = pod.supervisor("check", "--resolved", "--json", "--url", base, *pod.hardware_args)
        try:
            check_data = json.loads(check.stdout)
        except ValueError:
            check_data = check.stdout[-2000:]
        results["check"] = {"exit": check.returncode, "result": check_data}

        posted = {}
        api_dir = pod.data / "user" / "default" / "workflows_api"
        for path in sorted(api_dir.glob("*.json")):
            code, body = http("POST", f"{base}/prompt", {"prompt": json.loads(path.read_text())})
            posted[path.stem] = {"http": code, "node_errors": body.get("node_errors") if isinstance(body, dict) else body}
        http("POST", f"{base}/queue", {"clear": True})
        http("POST", f"{base}/interrupt", {})
        results["workflows_posted"] = posted

        small = {"1": {"class_type": "EmptyImage", "inputs": {"width": 64, "height": 64, "batch_size": 1,
                                                            "color": 16711680}},
                 "2": {"class_type": "ImageInvert", "inputs": {"image": ["1", 0]}},
                 "3": {"class_type": "SaveImage", "inputs": {"images": ["2", 0], "filename_prefix": "pod_e2e"}}}
        for _ in range(60):  # let the interrupted workflows leave the queue
            queue = http("GET", f"{base}/queue")[1]
            if not queue.get("queue_running") and not queue.get("queue_pending"):
                break
            time.sleep(1)
        t_prompt = time.time()
        code, body = http("POST", f"{base}/prompt", {"prompt": small})
        prompt_id = body.get("prompt_id") if isinstance(body, dict) else None
        outcome = None
        for _ in range(120):
            history = http("GET", f"{base}/history/{prompt_id}")[1]
            if isinstance(history, dict) and prompt_id in history:
                outcome = history[prompt_id]["status"]["status_str"]
                break
            time.sleep(0.5)
        results["small_prompt"] = {"http": code, "status": outcome, "seconds": round(time.time() - t_prompt, 2)}

        rss = psutil.Process(supervisor_pid).memory_info().rss
        comfy = [p for p in psutil.Process(supervisor_pid).children(recursive=True)
                 if "main.py" in " ".join(p.cmdline())]
        results["rss_mb"] = {"supervisor": round(rss / 1e6, 1),
                             "comfyui": round(comfy[0].memory_info().rss / 1e6, 1) if comfy else None}

        count = len(events.named("comfyui.spawned"))
        t_kill = time.time()
        os.kill(comfy[0].pid, signal.SIGKILL)
        exited = events.wait("comfyui.exited", timeout=60)
        respawned = events.wait("comfyui.spawned", count=count + 1, timeout=120)
        ready_again = events.wait("supervise.ready", count=2, timeout=600)
        results["restart"] = {"class": exited.get("class") or exited.get("exit_class"),
                              "kill_to_spawn_ms": round((respawned["_t"] - t_kill) * 1000, 1),
                              "kill_to_ready_s": round(ready_again["_t"] - t_kill, 2),
                              "comfyui_start_s": ready_again.get("phases", {}).get("comfyui_start_s")}

        t_term = time.time()
        os.kill(supervisor_pid, signal.SIGTERM)
        code = proc.wait(60)
        results["shutdown"] = {"exit_code": code, "seconds": round(time.time() - t_term, 3),
                               "grace_s": args.grace, "within_grace": time.time() - t_term <= args.grace + 1}
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
        hub.terminate()
        hub.wait()
    logs = "".join(events.raw) + "".join(p.read_text(errors="replace") for p in pod.logs.glob("*.log*"))
    results["token_in_logs"] = TOKEN in logs
    # ComfyUI's own warnings and errors (tracebacks of stand-in weights executing are expected), for the record.
    results["comfyui_warnings"] = sorted({e["line"][:200] for e in events.named("comfyui.log")
                                          if e.get("level") == "warning" and not e["line"].startswith(" ")})
    results["events"] = len(events.items)
    write(results, gpu_name, args.out, "".join(events.raw))
    return 0 if results["shutdown"]["exit_code"] in (0, 143) and not results["token_in_logs"] else 1


def table(results: dict[str, Any]) -> str:
    run, restart, shutdown = results["run"], results["restart"], results["shutdown"]
    phases = run["phases"]
    hw = results["hardware"]
    gpu = hw["gpus"][0] if hw["gpus"] else {}
    rows = [
        ("GPU (NVML)", f"{gpu.get('name', 'none')}, {gpu.get('total', 0):,} B, reserved {gpu.get('reserved', 0):,} B, "
                       f"driver {hw.get('driver_version')}"),
        ("plan on this machine", "{variant} / {offload} / {blocks_to_swap} blocks swapped / {comfyui_args}".format(
            **results["plans"]["this machine"])),
    ]
    for label, plan in results["plans"].items():
        if label != "this machine":
            rows.append((f"plan as {label}", f"{plan['gpu']}: {plan['variant']} / {plan['offload']} / "
                                             f"{plan['blocks_to_swap']} / {' '.join(plan['comfyui_args'])}"))
    rows += [
        ("supervisor start -> ready", f"{run['ready_s']:.2f} s (PID 1: {run['pid1']})"),
        ("  plan", f"{phases.get('plan_s')} s"),
        ("  fetch (stand-in files)", f"{phases.get('fetch_s')} s, {results['stand_in']['files']} files, "
                                     f"{results['stand_in']['bytes'] / 1e6:.0f} MB"),
        ("  ComfyUI's own startup (spawn -> answers)", f"{run['comfyui_own_startup_s']} s"),
        ("  workflow check at start", f"{phases.get('check_s')} s"),
        ("  supervisor overhead (before spawn + answer->ready)", f"{run['supervisor_overhead_s']} s"),
        ("ComfyUI answers -> ready event", f"{run['answer_to_ready_ms']} ms"),
        ("supervisor health", f"exit {results['health']['exit']}: {results['health']['output']}"),
        ("supervisor check --resolved (live /object_info)", f"exit {results['check']['exit']}"),
        ("POST /prompt of resolved workflows", ", ".join(f"{k}: {v['http']} {len(v['node_errors'] or {})} node errors"
                                                        for k, v in results["workflows_posted"].items())),
        ("small prompt executed", f"{results['small_prompt']['status']} in {results['small_prompt']['seconds']} s"),
        ("RSS supervisor / ComfyUI", f"{results['rss_mb']['supervisor']} MB / {results['rss_mb']['comfyui']} MB"),
        ("kill -9 ComfyUI -> restart spawned", f"{restart['kill_to_spawn_ms']} ms (class {restart['class']})"),
        ("kill -9 ComfyUI -> ready again", f"{restart['kill_to_ready_s']} s"),
        ("SIGTERM -> supervisor exit", f"{shutdown['seconds']} s, exit {shutdown['exit_code']}, grace "
                                       f"{shutdown['grace_s']} s"),
        ("HF_TOKEN in any log", str(results["token_in_logs"])),
        ("ComfyUI warning lines (distinct)", str(len(results["comfyui_warnings"]))),
    ]
    width = max(len(r[0]) for r in rows)
    return "\n".join(f"{name:<{width}}  {value}" for name, value in rows) + "\n"


def write(results: dict[str, Any], gpu_name: str, out: Path, raw_log: str) -> None:
    out.mkdir(parents=True, exist_ok=True)
    slug = "".join(c if c.isalnum() else "-" for c in gpu_name).strip("-").lower()
    stamp = results["started"][:10]
    text = table(results)
    print(text, end="")
    (out / f"pod-e2e-{stamp}-{slug}.json").write_text(json.dumps(results, indent=1, default=str))
    (out / f"pod-e2e-{stamp}-{slug}.txt").write_text(text)
    (out / f"pod-e2e-{stamp}-{slug}.log").write_text(raw_log)


if __name__ == "__main__":
    raise SystemExit(main())
