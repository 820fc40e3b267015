"""One ComfyUI per GPU on a real multi-GPU host: `supervisor run` as PID 1 with COMFYUI_PER_GPU=true, measured.

    python bench/per_gpu.py --comfyui-dir DIR [--variant fp8] [--out bench/results]

On a host with two or more NVIDIA GPUs, ComfyUI at the Dockerfile's pins with its node packs, and the stand-in
weights of the real shapes (bench/standin_weights.py) served by the stand-in Hub (same setup as gpu_classes.py,
whose Bench this reuses). Real NVML, no simulation. It records:

1. start of the supervisor -> every instance ready (one fetch of the union of the files);
2. that each ComfyUI holds memory on its own GPU only (NVML per-process memory of every GPU, sampled while the
   prompts run);
3. the fast-preset SteadyDancer prompt on each instance alone, then on all at once: the concurrent/alone ratio
   shows whether they interfere (shared CPU, PCIe, page cache);
4. `kill -9` of the last instance: only it restarts (the others keep their pid), and how long until it is ready;
5. SIGTERM: every instance stops within the grace, the supervisor's exit code and time.

`--cpu-rehearsal` runs the same flow on a machine without GPUs (simulated GPUs, ComfyUI --cpu, scaled-down
weights): it checks the flow, not the figures.
"""

from __future__ import annotations

import argparse
import json
import os
import signal
import subprocess
import sys
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import psutil

import gpu_classes  # noqa: E402 (puts bench/ and the repository on sys.path)
import gpu_measure
from gpu_classes import REPO, Bench, _event
from pod_e2e import Events, free_port

GIB = 1 << 30


