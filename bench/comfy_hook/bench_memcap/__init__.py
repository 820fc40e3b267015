"""Bench hook loaded into ComfyUI as a custom node (bench/gpu_classes.py copies it into custom_nodes/ for a run).

1. Emulates a smaller card: with BENCH_MEMCAP_BYTES set, caps PyTorch's caching allocator in this process at that
   many bytes (torch.cuda.set_per_process_memory_fraction), so allocations beyond the card's size raise the same
   torch.OutOfMemoryError a real card would. ComfyUI's own model management is told the same size through
   `--reserve-vram` (set by the bench in COMFYUI_ARGS).
2. Records what the executor reports (node start, sampler progress, success or error) with timestamps and, at each
   node boundary, PyTorch's peak reserved/allocated bytes since the previous boundary (then resets the peak), so
   each node's own peak is known -- except for nodes that reset PyTorch's peak statistics themselves
   (ComfyUI-WanVideoWrapper's sampler and VAE do: their own "[Sampling] Max ... memory" lines report it; NVML's
   per-process figure, sampled by the bench, is the measurement that counts).
3. Serves them: GET /bench/state (cap, totals, peaks, events), POST /bench/reset (clear events and peaks).
It adds no node types.
"""

from __future__ import annotations

import logging
import os
import threading
import time

import torch

NODE_CLASS_MAPPINGS: dict = {}
NODE_DISPLAY_NAME_MAPPINGS: dict = {}

_log = logging.getLogger("bench_memcap")
_lock = threading.Lock()
_state: dict = {"cap_bytes": int(os.environ.get("BENCH_MEMCAP_BYTES") or 0), "fraction": None, "events": [],
                "node_peaks": {}, "current_node": None}
_RECORDED = ("execution_start", "execution_cached", "executing", "progress", "executed", "execution_success",
             "execution_error", "execution_interrupted")


def _cuda() -> bool:
    return torch.cuda.is_available()


if _cuda():
    _state["torch_total"] = torch.cuda.get_device_properties(0).total_memory
    if _state["cap_bytes"]:
        _state["fraction"] = min(1.0, _state["cap_bytes"] / _state["torch_total"])
        torch.cuda.set_per_process_memory_fraction(_state["fraction"], 0)
        _log.warning("bench_memcap: PyTorch allocator capped at %d bytes (fraction %.6f of %d)",
                     _state["cap_bytes"], _state["fraction"], _state["torch_total"])


def _peaks() -> dict:
    if not _cuda():
        return {}
    return {"max_reserved": torch.cuda.max_memory_reserved(), "max_allocated": torch.cuda.max_memory_allocated(),
            "reserved": torch.cuda.memory_reserved(), "allocated": torch.cuda.memory_allocated()}


def _record(event: str, data) -> None:
    entry = {"t": time.time(), "event": event}
    if isinstance(data, dict):
        for key in ("node", "value", "max", "prompt_id", "node_id", "node_type", "exception_type",
                    "exception_message"):
            if key in data:
                value = data[key]
                entry[key] = value[:500] if isinstance(value, str) else value
    with _lock:
        if event in ("executing", "execution_success", "execution_error", "execution_interrupted") and _cuda():
            previous = _state["current_node"]
            peaks = _peaks()
            if previous is not None:
                known = _state["node_peaks"].get(previous, {})
                _state["node_peaks"][previous] = {
                    "max_reserved": max(known.get("max_reserved", 0), peaks["max_reserved"]),
                    "max_allocated": max(known.get("max_allocated", 0), peaks["max_allocated"])}
            _state["overall_max_reserved"] = max(_state.get("overall_max_reserved", 0), peaks["max_reserved"])
            _state["overall_max_allocated"] = max(_state.get("overall_max_allocated", 0), peaks["max_allocated"])
            entry.update(reserved=peaks["reserved"], allocated=peaks["allocated"])
            torch.cuda.reset_peak_memory_stats()
            _state["current_node"] = entry.get("node") if event == "executing" else None
        _state["events"].append(entry)


def _install() -> None:
    try:
        import server
        from aiohttp import web
    except ImportError:  # imported outside ComfyUI
        return
    instance = server.PromptServer.instance
    original = instance.send_sync

    def send_sync(event, data, sid=None):
        if event in _RECORDED:
            try:
                _record(event, data)
            except Exception:  # noqa: BLE001 - a bench hook must never break a prompt
                _log.exception("bench_memcap: recording %s failed", event)
        return original(event, data, sid)

    instance.send_sync = send_sync

    @instance.routes.get("/bench/state")
    async def state(request):
        with _lock:
            body = {k: v for k, v in _state.items() if k != "events"}
            body["events"] = list(_state["events"])
        body.update(_peaks())
        body["overall_max_reserved"] = max(body.get("overall_max_reserved", 0), body.get("max_reserved", 0))
        body["overall_max_allocated"] = max(body.get("overall_max_allocated", 0), body.get("max_allocated", 0))
        return web.json_response(body)

    @instance.routes.post("/bench/reset")
    async def reset(request):
        with _lock:
            _state.update(events=[], node_peaks={}, overall_max_reserved=0, overall_max_allocated=0)
            if _cuda():
                torch.cuda.reset_peak_memory_stats()
        return web.json_response({"ok": True})


_install()
