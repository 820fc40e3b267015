"""One serverless job, start to end: check the input -> wait until the pod is ready -> upload the input files ->
submit -> follow the prompt (progress updates; SERVERLESS_JOB_TIMEOUT) -> fetch the outputs -> return them inline
(base64) or as URLs of the bucket. A cancelled job (the SDK cancels the job's task when RunPod stops it) takes its
prompt back from ComfyUI before it ends.

The result, shaped like worker-comfyui's so its clients work unchanged:
    {"images": [{"filename", "subfolder", "node", "kind", "size", "type": "base64" | "s3_url", "data"}, ...],
     "prompt_id": "...", "seconds": 12.3}
`images` lists every saved output file (videos too; `kind` is the key ComfyUI listed it under).
"""

from __future__ import annotations

import asyncio
import base64
import json
import tempfile
import time
import urllib.parse
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Awaitable, Callable

import httpx
import structlog

from . import jobs
from .comfy import Comfy, OutputFile, outputs
from .jobs import JobError
from .pod import Pod, describe

log = structlog.get_logger("serverless")
MAX_INLINE_BYTES = 20 * 1000 * 1000  # RunPod refuses larger results; base64 counts as sent
Report = Callable[[dict[str, Any]], None]


@dataclass
class Worker:
    """What every job needs; made once by the worker process."""

    pod: Pod
    resolved_dir: Path  # the supervisor's resolved copies of the shipped workflows (workflows_api/)
    store: Any = None  # supervisor.outputs.Store, or None for base64 results
    job_timeout: float = 0.0
    ready_timeout: float = 600.0
    poll: float = 0.5

    async def run(self, job_id: str, raw_input: Any, report: Report) -> dict[str, Any]:
        """The job's result, or {"error": message, ...details} (what the SDK turns into a failed job)."""
        started = time.monotonic()
        log.info("serverless.job_started", job=job_id)
        try:
            result = await self._run(job_id, raw_input, _safe(report, job_id), started)
        except JobError as exc:
            log.warning("serverless.job_failed", job=job_id, error=str(exc), seconds=_since(started))
            return {"error": str(exc), **({"details": exc.details} if exc.details else {})}
        except asyncio.CancelledError:
            log.warning("serverless.job_cancelled", job=job_id, seconds=_since(started))
            raise
        log.info("serverless.job_done", job=job_id, outputs=len(result["images"]), seconds=result["seconds"])
        return result

    async def _run(self, job_id: str, raw_input: Any, report: Callable[[dict[str, Any]], Awaitable[None]],
                   started: float) -> dict[str, Any]:
        job = jobs.parse(raw_input)
        resolved = self._resolved(job.preset) if job.preset else None
        url = await self.pod.ready(self.ready_timeout, lambda reasons: report(describe(reasons)))
        async with httpx.AsyncClient(base_url=url, timeout=httpx.Timeout(120, connect=5), trust_env=False) as http:
            comfy = Comfy(http, self.poll)
            try:
                names = await self._inputs(job, comfy, report)
                prompt = job.workflow if job.workflow is not None else jobs.preset_prompt(job, resolved or {}, names)
                prompt_id = await comfy.submit(prompt, client_id=f"serverless-{job_id}")
                await report({"stage": "submitted", "prompt_id": prompt_id})
                entry = await self._follow(comfy, prompt_id, report)
                files = outputs(entry)
                await report({"stage": "collecting_outputs", "files": len(files)})
                with tempfile.TemporaryDirectory(prefix="serverless-") as tmp:
                    images = await self._deliver(job_id, comfy, files, Path(tmp), report)
            except httpx.HTTPError as exc:
                raise JobError(f"lost ComfyUI at {url} during the job ({type(exc).__name__}: {exc}); the supervisor "
                               "restarts it if it died, see its log") from None
        return {"images": images, "prompt_id": prompt_id, "seconds": _since(started)}

    def _resolved(self, name: str) -> dict[str, Any]:
        path = self.resolved_dir / f"{name}.json"
        try:
            return json.loads(path.read_text(encoding="utf-8"))
        except FileNotFoundError:
            raise JobError(f"preset {name} is not available on this worker: {path} does not exist (the supervisor "
                           "writes it when SteadyDancer is in the plan; see `supervisor plan`)") from None
        except (OSError, ValueError) as exc:
            raise JobError(f"preset {name}: cannot read {path}: {exc}") from None

    async def _inputs(self, job: jobs.Job, comfy: Comfy, report: Callable[..., Awaitable[None]]) -> dict[str, str]:
        """Fetch (URLs) and upload every input file; returns field -> name in ComfyUI's input folder."""
        names: dict[str, str] = {}
        if job.files:
            await report({"stage": "uploading_inputs", "files": len(job.files)})
        for file in job.files:
            data = file.data if file.data is not None else await fetch(file)
            names[file.field] = await comfy.upload(jobs.name_for(file, data), data)
        return names

    async def _follow(self, comfy: Comfy, prompt_id: str, report: Callable[..., Awaitable[None]]) -> dict[str, Any]:
        try:
            if self.job_timeout > 0:
                return await asyncio.wait_for(comfy.follow(prompt_id, report), self.job_timeout)
            return await comfy.follow(prompt_id, report)
        except asyncio.TimeoutError:
            await _take_back(comfy, prompt_id)
            raise JobError(f"the job ran longer than {self.job_timeout:g} s (SERVERLESS_JOB_TIMEOUT); its prompt "
                           "was interrupted in ComfyUI", {"timeout": True}) from None
        except asyncio.CancelledError:
            await _take_back(comfy, prompt_id)
            raise

    async def _deliver(self, job_id: str, comfy: Comfy, files: list[OutputFile], folder: Path,
                       report: Callable[..., Awaitable[None]]) -> list[dict[str, Any]]:
        results, inline = [], 0
        for item in files:
            path = await comfy.download(item, folder)
            entry: dict[str, Any] = {"filename": item.filename, "subfolder": item.subfolder, "node": item.node,
                                     "kind": item.kind, "size": path.stat().st_size}
            if self.store is not None:
                key = "/".join(p for p in ("serverless", job_id, item.subfolder, item.filename) if p)
                await report({"stage": "uploading_outputs", "file": item.filename})
                uploaded = await asyncio.to_thread(self.store.upload, path, key)
                entry.update(type="s3_url", data=uploaded.url, key=key)
            else:
                inline += (entry["size"] + 2) // 3 * 4  # its base64 length, known before reading the file
                if inline > MAX_INLINE_BYTES:
                    raise JobError(f"the outputs are more than {MAX_INLINE_BYTES // 1_000_000} MB as base64, over "
                                   "RunPod's result limit: set R2_BUCKET (and R2_ENDPOINT, R2_ACCESS_KEY_ID, "
                                   "R2_SECRET_ACCESS_KEY) to get them as URLs instead")
                entry.update(type="base64", data=base64.b64encode(path.read_bytes()).decode("ascii"))
            results.append(entry)
        return results


