"""Measuring one ComfyUI prompt: NVML sampling of ComfyUI's process, the bench hook's events and peaks, timings.

Used by bench/gpu_classes.py. Nothing here starts processes.
"""

from __future__ import annotations

import threading
import time
import urllib.error
from dataclasses import dataclass, field
from typing import Any

from pod_e2e import http  # noqa: F401  (the bench's one small HTTP helper, used by gpu_classes too)


class NvmlSampler(threading.Thread):
    """Samples the GPU memory NVML attributes to the watched process ids (and the device's used memory) every
    `interval` seconds; `window()` starts a new maximum, `peak()` reads it."""

    def __init__(self, interval: float = 0.05, index: int = 0):
        super().__init__(daemon=True)
        import pynvml

        self.nvml = pynvml
        pynvml.nvmlInit()
        self.handle = pynvml.nvmlDeviceGetHandleByIndex(index)
        self.interval = interval
        self.pids: set[int] = set()
        self.lock = threading.Lock()
        self.stopped = threading.Event()
        self.samples = 0
        self.elapsed = 0.0
        self.baseline_used = pynvml.nvmlDeviceGetMemoryInfo(self.handle).used
        self._reset()
        self.timeline: list[tuple[float, int]] = []

    def _reset(self) -> None:
        self.proc_peak = 0
        self.device_peak = 0
        self.per_process_seen = False
        self.window_samples = 0

    def window(self) -> None:
        with self.lock:
            self._reset()
            self.timeline = []

    def watch(self, pids: set[int]) -> None:
        with self.lock:
            self.pids = set(pids)

    def run(self) -> None:
        started = time.monotonic()
        last_kept = 0.0
        while not self.stopped.wait(self.interval):
            try:
                used = self.nvml.nvmlDeviceGetMemoryInfo(self.handle).used
                procs = self.nvml.nvmlDeviceGetComputeRunningProcesses(self.handle)
            except self.nvml.NVMLError:
                continue
            with self.lock:
                mine = [p.usedGpuMemory for p in procs if p.pid in self.pids and p.usedGpuMemory is not None]
                if mine:
                    self.per_process_seen = True
                    self.proc_peak = max(self.proc_peak, sum(mine))
                self.device_peak = max(self.device_peak, used - self.baseline_used)
                self.samples += 1
                self.window_samples += 1
                now = time.monotonic()
                if now - last_kept >= 0.5:  # a coarse timeline for the record
                    self.timeline.append((round(time.time(), 2), sum(mine) if mine else used - self.baseline_used))
                    last_kept = now
        self.elapsed = time.monotonic() - started

    def peak(self) -> dict[str, Any]:
        with self.lock:
            return {"nvml_process_peak_bytes": self.proc_peak if self.per_process_seen else None,
                    "nvml_device_peak_bytes": self.device_peak, "samples": self.window_samples,
                    "timeline": list(self.timeline)}

    @property
    def rate_hz(self) -> float:
        return self.samples / self.elapsed if self.elapsed else 0.0

    def stop(self) -> None:
        self.stopped.set()
        self.join(timeout=5)


@dataclass
class PromptResult:
    name: str
    prompt_id: str | None
    status: str  # success | error | timeout | rejected
    seconds: float
    events: list[dict[str, Any]] = field(default_factory=list)
    hook: dict[str, Any] = field(default_factory=dict)
    error: dict[str, Any] = field(default_factory=dict)
    outputs: dict[str, Any] = field(default_factory=dict)


def run_prompt(base: str, name: str, prompt: dict[str, Any], timeout: float) -> PromptResult:
    """POST `prompt`, follow /history until it finishes, and read the hook's events and peaks."""
    http("POST", f"{base}/bench/reset", {})
    started = time.time()
    # With a client_id ComfyUI reports node starts and sampler progress (it sends them only to a known client).
    code, body = http("POST", f"{base}/prompt", {"prompt": prompt, "client_id": "gpu-classes-bench"})
    if code != 200 or not isinstance(body, dict) or body.get("node_errors"):
        return PromptResult(name, None, "rejected", 0.0, error={"http": code, "body": str(body)[:2000]})
    prompt_id = body["prompt_id"]
    deadline = started + timeout
    entry: dict[str, Any] | None = None
    while time.time() < deadline:
        try:
            code, history = http("GET", f"{base}/history/{prompt_id}")
        except (urllib.error.URLError, OSError):  # ComfyUI went away (the supervisor restarts it on a lower rung)
            return PromptResult(name, prompt_id, "lost", time.time() - started)
        if isinstance(history, dict) and prompt_id in history and history[prompt_id].get("status", {}).get("completed") is not None:
            entry = history[prompt_id]
            if entry["status"].get("status_str") in ("success", "error"):
                break
        time.sleep(0.5)
    seconds = time.time() - started
    try:
        hook = http("GET", f"{base}/bench/state")[1]
    except (urllib.error.URLError, OSError):
        hook = {}
    hook = hook if isinstance(hook, dict) else {}
    events = hook.pop("events", [])
    if entry is None:
        http("POST", f"{base}/interrupt", {})
        return PromptResult(name, prompt_id, "timeout", seconds, events, hook)
    status = entry["status"]["status_str"]
    error: dict[str, Any] = {}
    for message, data in entry["status"].get("messages", []):
        if message == "execution_error":
            error = {k: data.get(k) for k in ("node_id", "node_type", "exception_type")}
            error["exception_message"] = (data.get("exception_message") or "")[:1500]
    return PromptResult(name, prompt_id, status, seconds, events, hook, error, entry.get("outputs", {}))


