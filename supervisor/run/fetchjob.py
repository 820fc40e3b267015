"""The download of a plan's files, as the run loop sees it: one job at a time, in a worker thread.

ComfyUI needs no weights to start (it only lists files), so the job runs while ComfyUI starts; the pod is ready
when both are done. A job reports back through the loop's inbox (`fetched`); `finish` turns that report into the
job's state and the events a person reads.
"""

from __future__ import annotations

import threading
import time
from dataclasses import dataclass, field
from typing import Any, Callable

import structlog

from ..plan.types import Plan
from . import workers

log = structlog.get_logger("supervise")  # lazy: uses the configuration at each call
FAILED_STATES = ("failed", "unavailable", "interrupted")
DONE_STATES = ("done", "dry_run")


@dataclass
class FetchJob:
    number: int
    plan: Plan
    stop: threading.Event = field(default_factory=threading.Event)
    thread: threading.Thread | None = None
    started: float = field(default_factory=time.monotonic)
    state: str = "running"  # running | done | failed | dry_run | unavailable | interrupted
    seconds: float | None = None
    failed: dict[str, str] = field(default_factory=dict)
    message: str = ""
    bytes_downloaded: int | None = None

    @property
    def running(self) -> bool:
        return self.state == "running"

    @property
    def files_in_place(self) -> bool:
        return self.state in DONE_STATES

    def status(self) -> dict[str, Any]:
        return {"state": self.state, "job": self.number, "seconds": self.seconds, "failed": self.failed,
                "message": self.message, "bytes_downloaded": self.bytes_downloaded,
                "missing": len(self.plan.missing()), "missing_bytes": sum(d.size for d in self.plan.missing())}

    def not_ready_reason(self, progress: str) -> str | None:
        if self.running:
            return "downloading the plan's files" + progress
        if self.state == "dry_run" and self.plan.missing():
            return f"DRY_RUN=true: {len(self.plan.missing())} files not downloaded"
        if self.state in FAILED_STATES:
            return f"download {self.state}: {self.message}" if self.message else f"download {self.state}"
        return None

    # -- start --------------------------------------------------------------------------------------------------

    def start(self, settings: Any, post: workers.Post, on_progress: Callable[[dict], None]) -> None:
        fetch_plan = _fetch_function()
        if fetch_plan is None:
            self._unavailable(settings)
            return
        missing = self.plan.missing()
        log.info("fetch.started", job=self.number, files=len(self.plan.downloads), missing=len(missing),
                 missing_bytes=sum(d.size for d in missing), dry_run=settings.dry_run)
        plan, stop, number = self.plan, self.stop, self.number
        self.thread = workers.start(
            lambda: workers.fetch(fetch_plan, number, post, stop, plan=plan, settings=settings,
                                  on_progress=on_progress), f"fetch-{number}")

    def _unavailable(self, settings: Any) -> None:
        """A build without the fetch package: fine if nothing is missing."""
        missing = self.plan.missing()
        self.seconds = 0.0
        if not missing:
            self.state = "done"
            log.info("fetch.nothing_to_do", files=len(self.plan.downloads))
        elif settings.dry_run:
            self.state = "dry_run"
            log.info("fetch.dry_run", missing=[{"dest": d.dest, "size": d.size, "source": d.source} for d in missing],
                     missing_bytes=sum(d.size for d in missing))
        else:
            self.state = "unavailable"
            self.message = f"{len(missing)} files missing and this build has no downloader (supervisor.fetch)"
            log.error("fetch.unavailable", missing=[d.dest for d in missing], message=self.message)

    # -- finish ---------------------------------------------------------------------------------------------------

    def finish(self, data: dict[str, Any], dry_run: bool) -> None:
        """The worker's `fetched` message: the report (or the error) -> state, and one event."""
        self.seconds = data.get("seconds")
        report = data.get("report")
        self.bytes_downloaded = getattr(report, "bytes_downloaded", None)
        failed = {str(k): str(v) for k, v in (getattr(report, "failed", {}) or {}).items()}
        not_ready = "ComfyUI keeps running; the pod is not ready until the files are in place"
        if data.get("error"):
            self.state, self.message, self.failed = "failed", str(data["error"]), failed
            log.error("fetch.failed", job=self.number, error=self.message, failed=failed or None,
                      seconds=self.seconds, message=not_ready)
        elif getattr(report, "interrupted", False):
            self.state = "interrupted"
            log.info("fetch.interrupted", job=self.number, seconds=self.seconds, message="partial files kept for resume")
        elif dry_run:
            self.state = "dry_run"
            log.info("fetch.dry_run_done", job=self.number)
        elif getattr(report, "ok", False):
            self.state = "done"
            log.info("fetch.done", job=self.number, seconds=self.seconds,
                     downloaded=len(getattr(report, "downloaded", []) or []), bytes=self.bytes_downloaded)
        else:
            self.state, self.failed, self.message = "failed", failed, f"{len(failed)} files failed"
            log.error("fetch.failed", job=self.number, failed=failed, seconds=self.seconds, message=not_ready)


def _fetch_function() -> Callable[..., Any] | None:
    try:
        from ..fetch import fetch_plan
    except (ImportError, AttributeError):
        return None
    return fetch_plan