async def _take_back(comfy: Comfy, prompt_id: str) -> None:
    """Drop or interrupt the job's prompt; shielded, so a second cancellation cannot leave it running."""
    try:
        await asyncio.shield(asyncio.wait_for(comfy.cancel(prompt_id), 10))
        log.info("serverless.prompt_taken_back", prompt_id=prompt_id)
    except (httpx.HTTPError, asyncio.TimeoutError) as exc:
        log.warning("serverless.take_back_failed", prompt_id=prompt_id, error=f"{type(exc).__name__}: {exc}")


async def fetch(file: jobs.InputFile) -> bytes:
    """GET an input file's URL (redirects followed, size capped). Errors name the URL without its query string,
    which may hold a signature."""
    assert file.url is not None
    parts = urllib.parse.urlsplit(file.url)
    shown = urllib.parse.urlunsplit((parts.scheme, parts.netloc.rpartition("@")[2], parts.path, "", ""))
    chunks, size = [], 0
    try:
        async with httpx.AsyncClient(follow_redirects=True, timeout=httpx.Timeout(60, connect=10)) as http:
            async with http.stream("GET", file.url) as response:
                if response.status_code != 200:
                    raise JobError(f"{file.field}: GET {shown} answered HTTP {response.status_code}")
                async for chunk in response.aiter_bytes(1 << 20):
                    size += len(chunk)
                    if size > jobs.MAX_INPUT_BYTES:
                        raise JobError(f"{file.field}: {shown} is larger than {jobs.MAX_INPUT_BYTES} bytes")
                    chunks.append(chunk)
    except httpx.HTTPError as exc:
        raise JobError(f"{file.field}: cannot fetch {shown}: {type(exc).__name__}") from None
    if not size:
        raise JobError(f"{file.field}: {shown} is empty")
    return b"".join(chunks)


def _safe(report: Report, job_id: str) -> Callable[[dict[str, Any]], Awaitable[None]]:
    """Progress updates never fail a job."""
    async def send(payload: dict[str, Any]) -> None:
        log.info("serverless.progress", job=job_id, **payload)
        try:
            report(payload)
        except Exception as exc:  # noqa: BLE001 - the SDK's transport is not ours to crash on
            log.warning("serverless.progress_failed", job=job_id, error=f"{type(exc).__name__}: {exc}")
    return send


def _since(started: float) -> float:
    return round(time.monotonic() - started, 3)
