"""Every card class on one big GPU: the plan `supervisor run --gpu NAME` picks, run for real, its peak measured.

    python bench/gpu_classes.py --comfyui-dir DIR [--classes h200,h100,...] [--out bench/results]

On any CUDA host with ComfyUI at the Dockerfile's pins and its node packs. For each card class (config/gpus.toml):

1. `supervisor plan --json --gpu NAME --ram 128GiB` gives the plan (variant, offload, blocks swapped, ComfyUI flags,
   the VRAM budget: its total less the headroom line is the predicted peak);
2. the plan's files are generated with the real names, shapes and dtypes and random values
   (bench/standin_weights.py, bench/standin_onnx.py) into a stand-in Hub (tests/standins/hub.py, in this process,
   on loopback); one DiT variant at a time is kept, the classes are run grouped by variant;
3. `supervisor run --gpu NAME` runs as PID 1 (`unshare --pid --fork --mount-proc`), fetches the files from the Hub,
   resolves the shipped workflows and launches ComfyUI with the plan's flags. ComfyUI's PyTorch allocator is capped
   at the card's size (NVML total - driver reserved - the CUDA context) by a startup hook (bench/comfy_hook), and
   `--reserve-vram` (in COMFYUI_ARGS) makes ComfyUI's model management see the same free memory;
4. the resolved `steadydancer_fast` workflow is POSTed (2 sampling steps, or the preset's own steps on the classes
   that make the finished video; `steadydancer_pose` and `steadydancer_quality` too on the first class) and followed
   through /history; ComfyUI's process memory is sampled through NVML at 20 Hz, and PyTorch's peaks come from the
   hook, per node;
5. a table is printed and a dated JSON (`classes`: one entry per class) written to --out, after every class.

`--cpu-rehearsal` runs the same on a machine without a GPU (ComfyUI `--cpu`, a scaled-down DiT, small frames);
`--oom-demo CLASS` caps ComfyUI below the plan's peak and follows the supervisor's out-of-memory step-down.
"""

from __future__ import annotations

import argparse
import gzip
import hashlib
import json
import os
import platform
import shutil
import signal
import subprocess
import sys
import tempfile
import time
import tomllib
from concurrent.futures import ThreadPoolExecutor
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import psutil

BENCH = Path(__file__).resolve().parent
REPO = BENCH.parent
sys.path[:0] = [str(BENCH), str(REPO)]

import gpu_measure  # noqa: E402
import standin_onnx  # noqa: E402
import standin_tokenizer  # noqa: E402
import standin_weights  # noqa: E402
from pod_e2e import TOKEN, Events, free_port, stand_in_inputs  # noqa: E402
from tests.standins.hub import FileMeta, Hub  # noqa: E402

GIB = 1 << 30
CLASSES = ["h200", "h100", "l40s", "a100-40gb", "rtx-5090", "rtx-4090", "rtx-4080", "rtx-3060"]
VIDEO_CLASSES = ["h200", "rtx-4090", "rtx-3060"]  # the fast preset at its own steps, to a finished MP4
COMFYUI_DEFAULT_RESERVE_GIB = 0.4  # ComfyUI keeps 400 MB free on Linux unless --reserve-vram says otherwise
HOST_RAM = "128GiB"  # the README tier table's assumption
HOST_DISK = "2TB"


def _event(event: dict[str, Any]) -> dict[str, Any]:
    return {k: v for k, v in event.items() if k not in ("timestamp", "level")}


def gpus() -> dict[str, dict[str, Any]]:
    with open(REPO / "config" / "gpus.toml", "rb") as f:
        return tomllib.load(f)["gpus"]


