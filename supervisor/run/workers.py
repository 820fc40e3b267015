"""The supervisor's background threads. Each does blocking I/O (HTTP, disk, the fetch) and reports back with
`post(kind, generation, **data)`: a message in the loop's inbox plus a wake-up, so the loop stays the only place
that decides anything. Every worker stops when its `stop` event is set; all are daemon threads.

* `Prober`: startup (poll GET /system_stats until 200, at once when the ready line is seen) then liveness (every
  HEALTH_INTERVAL, GET /system_stats and the queue length).
* `readiness`: after ComfyUI answers and the files are in place: the live workflow check, then the warmup prompt.
* `drain`: on shutdown, wait for the prompts that were running to finish.
* `fetch`: the plan's downloads.
* `prewarm`: read the plan's weights into the page cache.
* `find_prompt_oom`: after ComfyUI logged an out-of-memory error inside a prompt, find that prompt in /history.
* `resubmit`: queue a prompt again (OOM_RETRY_PROMPT) and wait for its outcome.
"""

from __future__ import annotations

import json
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

import httpx
import structlog

from .client import ComfyClient, ComfyError, history_outcome, out_of_memory

log = structlog.get_logger("supervise")  # lazy: uses the configuration at each call
STARTUP_POLL = 0.05  # seconds between startup probes (the ready line triggers one at once)
HTTP_ERRORS = (httpx.HTTPError, ComfyError, ValueError, OSError)


@dataclass
class Message:
    kind: str
    generation: int
    data: dict[str, Any] = field(default_factory=dict)


Post = Callable[..., None]


def start(target: Callable[..., None], name: str, *args: Any) -> threading.Thread:
    thread = threading.Thread(target=target, args=args, name=name, daemon=True)
    thread.start()
    return thread


class Prober:
    """Startup and liveness probes of one ComfyUI process (one generation)."""

    def __init__(self, url: str, generation: int, post: Post, *, interval: float, timeout: float,
                 check_queue: bool):
        self.url, self.generation, self.post = url, generation, post
        self.interval, self.timeout, self.check_queue = interval, timeout, check_queue
        self.stop = threading.Event()
        self.poke = threading.Event()  # the ready line was printed: probe now
        self.thread = start(self._run, f"prober-{generation}")

    def _run(self) -> None:
        with ComfyClient(self.url, timeout=self.timeout) as client:
            stats = self._wait_answering(client)
            if stats is None:
                return
            self.post("answering", self.generation, stats=stats)
            self._liveness(client)

    def _wait_answering(self, client: ComfyClient) -> dict[str, Any] | None:
        while not self.stop.is_set():
            try:
                return client.system_stats(timeout=max(self.timeout, 2.0))
            except HTTP_ERRORS:
                pass
            self.poke.wait(STARTUP_POLL)
            self.poke.clear()
        return None

    def _liveness(self, client: ComfyClient) -> None:
        while not self.stop.wait(self.interval):
            started = time.monotonic()
            try:
                client.system_stats(timeout=self.timeout)
                queue = client.queue_remaining(timeout=self.timeout) if self.check_queue else None
            except HTTP_ERRORS as exc:
                if not self.stop.is_set():
                    self.post("liveness", self.generation, ok=False, error=_short(exc),
                              seconds=round(time.monotonic() - started, 3))
                continue
            self.post("liveness", self.generation, ok=True, queue=queue)


def readiness(url: str, generation: int, post: Post, stop: threading.Event, *, plan: Any, settings: Any,
              check: Callable[[dict, Any, Any], list] | None) -> None:
    """The workflow check (if the workflows module is installed and CHECK_WORKFLOWS), then the warmup prompt."""
    with ComfyClient(url, timeout=60.0) as client:
        if check is not None:
            started = time.monotonic()
            try:
                problems = [str(p) for p in check(client.object_info(timeout=120.0), plan, settings)]
                post("checked", generation, problems=problems, seconds=round(time.monotonic() - started, 3))
            except Exception as exc:  # their code, our daemon: a bug there must not stop readiness
                post("checked", generation, problems=[f"the workflow check failed to run: {_short(exc)}"],
                     error=True, seconds=round(time.monotonic() - started, 3))
        if stop.is_set():
            return
        if settings.warmup_workflow:
            ok, message, seconds = warmup(client, Path(settings.warmup_workflow), stop,
                                          deadline=settings.startup_timeout)
            post("warmed", generation, ok=ok, message=message, seconds=seconds)
        post("readiness_done", generation)


def load_workflow(path: Path) -> dict[str, Any]:
    """An API-format workflow: {node_id: {class_type, inputs}}, or a saved request body {"prompt": {...}}."""
    data = json.loads(path.read_text())
    if isinstance(data, dict) and isinstance(data.get("prompt"), dict):
        data = data["prompt"]
    if not isinstance(data, dict) or not data or not all(
            isinstance(node, dict) and "class_type" in node for node in data.values()):
        raise ValueError(f"{path} is not an API-format workflow (export it with 'Save (API)' in ComfyUI)")
    return data