class PerGpu(Bench):
    runs = 0

    def pod_plan(self, ports: list[int]) -> dict[str, Any]:
        env = {**self.env(ports[0], 8189), **self.pod_env(ports)}
        proc = subprocess.run([sys.executable, "-m", "supervisor", "plan", "--json", *self.hardware_args()], cwd=REPO,
                              env=env, capture_output=True, text=True, timeout=120)
        if not proc.stdout.strip().startswith("{"):
            raise SystemExit(f"supervisor plan failed ({proc.returncode}): {proc.stderr[-2000:]}")
        return json.loads(proc.stdout)

    def pod_env(self, ports: list[int]) -> dict[str, str]:
        return {"COMFYUI_PER_GPU": "true", "COMFYUI_PORTS": ",".join(map(str, ports)),
                "STEADYDANCER_VARIANT": self.args.variant, "OOM_STEP_DOWN": "off",
                "COMFYUI_ARGS": self.args.comfyui_args}

    def hardware_args(self) -> list[str]:
        # Real NVML on a GPU host; two simulated GPUs in a CPU rehearsal. The disk is simulated on both: the
        # stand-in files are written before the plan's fetch counts them.
        sim = ["--gpu", "h200", "--gpu-count", str(self.args.instances)] if not self.cuda else []
        return [*sim, "--ram", gpu_classes.HOST_RAM, "--disk", gpu_classes.HOST_DISK]

    def comfy_pids(self, root: int, ports: list[int]) -> dict[int, int]:
        """port -> host pid of the ComfyUI listening there (found from its command line)."""
        found: dict[int, int] = {}
        deadline = time.monotonic() + 30
        while len(found) < len(ports) and time.monotonic() < deadline:
            for child in psutil.Process(root).children(recursive=True):
                try:
                    argv = child.cmdline()
                except psutil.Error:
                    continue
                if "main.py" in " ".join(argv) and "--port" in argv:
                    found[int(argv[argv.index("--port") + 1])] = child.pid
            time.sleep(0.2)
        return found

    def device_use(self) -> dict[int, dict[int, int]]:
        """GPU index -> {host pid: bytes} from NVML's compute processes."""
        if not self.cuda:
            return {}
        import pynvml

        out: dict[int, dict[int, int]] = {}
        for index in range(pynvml.nvmlDeviceGetCount()):
            handle = pynvml.nvmlDeviceGetHandleByIndex(index)
            out[index] = {p.pid: int(p.usedGpuMemory or 0) for p in pynvml.nvmlDeviceGetComputeRunningProcesses(handle)}
        return out

    def workflow_for(self, index: int, name: str) -> dict[str, Any]:
        user = self.data / "user" if index == 0 else self.data / "instances" / f"comfyui-{index}" / "user"
        prompt = json.loads((user / "default" / "workflows_api" / f"{name}.json").read_text())
        self.runs += 1
        for node in prompt.values():  # a new seed each time: ComfyUI would answer an identical prompt from its cache
            if isinstance(node["inputs"].get("seed"), int):
                node["inputs"]["seed"] = 1000 + self.runs
        if self.args.size:
            width, height, frames = (int(x) for x in self.args.size.split("x"))
            for node in prompt.values():
                if node["class_type"] == "ImageResizeKJv2":
                    node["inputs"].update(width=width, height=height)
                if node["class_type"] == "VHS_LoadVideo":
                    node["inputs"]["frame_load_cap"] = frames
        return prompt

    def prompt(self, index: int, port: int) -> dict[str, Any]:
        workflow = self.workflow_for(index, "steadydancer_fast")
        result = gpu_measure.run_prompt(f"http://127.0.0.1:{port}", "steadydancer_fast", workflow,
                                        self.args.prompt_timeout)
        timing = gpu_measure.timings(result, workflow)
        return {"instance": f"comfyui-{index}", "status": result.status, "prompt_s": round(result.seconds, 2),
                "s_per_step": timing.get("s_per_step"), "error": result.error or None}

    def run(self) -> int:
        self.prepare()
        count = self.args.instances
        ports = [free_port() for _ in range(count)]
        status_port = free_port()
        plan = self.pod_plan(ports)
        instances = plan.get("instances") or []
        self.results.update(kind="per-gpu", plan_instances=[
            {k: i[k] for k in ("name", "port", "gpu", "cuda_visible_devices")} |
            {"model": next(m for m in i["plan"]["models"] if m["feature"] == "steadydancer")} for i in instances])
        downloads = {d["dest"]: d for i in instances for d in i["plan"]["downloads"]}
        self.ensure_files(list(downloads.values()))
        env = {**self.env(ports[0], status_port), **self.pod_env(ports),
               "HF_ENDPOINT": self.hub.url.replace("127.0.0.1", "localhost")}
        (self.data / ".supervisor" / "oom-steps.json").unlink(missing_ok=True)
        argv = ["unshare", "--pid", "--fork", "--mount-proc", "--kill-child", sys.executable, "-m", "supervisor",
                "run", *self.hardware_args()]
        started = time.time()
        proc = subprocess.Popen(argv, cwd=REPO, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
        events = Events(proc.stdout)
        out: dict[str, Any] = {}
        self.results["per_gpu"] = out  # written after every stage: a run cut short keeps what it measured
        try:
            ready = {}
            for index in range(count):
                event = self._ready(events, f"comfyui-{index}")
                ready[f"comfyui-{index}"] = round(event["_t"] - started, 2)
            out["ready_s"] = ready
            out["all_ready_s"] = max(ready.values())
            out["fetches"] = len(events.named("fetch.started"))
            out["fetch_summary"] = [_event(e) for e in events.named("fetch.summary")]
            self.write_per_gpu()
            pids = self.comfy_pids(proc.pid, ports)
            out["pids"] = {str(port): pid for port, pid in pids.items()}
            use: dict[int, dict[int, int]] = {}
            stop_sampling = threading.Event()

            def sample() -> None:
                while not stop_sampling.wait(0.1):
                    for device, procs in self.device_use().items():
                        for pid, used in procs.items():
                            seen = use.setdefault(device, {})
                            seen[pid] = max(seen.get(pid, 0), used)

            sampler = threading.Thread(target=sample, daemon=True)
            sampler.start()
            out["alone"] = [self.prompt(index, port) for index, port in enumerate(ports)]
            self.write_per_gpu()
            with ThreadPoolExecutor(max_workers=count) as pool:
                out["together"] = list(pool.map(lambda ip: self.prompt(*ip), list(enumerate(ports))))
            stop_sampling.set()
            sampler.join()
            out["device_use"] = {str(d): {str(p): b for p, b in procs.items()} for d, procs in use.items()}
            out["own_gpu_only"] = self.own_gpu_only(use, pids, instances) if self.cuda else None
            out["interference"] = [round(t["prompt_s"] / a["prompt_s"], 3)
                                   for a, t in zip(out["alone"], out["together"]) if a["prompt_s"]]
            victim_port, survivor_port = ports[-1], ports[0]
            victim = pids[victim_port]
            killed_at = time.time()
            os.kill(victim, signal.SIGKILL)
            exited = events.wait("comfyui.exited", timeout=60)
            again = self._ready(events, f"comfyui-{count - 1}", count=2)
            respawned = [e for e in events.named("comfyui.spawned") if e.get("instance") == f"comfyui-{count - 1}"]
            after = self.comfy_pids(proc.pid, ports)
            out["kill"] = {"class": exited.get("class"), "ready_again_s": round(again["_t"] - killed_at, 2),
                           "respawned_after_s": round(respawned[-1]["_t"] - killed_at, 3) if len(respawned) > 1 else None,
                           "others_kept_their_pid": all(after.get(p) == pids[p] for p in ports[:-1]),
                           "spawns_per_instance": {f"comfyui-{i}": len([e for e in events.named("comfyui.spawned")
                                                                        if e.get("instance") == f"comfyui-{i}"])
                                                   for i in range(count)}}
            out["kill"]["survivor_pid"] = after.get(survivor_port)
        except Exception as exc:  # noqa: BLE001 - the record says what broke
            out["failure"] = f"{type(exc).__name__}: {exc}"
        finally:
            stop_began = time.time()
            self._stop(proc)
            out["stop"] = {"seconds": round(time.time() - stop_began, 2), "exit_code": proc.returncode,
                           "stopping": [_event(e) for e in events.named("supervise.stopping")][:1]}
            self.raw_logs.append("".join(events.raw))
        self.hub.stop()
        self.write_per_gpu()
        print(json.dumps({k: v for k, v in out.items() if k not in ("device_use", "fetch_summary")}, indent=1))
        return 0 if "failure" not in out else 1

    def _ready(self, events: Events, name: str, count: int = 1) -> dict[str, Any]:
        deadline = time.monotonic() + self.args.ready_timeout
        while time.monotonic() < deadline:
            found = [e for e in events.named("supervise.ready") if e.get("instance") == name]
            if len(found) >= count:
                return found[count - 1]
            time.sleep(0.2)
        raise TimeoutError(f"{name} not ready (x{count}) within {self.args.ready_timeout} s")

    @staticmethod
    def own_gpu_only(use: dict[int, dict[int, int]], pids: dict[int, int], instances: list[dict]) -> dict[str, Any]:
        """Each instance's ComfyUI holds memory on the GPU its plan names, and on no other."""
        report = {}
        for instance in instances:
            pid = pids.get(instance["port"])
            on = sorted(d for d, procs in use.items() if procs.get(pid, 0) > 0)
            report[instance["name"]] = {"gpu_index": instance["gpu"]["index"], "seen_on": on,
                                        "ok": on == [instance["gpu"]["index"]]}
        return report

    def write_per_gpu(self) -> None:
        self.write_results("per-gpu", f"{self.args.instances}x")


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--comfyui-dir", required=True)
    parser.add_argument("--comfyui-python", default=sys.executable)
    parser.add_argument("--comfyui-args", default="")
    parser.add_argument("--instances", type=int, default=2, help="GPUs to use (a CPU rehearsal simulates them)")
    parser.add_argument("--variant", default="fp8", help="STEADYDANCER_VARIANT for every instance")
    parser.add_argument("--work", default="")
    parser.add_argument("--hub-root", default="")
    parser.add_argument("--manifest", default=str(gpu_classes.standin_weights.MANIFEST))
    parser.add_argument("--onnx-scale", type=float, default=1.0)
    parser.add_argument("--size", default="", help="WxHxFRAMES instead of the workflow's (rehearsals only)")
    parser.add_argument("--cpu-rehearsal", action="store_true")
    parser.add_argument("--ready-timeout", type=float, default=600)
    parser.add_argument("--prompt-timeout", type=float, default=600)
    parser.add_argument("--out", default=str(REPO / "bench" / "results"))
    parser.add_argument("--tag", default="")
    args = parser.parse_args()
    # What Bench reads and this bench does not vary.
    args.steps, args.video_classes, args.no_pid1, args.keep_text_cache = None, [], False, True
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))
    return PerGpu(args).run()


if __name__ == "__main__":
    raise SystemExit(main())
