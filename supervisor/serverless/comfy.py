"""One job's conversation with ComfyUI (async, httpx): upload inputs, submit the prompt, follow it to the end,
fetch its output files, and take it back when the job is cancelled or times out.

Routes (ComfyUI 0.3.64, `/work/shared/reference/comfyui.md`): POST /upload/image (multipart: image, overwrite,
type, subfolder), POST /prompt (200 {prompt_id} or 400 {error, node_errors}), GET /history/{id} (empty until the
prompt ends; then status.status_str success/error with execution_error or execution_interrupted messages, and
outputs per node), GET /queue (to say where a waiting prompt is), GET /view (a file of an output), POST /queue
{"delete": [id]} (drops a waiting prompt), POST /interrupt {"prompt_id": id} (stops it only if it is the one
running; accepted since ComfyUI 0.3.x, older versions interrupt whatever runs).
"""

from __future__ import annotations

import asyncio
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Awaitable, Callable, Mapping

import httpx

from .jobs import JobError

OOM_TYPES = ("torch.OutOfMemoryError", "torch.cuda.OutOfMemoryError", "OutOfMemoryError")
Progress = Callable[[dict[str, Any]], Awaitable[None] | None]


@dataclass(frozen=True)
class OutputFile:
    node: str
    kind: str  # the key ComfyUI listed it under: images, gifs, videos, audio, ...
    filename: str
    subfolder: str
    type: str  # output | temp

    @property
    def params(self) -> dict[str, str]:
        return {"filename": self.filename, "subfolder": self.subfolder, "type": self.type}


class Comfy:
    def __init__(self, http: httpx.AsyncClient, poll: float = 0.5):
        self.http = http
        self.poll = poll

    async def upload(self, name: str, data: bytes) -> str:
        """Put a file in ComfyUI's input folder under `name` (replacing one of that name); returns the name."""
        response = await self.http.post("/upload/image", files={"image": (name, data)},
                                        data={"overwrite": "true", "type": "input"})
        if response.status_code != 200:
            raise JobError(f"ComfyUI refused the upload of {name}: HTTP {response.status_code}")
        return str(response.json().get("name") or name)

    async def submit(self, prompt: Mapping[str, Any], client_id: str) -> str:
        response = await self.http.post("/prompt", json={"prompt": prompt, "client_id": client_id})
        try:
            body = response.json()
        except ValueError:
            body = None
        if response.status_code == 200 and isinstance(body, dict) and body.get("prompt_id"):
            return str(body["prompt_id"])
        if isinstance(body, dict) and ("error" in body or "node_errors" in body):
            raise rejection(body)
        raise JobError(f"ComfyUI did not take the workflow: HTTP {response.status_code}: {response.text[:300]}")

    async def follow(self, prompt_id: str, progress: Progress | None = None) -> dict[str, Any]:
        """Wait for the prompt to end; returns its /history entry, or raises JobError with ComfyUI's message."""
        last: tuple[Any, ...] | None = None
        while True:
            entry = await self._history(prompt_id)  # ComfyUI writes it once the prompt has ended
            if (entry.get("status") or {}).get("status_str") in ("success", "error"):
                failure = failure_message(entry)
                if failure is not None:
                    raise failure
                return entry
            state = await self._where(prompt_id)
            if state != last and progress is not None:
                last = state
                result = progress({"stage": state[0], **({"queue_ahead": state[1]} if state[0] == "queued" else {})})
                if asyncio.iscoroutine(result):
                    await result
            await asyncio.sleep(self.poll)

    async def cancel(self, prompt_id: str) -> None:
        """Take the prompt back: drop it from the queue if it waits, interrupt it if it runs (never another one)."""
        await self.http.post("/queue", json={"delete": [prompt_id]})
        await self.http.post("/interrupt", json={"prompt_id": prompt_id})

    async def download(self, item: OutputFile, folder: Path) -> Path:
        """Stream one output file from /view into `folder`."""
        target = folder / item.node / item.subfolder / item.filename
        target.parent.mkdir(parents=True, exist_ok=True)
        async with self.http.stream("GET", "/view", params=item.params) as response:
            if response.status_code != 200:
                raise JobError(f"ComfyUI has no output file {item.subfolder + '/' if item.subfolder else ''}"
                               f"{item.filename} (GET /view: HTTP {response.status_code})")
            with target.open("wb") as f:
                async for chunk in response.aiter_bytes(1 << 20):
                    f.write(chunk)
        return target

    async def _history(self, prompt_id: str) -> dict[str, Any]:
        response = await self.http.get(f"/history/{prompt_id}")
        response.raise_for_status()
        return (response.json() or {}).get(prompt_id) or {}

    async def _where(self, prompt_id: str) -> tuple[str, int]:
        response = await self.http.get("/queue")
        response.raise_for_status()
        queue = response.json()
        if any(len(item) > 1 and item[1] == prompt_id for item in queue.get("queue_running", [])):
            return "running", 0
        pending = sorted(queue.get("queue_pending", []), key=lambda item: item[0])
        for position, item in enumerate(pending):
            if len(item) > 1 and item[1] == prompt_id:
                return "queued", position + len(queue.get("queue_running", []))
        return "finishing", 0  # between the queue and the history