def timings(result: PromptResult, prompt: dict[str, Any]) -> dict[str, Any]:
    """Node durations from the executor's `executing` events, sampler step times from its `progress` events."""
    events = [e for e in result.events if e.get("prompt_id") in (None, result.prompt_id)]
    starts = [e for e in events if e["event"] in ("executing", "execution_success", "execution_error",
                                                  "execution_interrupted")]
    durations: dict[str, float] = {}
    node_start: dict[str, float] = {}
    for current, following in zip(starts, starts[1:]):
        node = current.get("node")
        if current["event"] == "executing" and node is not None:
            durations[str(node)] = round(durations.get(str(node), 0.0) + following["t"] - current["t"], 3)
            node_start.setdefault(str(node), current["t"])
    by_class: dict[str, float] = {}
    for node, seconds in durations.items():
        cls = prompt.get(node, {}).get("class_type", node)
        by_class[cls] = round(by_class.get(cls, 0.0) + seconds, 3)
    sampler = next((n for n, v in prompt.items() if v.get("class_type") == "WanVideoSampler"), None)
    total = prompt[sampler]["inputs"].get("steps") if sampler else None
    # The sampler's per-step progress (max = its steps); other progress bars of the node are left out.
    steps = [e for e in events if e["event"] == "progress" and str(e.get("node")) == str(sampler)
             and e.get("max") == total]
    # The last progress event of each value (a node may re-send a value).
    per_value: dict[int, float] = {}
    for e in steps:
        per_value[int(e["value"])] = e["t"]
    values = sorted(per_value)
    s_per_step = None
    if len(values) >= 2:
        s_per_step = round((per_value[values[-1]] - per_value[values[0]]) / (values[-1] - values[0]), 3)
    setup = None
    if sampler in node_start and values:
        first = per_value[values[0]] - node_start[sampler]
        setup = round(first - (s_per_step or 0.0), 3) if s_per_step is not None else round(first, 3)
    start = next((e["t"] for e in events if e["event"] == "execution_start"), None)
    end = next((e["t"] for e in events if e["event"] in ("execution_success", "execution_error")), None)
    loader = by_class.get("WanVideoModelLoader")
    return {
        "prompt_s": round(end - start, 3) if start and end else round(result.seconds, 3),
        "s_per_step": s_per_step,
        "steps_seen": len(values),
        "loader_node_s": loader,
        "sampler_setup_s": setup,
        "load_s": round((loader or 0.0) + (setup or 0.0), 3) if loader is not None or setup is not None else None,
        "vae_decode_s": by_class.get("WanVideoDecode"),
        "text_encode_s": by_class.get("WanVideoTextEncodeCached"),
        "pose_s": by_class.get("PoseAndFaceDetection"),
        "sampler_node_s": by_class.get("WanVideoSampler"),
        "node_seconds": by_class,
    }


def node_peaks(result: PromptResult, prompt: dict[str, Any]) -> dict[str, int]:
    """PyTorch's peak reserved bytes per node class, from the hook (each node's own peak)."""
    out: dict[str, int] = {}
    for node, peaks in (result.hook.get("node_peaks") or {}).items():
        cls = prompt.get(str(node), {}).get("class_type", str(node))
        out[cls] = max(out.get(cls, 0), int(peaks.get("max_reserved", 0)))
    return out


def video_files(result: PromptResult) -> list[dict[str, Any]]:
    files = []
    for output in result.outputs.values():
        for item in output.get("gifs", []) + output.get("videos", []):
            if str(item.get("filename", "")).endswith((".mp4", ".webm", ".mkv", ".gif")):
                files.append(item)
    return files


def wrapper_sampling_memory(lines) -> list[dict[str, float]]:
    """ComfyUI-WanVideoWrapper's own report after each sampling run ("[Sampling] Max allocated memory:
    max_memory=34.055 GB" and "... max_reserved=39.438 GB", in GiB): PyTorch's peaks during sampling. The bench
    hook's per-node peaks cannot show them, since the wrapper resets PyTorch's peak statistics itself."""
    runs: list[dict[str, float]] = []
    for line in lines:
        if "[Sampling] Max allocated memory" in line and "max_memory=" in line:
            runs.append({"max_allocated": float(line.split("max_memory=")[1].split()[0])})
        elif "[Sampling] Max reserved memory" in line and "max_reserved=" in line and runs:
            runs[-1]["max_reserved"] = float(line.split("max_reserved=")[1].split()[0])
    return runs