def warmup(client: ComfyClient, path: Path, stop: threading.Event, deadline: float) -> tuple[bool, str, float]:
    """Queue the warmup workflow and wait for its outcome. (ok, message, seconds)."""
    started = time.monotonic()
    try:
        prompt_id = client.post_prompt(load_workflow(path), client_id="supervisor-warmup")
        while not stop.wait(0.25):
            ok, why = history_outcome(client.history(prompt_id, timeout=10.0))
            if ok is not None:
                return ok, why or "done", round(time.monotonic() - started, 3)
            if time.monotonic() - started > deadline:
                return (False, f"not finished after {deadline:g} s (STARTUP_TIMEOUT)",
                        round(time.monotonic() - started, 3))
    except (OSError, ValueError, ComfyError, httpx.HTTPError) as exc:
        return False, _short(exc), round(time.monotonic() - started, 3)
    return False, "stopped", round(time.monotonic() - started, 3)


def find_prompt_oom(url: str, generation: int, post: Post, stop: threading.Event, *, seen: set[str],
                    wait: float = 15.0) -> None:
    """ComfyUI writes the prompt's /history entry just after it logs "Got an OOM": look for it a little while."""
    deadline = time.monotonic() + wait
    with ComfyClient(url, timeout=5.0) as client:
        while not stop.is_set():
            try:
                for prompt_id, entry in client.recent_history(8).items():
                    found = out_of_memory(entry)
                    if found and prompt_id not in seen:
                        prompt = entry.get("prompt") or []
                        post("prompt_oom", generation, **{**found, "prompt_id": prompt_id},
                             graph=prompt[2] if len(prompt) > 2 else None,
                             extra=prompt[3] if len(prompt) > 3 else None, queue=client.queue_remaining())
                        return
            except HTTP_ERRORS:
                pass
            if time.monotonic() > deadline or stop.wait(0.2):
                break
    post("prompt_oom", generation, prompt_id=None, node_id=None, node_type=None,
         message="out of memory inside a prompt (its /history entry was not found)")


def resubmit(url: str, generation: int, post: Post, stop: threading.Event, *, graph: dict[str, Any],
             extra: dict[str, Any] | None, original: str, deadline: float) -> None:
    """Queue `graph` again and report its outcome (ok, message, new prompt id)."""
    started = time.monotonic()
    with ComfyClient(url, timeout=30.0) as client:
        try:
            client_id = str((extra or {}).get("client_id") or "supervisor-oom-retry")
            prompt_id = client.post_prompt(graph, client_id=client_id)
        except HTTP_ERRORS as exc:
            post("retried", generation, ok=False, original=original, prompt_id=None, message=_short(exc))
            return
        post("retry_queued", generation, original=original, prompt_id=prompt_id)
        while not stop.wait(0.5):
            try:
                ok, why = history_outcome(client.history(prompt_id, timeout=10.0))
            except HTTP_ERRORS:
                continue
            if ok is not None:
                post("retried", generation, ok=ok, original=original, prompt_id=prompt_id, message=why or "done",
                     seconds=round(time.monotonic() - started, 3))
                return
            if time.monotonic() - started > deadline:
                post("retried", generation, ok=False, original=original, prompt_id=prompt_id,
                     message=f"not finished after {deadline:g} s")
                return


def drain(url: str, generation: int, post: Post, stop: threading.Event) -> None:
    """Wait until the prompts running now have finished (pending ones are not waited for)."""
    with ComfyClient(url, timeout=2.0) as client:
        try:
            running = set(client.running_ids())
        except HTTP_ERRORS:
            running = set()
        if running:
            log.info("supervise.draining", prompts=sorted(running))
        while running and not stop.wait(0.25):
            try:
                running &= set(client.running_ids())
            except HTTP_ERRORS:
                break
    post("drained", generation, unfinished=sorted(running))


def _short(exc: BaseException) -> str:
    text = str(exc) or type(exc).__name__
    return f"{type(exc).__name__}: {text}"[:300]


def fetch(fetch_plan: Callable[..., Any], job: int, post: Post, stop: threading.Event, *, plan: Any, settings: Any,
          on_progress: Callable[[dict], None]) -> None:
    """Run the fetch of one plan; the report (or the error) goes back to the loop."""
    started = time.monotonic()
    try:
        report = fetch_plan(plan, settings, stop=stop, verify=settings.verify_downloads, dry_run=settings.dry_run,
                            on_progress=on_progress)
    except Exception as exc:  # FetchError and anything unexpected: the loop reports it, ComfyUI keeps running
        post("fetched", job, error=_short(exc), report=getattr(exc, "report", None),
             seconds=round(time.monotonic() - started, 3))
        return
    post("fetched", job, report=report, seconds=round(time.monotonic() - started, 3))


def prewarm(job: int, post: Post, stop: threading.Event, *, plan: Any, models_dir: Path) -> None:
    from .prewarm import plan_files, prewarm as read_all

    try:
        result = read_all(plan_files(plan, models_dir), stop)
    except Exception as exc:  # a vanished file or a bad disk must not take the daemon down
        post("prewarmed", job, error=_short(exc))
        return
    post("prewarmed", job, result=result)
