"""What ComfyUI is doing: queue length, finished prompts (status, duration, output files) and GPU memory.

A worker thread (`watch`) polls each answering ComfyUI every few seconds and posts an `activity` message; the
loop hands it to `Activity.on_message`, which keeps the counters and publishes them as `status["activity"]` (the
status page and /metrics read them from there) and returns the prompts that finished, for the output sync.

What is polled, and why it stays cheap for PID 1:
* `GET /system_stats`: a few hundred bytes; GPU memory per device (`vram_total`, `vram_free`), as ComfyUI's torch
  sees it. The supervisor never loads NVML for this.
* `GET /prompt`: `queue_remaining` (running + pending; ComfyUI runs one prompt at a time per process). `/queue`
  is not polled: it carries every queued graph.
* `GET /history?max_items=1`: the newest finished prompt (one entry, not the 10 000 ComfyUI keeps); when its id
  is new, `GET /history?max_items=HISTORY_PAGE` once, and every entry not seen before is a finished prompt.
  ComfyUI adds an entry only when the prompt is done, so an output listed there is a complete file, never one
  still being written.
"""

from __future__ import annotations

import threading
import time
from collections import OrderedDict
from typing import Any, Callable, Iterable

import httpx

from .client import ComfyClient, ComfyError
from .status import Status

POLL_INTERVAL = 2.0  # seconds between polls (at most HEALTH_INTERVAL)
HISTORY_PAGE = 32  # history entries read when a new one appeared
SEEN_KEEP = 10_000  # prompt ids remembered per ComfyUI (ComfyUI itself keeps 10 000 history entries)
# Prompt durations, seconds: from a still image to a long video.
BUCKETS = (1.0, 5.0, 15.0, 30.0, 60.0, 120.0, 300.0, 600.0, 1200.0, 1800.0, 3600.0)
_ERRORS = (httpx.HTTPError, ComfyError, ValueError, OSError)


def answering_urls(status: Status) -> list[str]:
    """The ComfyUI URLs worth polling: every instance that answers (one today; one per GPU with `instances`)."""
    instances = status.get("instances") or [status.get("comfyui") or {}]
    return [str(i["url"]) for i in instances
            if isinstance(i, dict) and i.get("url") and i.get("state") in ("answering", "ready")]


def watch(urls: Callable[[], list[str]], post: Callable[..., None], stop: threading.Event,
          interval: float = POLL_INTERVAL) -> None:
    """The worker thread: poll every answering ComfyUI until `stop` is set."""
    pollers: dict[str, _Poller] = {}
    try:
        while not stop.wait(interval):
            current = urls()
            for url in list(pollers):
                if url not in current:
                    pollers.pop(url).close()
            for url in current:
                poller = pollers.get(url) or pollers.setdefault(url, _Poller(url, timeout=max(interval, 2.0)))
                post("activity", 0, **poller.poll())
    finally:
        for poller in pollers.values():
            poller.close()


class _Poller:
    def __init__(self, url: str, timeout: float):
        self.url = url
        self.client = ComfyClient(url, timeout=timeout)
        self.seen: OrderedDict[str, None] = OrderedDict()

    def close(self) -> None:
        self.client.close()

    def poll(self) -> dict[str, Any]:
        try:
            stats = self.client.system_stats()
            remaining = self.client.queue_remaining()
            finished = self._finished()
        except _ERRORS as exc:
            return {"url": self.url, "ok": False, "error": f"{type(exc).__name__}: {exc}"[:200]}
        return {"url": self.url, "ok": True, "queue_remaining": remaining, "gpus": gpus(stats),
                "finished": finished}

    def _finished(self) -> list[dict[str, Any]]:
        newest = self.client.recent_history(1)
        if not newest or all(prompt_id in self.seen for prompt_id in newest):
            return []
        entries = self.client.recent_history(HISTORY_PAGE)
        finished = []
        for prompt_id, entry in entries.items():
            if prompt_id in self.seen or not isinstance(entry, dict) or not entry.get("status"):
                continue
            self.seen[prompt_id] = None
            finished.append(prompt_record(prompt_id, entry))
        while len(self.seen) > SEEN_KEEP:
            self.seen.popitem(last=False)
        return finished


def gpus(stats: dict[str, Any]) -> list[dict[str, Any]]:
    """GPU memory per device from /system_stats (a CPU-only ComfyUI lists its RAM as device `cpu`: left out)."""
    found = []
    for device in stats.get("devices") or []:
        if not isinstance(device, dict) or device.get("type") == "cpu":
            continue
        found.append({"name": str(device.get("name", "?")), "index": device.get("index"),
                      "vram_total": int(device.get("vram_total") or 0), "vram_free": int(device.get("vram_free") or 0),
                      "torch_vram_total": int(device.get("torch_vram_total") or 0),
                      "torch_vram_free": int(device.get("torch_vram_free") or 0)})
    return found