def outputs(entry: Mapping[str, Any]) -> list[OutputFile]:
    """Every saved file of a finished prompt, node by node; previews (type temp) are left out."""
    found = []
    for node, produced in (entry.get("outputs") or {}).items():
        for kind, items in (produced or {}).items():
            if not isinstance(items, list):
                continue
            for item in items:
                if isinstance(item, dict) and item.get("filename") and item.get("type", "output") != "temp":
                    found.append(OutputFile(node=str(node), kind=kind, filename=str(item["filename"]),
                                            subfolder=str(item.get("subfolder") or ""),
                                            type=str(item.get("type") or "output")))
    return found


def rejection(body: Mapping[str, Any]) -> JobError:
    """POST /prompt's 400 as a job error: ComfyUI's message, then one line per node error."""
    error = body.get("error") if isinstance(body.get("error"), dict) else {}
    head = str(error.get("message") or "ComfyUI rejected the workflow")
    if error.get("details"):
        head += f": {error['details']}"
    lines = [f"ComfyUI rejected the workflow ({error.get('type', 'invalid')}): {head}"]
    for node_id, info in (body.get("node_errors") or {}).items():
        for item in info.get("errors", []):
            detail = f" ({item['details']})" if item.get("details") else ""
            lines.append(f"node {node_id} ({info.get('class_type', '?')}): {item.get('message', '')}{detail}")
    return JobError("\n".join(lines), {"comfyui_error": error, "node_errors": body.get("node_errors") or {}})


def failure_message(entry: Mapping[str, Any]) -> JobError | None:
    """None for a success; else the job error for a prompt that failed, ran out of memory or was interrupted."""
    status = entry.get("status") or {}
    if status.get("status_str") == "success":
        return None
    for kind, data in reversed(status.get("messages") or []):
        if kind == "execution_error":
            where = f"node {data.get('node_id', '?')} ({data.get('node_type', '?')})"
            text = str(data.get("exception_message", "")).strip()
            if data.get("exception_type") in OOM_TYPES:
                return JobError(f"ComfyUI ran out of GPU memory in {where}: {text}",
                                {"exception_type": data.get("exception_type"), "node_id": data.get("node_id"),
                                 "out_of_memory": True})
            return JobError(f"ComfyUI failed in {where}: {data.get('exception_type', 'error')}: {text}",
                            {"exception_type": data.get("exception_type"), "node_id": data.get("node_id")})
        if kind == "execution_interrupted":
            return JobError(f"the prompt was interrupted in ComfyUI (node {data.get('node_id', '?')})",
                            {"interrupted": True})
    return JobError("ComfyUI reports the prompt failed, without a message")