class Bench:
    def __init__(self, args: argparse.Namespace):
        self.args = args
        self.work = Path(args.work or tempfile.mkdtemp(prefix="gpu-classes-")).resolve()
        self.models, self.data, self.logs = self.work / "models", self.work / "data", self.work / "logs"
        self.hub_root = Path(args.hub_root or self.work / "hub").resolve()
        self.comfy = Path(args.comfyui_dir).resolve()
        self.cards = gpus()
        manifest = standin_weights.load_manifest(Path(args.manifest))
        self.layouts = {layout.filename: layout for layout in standin_weights.layouts(manifest).values()}
        self.generated: dict[str, dict[str, Any]] = {}  # hub key -> generation record
        self.started = datetime.now(timezone.utc)
        self.t0 = time.monotonic()
        self.raw_logs: list[str] = []
        self.cuda = not args.cpu_rehearsal
        self.sampler = gpu_measure.NvmlSampler() if self.cuda else None
        self.real = self._real_gpu() if self.cuda else {}
        self.context_bytes = int(0.5 * GIB)  # replaced by the first class's measurement
        self.startup_failed = False
        self.results: dict[str, Any] = {
            "started": self.started.isoformat(timespec="seconds"), "host": platform.node(),
            "python": platform.python_version(), "gpu": self.real, "command": " ".join(sys.argv),
            "settings": {"steps": args.steps, "video_classes": args.video_classes, "host_ram": HOST_RAM,
                         "size_override": args.size, "pid1": not args.no_pid1},
            "generation": [], "classes": []}

    # -- environment --------------------------------------------------------------------------------------------

    def _real_gpu(self) -> dict[str, Any]:
        import pynvml
        pynvml.nvmlInit()
        handle = pynvml.nvmlDeviceGetHandleByIndex(0)
        info = pynvml.nvmlDeviceGetMemoryInfo(handle, version=pynvml.nvmlMemory_v2)
        return {"name": pynvml.nvmlDeviceGetName(handle), "total": info.total, "reserved": info.reserved,
                "driver": pynvml.nvmlSystemGetDriverVersion()}

    def env(self, port: int, status_port: int) -> dict[str, str]:
        keep = ("PATH", "HOME", "PYTHONPATH", "LANG", "LD_LIBRARY_PATH", "CUDA_VISIBLE_DEVICES", "NCCL_NVLS_ENABLE",
                "TORCH_SYMM_MEM_DISABLE_MULTICAST", "NVSHMEM_DISABLE_NVLS")
        return {**{k: v for k, v in os.environ.items() if k in keep},
                "LOG_FORMAT": "json", "MODELS_DIR": str(self.models), "COMFYUI_DATA_DIR": str(self.data),
                "LOG_DIR": str(self.logs), "COMFYUI_DIR": str(self.comfy), "COMFYUI_PYTHON": self.args.comfyui_python,
                "COMFYUI_PORT": str(port), "COMFYUI_LISTEN": "127.0.0.1", "STATUS_ADDR": f"127.0.0.1:{status_port}",
                "ENABLE_STEADYDANCER": "true", "HF_TOKEN": TOKEN, "HEALTH_INTERVAL": "2",
                "RESTART_BACKOFF_INITIAL": "0.5", "STARTUP_TIMEOUT": "900", "DISK_RESERVE_GB": "1",
                "SHUTDOWN_GRACE": "10", "PYTHONUNBUFFERED": "1"}

    def hardware(self, key: str) -> list[str]:
        return ["--gpu", key, "--ram", HOST_RAM, "--disk", HOST_DISK]

    def prepare(self) -> None:
        for folder in (self.models, self.data, self.logs, self.hub_root):
            folder.mkdir(parents=True, exist_ok=True)
        hook = self.comfy / "custom_nodes" / "bench_memcap"
        shutil.rmtree(hook, ignore_errors=True)
        shutil.copytree(BENCH / "comfy_hook" / "bench_memcap", hook)
        tokenizer = self.comfy / "custom_nodes" / "ComfyUI-WanVideoWrapper" / "configs" / "T5_tokenizer"
        self.results["tokenizer"] = "real"
        if standin_tokenizer.missing(tokenizer):
            standin_tokenizer.write(tokenizer)
            self.results["tokenizer"] = f"stand-in ({standin_tokenizer.VOCAB} pieces, umt5's special ids)"
        self.results["inputs"] = stand_in_inputs(self.args.comfyui_python, self.data / "input")
        self.hub = Hub(self.hub_root).start()

    # -- plans and files ----------------------------------------------------------------------------------------

    def supervisor(self, *argv: str, timeout: float = 120) -> subprocess.CompletedProcess:
        env = self.env(8188, 8189)  # ports are not opened by `plan`, but must be valid
        return subprocess.run([sys.executable, "-m", "supervisor", *argv], cwd=REPO, env=env, capture_output=True,
                              text=True, timeout=timeout)

    def plan(self, key: str) -> dict[str, Any]:
        proc = self.supervisor("plan", "--json", *self.hardware(key))
        if not proc.stdout.strip().startswith("{"):
            raise SystemExit(f"supervisor plan --gpu {key} failed ({proc.returncode}): {proc.stderr[-2000:]}")
        plan = json.loads(proc.stdout)
        model = next(m for m in plan["models"] if m["feature"] == "steadydancer")
        budget = next(b for b in plan["vram_budget"] if b["feature"] == "steadydancer")
        headroom = next(line["gib"] for line in budget["lines"] if line["item"] == "headroom")
        return {"exit": proc.returncode, "plan": plan, "model": model, "budget": budget,
                "predicted_peak_bytes": int((budget["total_gib"] - headroom) * GIB),
                "budget_total_bytes": int(budget["total_gib"] * GIB), "headroom_bytes": int(headroom * GIB)}

    def ensure_files(self, downloads: list[dict[str, Any]]) -> None:
        """Generate what the plan downloads into the Hub's folder (unless already on the volume), keep one DiT.
        Files are generated in parallel (each is one sequential write, hashed as it is written)."""
        wanted = {d["dest"] for d in downloads}
        for path in (self.models / "diffusion_models").glob("*"):
            if f"diffusion_models/{path.name}" not in wanted and path.is_file():
                path.unlink()
                marker = self.models / ".supervisor" / "verified" / f"diffusion_models/{path.name}.json"
                marker.unlink(missing_ok=True)
        jobs = [d for d in downloads if not (self.models / d["dest"]).exists()
                and not (self.hub_root / d["repo"] / d["path"]).exists()
                and Path(d["path"]).name != standin_onnx.VITPOSE_DATA]  # written with its model
        with ThreadPoolExecutor(max_workers=4) as pool:
            for record in pool.map(lambda d: self._generate(d, downloads), jobs):
                self.results["generation"].append(record)
                print(f"  generated {record['file']}: {record['bytes'] / 1e9:.2f} GB in {record['seconds']} s",
                      flush=True)

    def _generate(self, d: dict[str, Any], downloads: list[dict[str, Any]]) -> dict[str, Any]:
        key = f"{d['repo']}/{d['path']}"
        target = self.hub_root / key
        name = Path(d["path"]).name
        device = "cuda" if self.cuda else "cpu"
        started = time.monotonic()
        if name in self.layouts:
            record = standin_weights.write(self.layouts[name], target, device)
            self._register(key, target, record["sha256"])
        elif name == standin_onnx.VITPOSE_MODEL:
            data = next(x for x in downloads if Path(x["path"]).name == standin_onnx.VITPOSE_DATA)
            standin_onnx.vitpose(target.parent, int(data["size"] * self.args.onnx_scale), device)
            self._register(f"{data['repo']}/{data['path']}", target.parent / standin_onnx.VITPOSE_DATA)
            record = {"bytes": target.stat().st_size + (target.parent / standin_onnx.VITPOSE_DATA).stat().st_size}
        elif name == standin_onnx.YOLO_MODEL:
            standin_onnx.yolo(target.parent, int(d["size"] * self.args.onnx_scale))
            self._register(key, target)
            record = {"bytes": target.stat().st_size}
        else:
            raise SystemExit(f"no stand-in for {name}")
        seconds = round(time.monotonic() - started, 3)
        return {"file": name, "bytes": record["bytes"], "seconds": seconds,
                "gb_per_s": round(record["bytes"] / max(seconds, 1e-9) / 1e9, 2)}

    def _register(self, key: str, path: Path, sha256: str | None = None) -> None:
        """Give the Hub the sha256 the generator computed while writing (it would otherwise re-read the file)."""
        stat = path.stat()
        if sha256 is None:
            if stat.st_size < self.hub.lfs_threshold:
                return  # small: the Hub hashes it itself (and needs its git blob id)
            digest = hashlib.sha256()
            with open(path, "rb") as f:
                while block := f.read(16 << 20):
                    digest.update(block)
            sha256 = digest.hexdigest()
        git = hashlib.sha1(f"blob {stat.st_size}\0".encode()).hexdigest()
        self.hub._meta[(key, stat.st_size, stat.st_mtime_ns)] = FileMeta(stat.st_size, sha256, git)

    def drop_fetched(self, downloads: list[dict[str, Any]]) -> None:
        """The Hub's copies of what is now verified on the volume (RAM, when the Hub's folder is a tmpfs)."""
        for d in downloads:
            if (self.models / d["dest"]).exists():
                (self.hub_root / d["repo"] / d["path"]).unlink(missing_ok=True)

    # -- one class ----------------------------------------------------------------------------------------------

    def cap(self, card: dict[str, Any]) -> tuple[int, float]:
        """(allocator cap in bytes, --reserve-vram GiB) that make this process see `card`."""
        if not self.cuda:
            return 0, 0.0
        real_usable = self.real["total"] - self.real["reserved"]
        card_usable = card["total"] - card["reserved"]
        if card_usable >= real_usable:
            return 0, COMFYUI_DEFAULT_RESERVE_GIB
        return card_usable - self.context_bytes, (real_usable - card_usable) / GIB + COMFYUI_DEFAULT_RESERVE_GIB

    def prompts(self, key: str, first: bool) -> list[tuple[str, int | None]]:
        """(workflow, steps override) to run for a class."""
        fast_steps = None if key in self.args.video_classes else self.args.steps
        items = [("steadydancer_fast", fast_steps)]
        if first:
            items += [("steadydancer_pose", None), ("steadydancer_quality", self.args.steps)]
        return [item for item in items if item[0].removeprefix("steadydancer_") in self.args.workflows]

    def workflow(self, name: str, steps: int | None) -> dict[str, Any]:
        prompt = json.loads((self.data / "user" / "default" / "workflows_api" / f"{name}.json").read_text())
        for node in prompt.values():
            inputs = node["inputs"]
            if node["class_type"] == "WanVideoSampler" and steps:
                inputs["steps"] = steps
            if self.args.size:
                width, height, frames = (int(x) for x in self.args.size.split("x"))
                if node["class_type"] == "ImageResizeKJv2":
                    inputs.update(width=width, height=height)
                if node["class_type"] == "VHS_LoadVideo":
                    inputs["frame_load_cap"] = frames
        return prompt

    def run_class(self, key: str, planned: dict[str, Any], first: bool, cap_override: int | None = None) -> dict:
        card = self.cards[key]
        model, knobs = planned["model"], planned["model"].get("knobs") or {}
        cap_bytes, reserve_gib = self.cap(card)
        if cap_override is not None:
            cap_bytes = cap_override
        record: dict[str, Any] = {
            "card": card["name"], "gpu_key": key, "nvml_total": card["total"], "nvml_reserved": card["reserved"],
            "variant": model["variant"], "offload": model["offload"], "blocks_to_swap": knobs.get("blocks_to_swap"),
            "text_encoder_device": knobs.get("text_encoder_device"), "load_device": knobs.get("load_device"),
            "comfyui_args": planned["plan"]["comfyui_args"],
            "predicted_peak_bytes": planned["predicted_peak_bytes"],
            "budget_total_bytes": planned["budget_total_bytes"], "headroom_bytes": planned["headroom_bytes"],
            "budget_lines": planned["budget"]["lines"], "cap_bytes": cap_bytes, "reserve_vram_gib": round(reserve_gib, 3),
        }
        if not self.args.keep_text_cache:  # each class starts cold: the text encoder loads and runs
            shutil.rmtree(self.comfy / "custom_nodes" / "ComfyUI-WanVideoWrapper" / "text_embed_cache",
                          ignore_errors=True)
        port, status_port = free_port(), free_port()
        env = self.env(port, status_port)
        # The stand-in's CDN listens on the same address as its Hub; huggingface_hub 1.x follows a redirect to the
        # same host name (whatever the port) and then misses the Hub's headers. The real CDN is another host: name
        # the Hub `localhost` and the CDN 127.0.0.1.
        env["HF_ENDPOINT"] = self.hub.url.replace("127.0.0.1", "localhost")
        extra = [self.args.comfyui_args] if self.args.comfyui_args else []
        if self.cuda:
            extra.append(f"--reserve-vram {reserve_gib:.3f}")
            env["BENCH_MEMCAP_BYTES"] = str(cap_bytes)
        env["COMFYUI_ARGS"] = " ".join(extra)
        # Measure the plan as planned: no step down, and no rung remembered from an earlier run of this class.
        (self.data / ".supervisor" / "oom-steps.json").unlink(missing_ok=True)
        env["OOM_STEP_DOWN"] = "off"
        if self.args.oom_demo:
            env.update(OOM_STEP_DOWN="idle", OOM_STEP_DOWN_AFTER="1", OOM_RETRY_PROMPT="true")
        argv = [sys.executable, "-m", "supervisor", "run", *self.hardware(key)]
        if not self.args.no_pid1:
            argv = ["unshare", "--pid", "--fork", "--mount-proc", "--kill-child", *argv]
        t_start = time.time()
        proc = subprocess.Popen(argv, cwd=REPO, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
        events = Events(proc.stdout)
        base = f"http://127.0.0.1:{port}"
        try:
            ready = self._wait_ready(events, proc)
            record["ready_s"] = round(ready["_t"] - t_start, 2)
            record["fetch"] = {e["event"]: e.get("bytes") for e in events.named("fetch.summary")} or None
            record["fetch_s"] = ready.get("phases", {}).get("fetch_s")
            record["comfyui_start_s"] = ready.get("phases", {}).get("comfyui_start_s")
            self.drop_fetched(planned["plan"]["downloads"])
            comfy = self._comfy_pid(proc.pid)
            record["prompts"] = []
            if self.sampler:
                self.sampler.watch({comfy})
                idle = self._idle_context(base, comfy)
                record["idle"] = idle
            for name, steps in self.prompts(key, first):
                record["prompts"].append(self._prompt(base, name, steps))
            if self.args.oom_demo:
                record["oom_demo"] = self._follow_step_down(base, events, record, status_port, proc)
        except Exception as exc:  # noqa: BLE001 - the record says what broke; the next class still runs
            record["failure"] = f"{type(exc).__name__}: {exc}"
        finally:
            self._stop(proc)
            self.raw_logs.append(f"===== {key}\n" + "".join(events.raw))
        record["wrapper_sampling_gib"] = gpu_measure.wrapper_sampling_memory(
            e.get("line", "") for e in events.named("comfyui.log"))
        self._summarise(record)
        return record

    def _wait_ready(self, events: Events, proc: subprocess.Popen) -> dict[str, Any]:
        """The first `supervise.ready`; gives up early when ComfyUI keeps exiting or the supervisor ended."""
        deadline = time.monotonic() + self.args.ready_timeout
        while True:
            try:
                return events.wait("supervise.ready", timeout=2)
            except TimeoutError:
                exits = events.named("comfyui.exited")
                if len(exits) >= 2 or proc.poll() is not None or time.monotonic() > deadline:
                    self.startup_failed = True
                    last = [e.get("line", "")[:300] for e in events.named("comfyui.log")[-8:]]
                    raise RuntimeError(f"not ready: {len(exits)} ComfyUI exits, supervisor "
                                       f"{'exited ' + str(proc.returncode) if proc.poll() is not None else 'running'}"
                                       f"; last ComfyUI lines: {last}") from None

    def _comfy_pid(self, root: int) -> int:
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline:
            for child in psutil.Process(root).children(recursive=True):
                try:
                    if "main.py" in " ".join(child.cmdline()):
                        return child.pid
                except psutil.Error:
                    continue
            time.sleep(0.2)
        raise RuntimeError("ComfyUI's process not found")

    def _idle_context(self, base: str, pid: int) -> dict[str, Any]:
        """NVML usage of the idle, ready ComfyUI against PyTorch's reserved bytes: the CUDA context's size."""
        assert self.sampler is not None
        self.sampler.window()
        time.sleep(0.5)
        nvml = self.sampler.peak()["nvml_process_peak_bytes"]
        hook = gpu_measure.http("GET", f"{base}/bench/state")[1]
        reserved = hook.get("reserved", 0) if isinstance(hook, dict) else 0
        out = {"nvml_process_bytes": nvml, "torch_reserved": reserved,
               "torch_total": hook.get("torch_total") if isinstance(hook, dict) else None,
               "cap_fraction": hook.get("fraction") if isinstance(hook, dict) else None}
        if nvml:
            out["context_bytes"] = nvml - reserved
        return out

    def _prompt(self, base: str, name: str, steps: int | None) -> dict[str, Any]:
        prompt = self.workflow(name, steps)
        if self.sampler:
            self.sampler.window()
        result = gpu_measure.run_prompt(base, name, prompt, self.args.prompt_timeout)
        peak = self.sampler.peak() if self.sampler else {}
        oom = "OutOfMemory" in str(result.error.get("exception_type", "")) or \
              "out of memory" in str(result.error.get("exception_message", "")).lower()
        videos = gpu_measure.video_files(result)
        video_bytes = None
        for item in videos:  # the workflow's own video (SteadyDancer/fast_00001.mp4), not the pose preview
            path = self.data / "output" / item.get("subfolder", "") / item["filename"]
            if path.exists() and item["filename"].startswith(name.removeprefix("steadydancer_")):
                video_bytes = path.stat().st_size
        out = {"workflow": name, "steps": steps or "preset", "status": result.status, "completed":
               result.status == "success", "oom": oom, "error": result.error or None,
               "video_bytes": video_bytes, "videos": [v.get("filename") for v in videos],
               "torch_max_reserved": result.hook.get("overall_max_reserved"),
               "torch_max_allocated": result.hook.get("overall_max_allocated"),
               "node_peak_reserved": gpu_measure.node_peaks(result, prompt),
               **{k: v for k, v in peak.items() if k != "timeline"}, "nvml_timeline": peak.get("timeline"),
               **gpu_measure.timings(result, prompt)}
        print(f"    {name} ({out['steps']} steps): {result.status}{' OOM' if oom else ''}, "
              f"{out['prompt_s']} s, peak {self._gib(out.get('nvml_process_peak_bytes'))} GiB", flush=True)
        return out

    def _follow_step_down(self, base: str, events: Events, record: dict[str, Any], status_port: int,
                          proc: subprocess.Popen) -> dict:
        """After an in-prompt OOM (the supervisor runs with OOM_STEP_DOWN=idle, OOM_STEP_DOWN_AFTER=1 and
        OOM_RETRY_PROMPT=true here): the supervisor's `comfyui.prompt_oom`, its `supervise.downgrade` to the next rung,
        ComfyUI ready again, and the retried prompt's outcome (`comfyui.prompt_retried`)."""
        first = record["prompts"][-1]
        out: dict[str, Any] = {"first_oom": first["oom"], "first_status": first["status"]}
        if not first["oom"] and not events.named("comfyui.prompt_oom"):
            return out  # ("lost": the supervisor stepped down and restarted ComfyUI before /history was read)
        try:
            out["prompt_oom"] = _event(events.wait("comfyui.prompt_oom", timeout=60))
            out["downgrade"] = _event(events.wait("supervise.downgrade", timeout=120))
            ready = events.wait("supervise.ready", count=2, timeout=self.args.ready_timeout)
            out["ready_again_s"] = round(ready["_t"] - events.named("supervise.downgrade")[0]["_t"], 2)
            if self.sampler:
                self.sampler.watch({self._comfy_pid(proc.pid)})
                self.sampler.window()
            retried = events.wait("comfyui.prompt_retried", timeout=self.args.prompt_timeout)
            out["retried"] = _event(retried)
            if self.sampler:
                out["retry_peak"] = {k: v for k, v in self.sampler.peak().items() if k != "timeline"}
        except TimeoutError as exc:
            out["missing"] = str(exc)
        status = gpu_measure.http("GET", f"http://127.0.0.1:{status_port}/status")[1]
        if isinstance(status, dict):
            out["status_oom"] = status.get("oom")
            out["plan_after"] = status.get("plan")
        return out

    def _stop(self, proc: subprocess.Popen) -> None:
        try:
            target = proc.pid if self.args.no_pid1 else psutil.Process(proc.pid).children()[0].pid
            os.kill(target, signal.SIGTERM)
            proc.wait(60)
        except (psutil.Error, IndexError, ProcessLookupError, subprocess.TimeoutExpired):
            proc.kill()
            proc.wait()

    # -- results ------------------------------------------------------------------------------------------------

    def _summarise(self, record: dict[str, Any]) -> None:
        """The class's headline figures come from its fast-workflow prompt."""
        fast = next((p for p in record.get("prompts", []) if p["workflow"] == "steadydancer_fast"), None)
        if not fast:
            record.update(completed=False, measured_peak_bytes=None)
            return
        process_peak = fast.get("nvml_process_peak_bytes")
        if process_peak is None and fast.get("nvml_device_peak_bytes"):
            process_peak = fast["nvml_device_peak_bytes"]
        record["nvml_process_peak_bytes"] = process_peak
        # What the card's own NVML would show at that moment: the process's memory plus the driver's reservation.
        record["measured_peak_bytes"] = process_peak + record["nvml_reserved"] if process_peak else None
        if record["measured_peak_bytes"]:
            record["predicted_over_measured"] = round(record["predicted_peak_bytes"] / record["measured_peak_bytes"], 3)
            # The cap limits PyTorch's allocator only: a peak above the card's NVML total would not have fitted it.
            record["fits_card"] = record["measured_peak_bytes"] <= record["nvml_total"]
        for k in ("completed", "oom", "s_per_step", "load_s", "vae_decode_s", "prompt_s", "video_bytes",
                  "torch_max_reserved", "steps", "text_encode_s", "pose_s"):
            record[k] = fast.get(k)

    @staticmethod
    def _gib(value: Any) -> str:
        return f"{value / GIB:.2f}" if isinstance(value, (int, float)) and value else "-"

    def table(self) -> str:
        head = ("card", "plan", "pred GiB", "meas GiB", "pred/meas", "torch GiB", "done", "s/step", "load s",
                "decode s", "prompt s", "video MB")
        rows = [head]
        for r in self.results["classes"]:
            plan = f"{r['variant']} {r['offload']} swap {r['blocks_to_swap']}"
            rows.append((r["card"], plan, self._gib(r["predicted_peak_bytes"]), self._gib(r.get("measured_peak_bytes")),
                         str(r.get("predicted_over_measured", "-")), self._gib(r.get("torch_max_reserved")),
                         "OOM" if r.get("oom") else "yes" if r.get("completed") else "no",
                         str(r.get("s_per_step") or "-"), str(r.get("load_s") or "-"), str(r.get("vae_decode_s") or "-"),
                         str(r.get("prompt_s") or "-"),
                         f"{r['video_bytes'] / 1e6:.1f}" if r.get("video_bytes") else "-"))
        widths = [max(len(str(row[i])) for row in rows) for i in range(len(head))]
        return "\n".join("  ".join(str(c).ljust(w) for c, w in zip(row, widths)) for row in rows) + "\n"

    def write(self) -> None:
        if self.sampler:
            self.results["nvml_sample_hz"] = round(self.sampler.rate_hz, 1)
        self.results["elapsed_s"] = round(time.monotonic() - self.t0, 1)
        stem = self.write_results("gpu-classes")
        stem.with_name(f"{stem.name}.txt").write_text(self.table())

    def write_results(self, kind: str, detail: str = "") -> Path:
        """KIND-DATE-[DETAIL-]GPU[TAG].json (the results) and .log.gz (the supervisor's and ComfyUI's output) under
        --out; returns the path without a suffix."""
        out = Path(self.args.out)
        out.mkdir(parents=True, exist_ok=True)
        name = self.real.get("name", "cpu-rehearsal") if self.cuda else "cpu-rehearsal"
        slug = "".join(c if c.isalnum() else "-" for c in name).strip("-").lower()
        stem = out / f"{kind}-{self.started:%Y-%m-%d}-{detail + '-' if detail else ''}{slug}{self.args.tag}"
        stem.with_name(f"{stem.name}.json").write_text(json.dumps(self.results, indent=1, default=str))
        with gzip.open(stem.with_name(f"{stem.name}.log.gz"), "wt") as f:
            f.write("".join(self.raw_logs))
        return stem

    # -- the run ------------------------------------------------------------------------------------------------

    def run(self) -> int:
        self.prepare()
        if self.sampler:
            self.sampler.start()
        plans = {key: self.plan(key) for key in self.args.classes}
        order = sorted(self.args.classes, key=lambda k: [plans[x]["model"]["variant"] for x in self.args.classes]
                       .index(plans[k]["model"]["variant"]))
        for i, key in enumerate(order):
            planned = plans[key]
            elapsed = time.monotonic() - self.t0
            if self.args.deadline and elapsed + self.args.class_budget > self.args.deadline:
                self.results["classes"].append({"card": self.cards[key]["name"], "gpu_key": key, "skipped":
                                                f"deadline: {elapsed:.0f} s spent", "variant": planned["model"]["variant"],
                                                "offload": planned["model"]["offload"], "blocks_to_swap": None,
                                                "predicted_peak_bytes": planned["predicted_peak_bytes"]})
                continue
            print(f"[{elapsed:6.1f} s] {key}: {planned['model']['variant']} {planned['model']['offload']} "
                  f"swap {(planned['model'].get('knobs') or {}).get('blocks_to_swap')}", flush=True)
            self.ensure_files(planned["plan"]["downloads"])
            cap = None
            if self.args.oom_demo:
                cap = (int(planned["predicted_peak_bytes"] * self.args.oom_fraction) - self.cards[key]["reserved"]
                       - self.context_bytes)
            record = self.run_class(key, planned, first=(i == 0), cap_override=cap)
            if i == 0 and record.get("idle", {}).get("context_bytes"):
                self.context_bytes = record["idle"]["context_bytes"]
            self.results["classes"].append(record)
            self.write()
            if self.startup_failed and i == 0:
                print("the first class never became ready: stopping (the other classes share its setup)", flush=True)
                break
        if self.sampler:
            self.sampler.stop()
        self.hub.stop()
        self.write()
        print(self.table(), end="")
        return 0


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--comfyui-dir", required=True)
    parser.add_argument("--comfyui-python", default=sys.executable)
    parser.add_argument("--comfyui-args", default="", help="extra ComfyUI flags (e.g. --cpu, --front-end-root DIR)")
    parser.add_argument("--classes", default=",".join(CLASSES))
    parser.add_argument("--video-classes", default=",".join(VIDEO_CLASSES))
    parser.add_argument("--steps", type=int, default=2, help="sampling steps of the peak-only runs")
    parser.add_argument("--workflows", default="fast,pose,quality",
                        help="which shipped workflows to run (pose and quality on the first class only)")
    parser.add_argument("--work", default="")
    parser.add_argument("--hub-root", default="", help="the stand-in Hub's folder (a tmpfs keeps the disk free)")
    parser.add_argument("--manifest", default=str(standin_weights.MANIFEST))
    parser.add_argument("--onnx-scale", type=float, default=1.0, help="pose model sizes against the catalogue's")
    parser.add_argument("--size", default="", help="WxHxFRAMES instead of the workflows' (rehearsals only)")
    parser.add_argument("--cpu-rehearsal", action="store_true")
    parser.add_argument("--keep-text-cache", action="store_true",
                        help="keep WanVideoWrapper's text-embedding cache between classes (CPU rehearsals: umt5 is slow)")
    parser.add_argument("--no-pid1", action="store_true")
    parser.add_argument("--deadline", type=float, default=0, help="seconds; classes that would start later are skipped")
    parser.add_argument("--class-budget", type=float, default=90, help="seconds one class is expected to take")
    parser.add_argument("--ready-timeout", type=float, default=600)
    parser.add_argument("--prompt-timeout", type=float, default=600)
    parser.add_argument("--oom-demo", action="store_true",
                        help="cap each class at --oom-fraction of its predicted peak and follow the step-down")
    parser.add_argument("--oom-fraction", type=float, default=0.85)
    parser.add_argument("--out", default=str(REPO / "bench" / "results"))
    parser.add_argument("--tag", default="", help="suffix of the result files' names")
    args = parser.parse_args()
    args.classes = [c for c in args.classes.split(",") if c]
    args.video_classes = [c for c in args.video_classes.split(",") if c]
    args.workflows = [w for w in args.workflows.split(",") if w]
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))  # unwinds: the running class's supervisor is stopped
    unknown = [c for c in args.classes if c not in gpus()]
    if unknown:
        parser.error(f"unknown GPU keys {unknown}; see config/gpus.toml")
    return Bench(args).run()


if __name__ == "__main__":
    raise SystemExit(main())