def prompt_record(prompt_id: str, entry: dict[str, Any]) -> dict[str, Any]:
    """One finished prompt from its /history entry: status, duration, error, and the output files it lists."""
    status = entry.get("status") or {}
    messages = [m for m in status.get("messages") or [] if isinstance(m, (list, tuple)) and len(m) == 2]
    stamps = {kind: data.get("timestamp") for kind, data in messages if isinstance(data, dict)}
    kinds = [kind for kind, _ in messages]
    outcome = "success" if status.get("status_str") == "success" else (
        "interrupted" if "execution_interrupted" in kinds else "error")
    record: dict[str, Any] = {"prompt_id": prompt_id, "status": outcome, "seconds": None,
                              "outputs": list(output_files(entry.get("outputs") or {}))}
    start = stamps.get("execution_start")
    end = next((stamps[k] for k in ("execution_success", "execution_error", "execution_interrupted")
                if isinstance(stamps.get(k), (int, float))), None)
    if isinstance(start, (int, float)) and end is not None:
        record["seconds"] = round(max(0.0, (end - start) / 1000.0), 3)
    for kind, data in messages:
        if kind == "execution_error" and isinstance(data, dict):
            record["error"] = {"node_id": data.get("node_id"), "node_type": data.get("node_type"),
                               "exception_type": data.get("exception_type"),
                               "message": str(data.get("exception_message", "")).strip().split("\n", 1)[0][:300]}
    return record


def output_files(outputs: dict[str, Any]) -> Iterable[dict[str, str]]:
    """Every file a prompt saved to the output folder (`type: output`; previews in `temp` are left out)."""
    for node_output in outputs.values():
        if not isinstance(node_output, dict):
            continue
        for items in node_output.values():
            for item in items if isinstance(items, list) else []:
                if isinstance(item, dict) and item.get("filename") and item.get("type", "output") == "output":
                    yield {"filename": str(item["filename"]), "subfolder": str(item.get("subfolder") or "")}


class Activity:
    """The loop's side: counters from the poller's messages, published as status["activity"]."""

    def __init__(self, status: Status):
        self.status = status
        self.instances: dict[str, dict[str, Any]] = {}
        self.by_status: dict[str, dict[str, Any]] = {}
        self.last: dict[str, Any] | None = None

    def on_message(self, data: dict[str, Any]) -> list[dict[str, Any]]:
        """Record one poll; returns the prompts that finished since the last one."""
        url = str(data.get("url"))
        if not data.get("ok"):
            self.instances.setdefault(url, {})["answering"] = False
            self.publish()
            return []
        remaining = int(data.get("queue_remaining") or 0)
        self.instances[url] = {"answering": True, "running": min(remaining, 1), "pending": max(remaining - 1, 0),
                               "gpus": data.get("gpus") or []}
        finished = list(data.get("finished") or [])
        for prompt in finished:
            self._count(prompt, url)
        self.publish()
        return finished

    def _count(self, prompt: dict[str, Any], url: str) -> None:
        entry = self.by_status.setdefault(prompt["status"], {"count": 0, "sum": 0.0, "timed": 0,
                                                             "buckets": [0] * len(BUCKETS)})
        entry["count"] += 1
        seconds = prompt.get("seconds")
        if seconds is not None:
            entry["timed"] += 1
            entry["sum"] = round(entry["sum"] + seconds, 3)
            for i, bound in enumerate(BUCKETS):
                if seconds <= bound:
                    entry["buckets"][i] += 1
                    break
        self.last = {"prompt_id": prompt["prompt_id"], "status": prompt["status"], "seconds": seconds,
                     "at": time.time(), "comfyui": url, "outputs": len(prompt.get("outputs") or []),
                     "error": prompt.get("error")}

    def publish(self) -> None:
        live = [i for i in self.instances.values() if i.get("answering")]
        total = sum(e["count"] for e in self.by_status.values())
        failed = sum(e["count"] for status, e in self.by_status.items() if status != "success")
        self.status.set(activity={
            "queue": {"running": sum(i["running"] for i in live), "pending": sum(i["pending"] for i in live)}
            if live else None,
            "instances": {url: i for url, i in self.instances.items()},
            "gpus": [{**g, "comfyui": url} for url, i in self.instances.items() if i.get("answering")
                     for g in i.get("gpus", [])],
            "prompts": {"finished": total, "failed": failed, "last": self.last,
                        "durations": {"bounds": list(BUCKETS), "by_status": self.by_status}},
        })
