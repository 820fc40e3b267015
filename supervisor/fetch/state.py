"""The state of one `fetch_plan` call, shared by its phases (scan, lookup, download, finish).

`FetchState` owns the report and the bookkeeping every phase does the same way: a file verified, repaired, failed or
marked, a token looked up, a metadata call retried, the summary event. The phases are functions over it, each in its
own module; none of them keeps state of its own.
"""

from __future__ import annotations

import os
import queue
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, Callable, Iterable

from .. import logs
from ..plan import volume
from ..errors import Problem
from ..plan.types import Download, Plan
from ..plan.settings import Settings, declared_variables
from ._log import log
from .errors import DiskFull, FetchFailure, Interrupted, Transient, Unreachable
from .report import FetchReport
from .store import Partial
from .tuning import Tuning

if TYPE_CHECKING:
    from .resolve import Remote
    from .transfer import Run

GB = 1e9
NO_ANSWER = {"connect", "connect_timeout"}  # causes that mean no answer at all: the server may be out of reach


@dataclass
class Job:
    """One file to bring to the volume: a plan entry, or one file of a snapshot."""

    download: Download
    dest: str
    kind: str  # "file" (Hub) or "url"
    path: str = ""  # path in the repo
    revision: str = ""
    size_hint: int = 0
    pin_sha256: str = ""  # the catalogue's pin, or the tree's LFS sha256 for a snapshot file
    git_sha1: str = ""  # the tree's blob id (the Hub's ETag) for a snapshot file outside LFS
    source_id: str = ""  # recorded in the marker
    state: str = volume.MISSING
    known_bad: bool = False  # `verify` found wrong bytes: no need to hash it again
    snapshot: str = ""  # the snapshot's dest, for its files
    rel: str = ""
    remote: "Remote | None" = None


@dataclass
class Snapshot:
    download: Download
    commit: str = ""
    files: list[tuple[str, int]] = field(default_factory=list)
    jobs: list[Job] = field(default_factory=list)
    existed: bool = False  # the folder was there (unverified or damaged) before this run
    touched: bool = False  # some file of it was downloaded or repaired in this run


class FetchState:
    """One call of fetch_plan: its inputs, its report, and what the phases found."""

    def __init__(self, plan: Plan, settings: Settings, stop: threading.Event, verify: bool, dry_run: bool,
                 on_progress: Callable[[dict[str, Any]], None] | None, tuning: Tuning | None):
        self.plan = plan
        self.settings = settings
        self.models_dir = Path(settings.models_dir)
        self.stop = stop
        self.halt = threading.Event()  # stop, or a full disk: every download winds down
        self.verify = verify
        self.dry_run = dry_run
        self.on_progress = on_progress
        self.tuning = tuning or Tuning()
        self.report = FetchReport(dry_run=dry_run, offline=settings.hf_hub_offline)
        self.started = time.monotonic()
        self.lock = threading.Lock()
        self.problems: list[tuple[Problem, bool]] = []  # (problem, is it an access/config problem)
        self.disk_full: DiskFull | None = None
        self.snapshots: dict[str, Snapshot] = {}
        self.run: "Run | None" = None
        self.rehash_failed: set[str] = set()  # `verify` found other bytes than the marker says
        self.reached = False  # some metadata call got an answer
        self.no_answer_since: float | None = None  # the first metadata call that got none, while none was answered
        self.unreachable = ""  # once set, the message every file that needs the Hub fails with
        self.unreachable_dests: set[str] = set()

    def token(self, name: str) -> str:
        if not name:
            return ""
        for variable in declared_variables():
            if variable["env"] == name:
                return str(getattr(self.settings, variable["field"]) or "")
        value = os.environ.get(name, "")  # a catalogue may name its own variable
        logs.register_secret(value)
        return value

    def retrying(self, fn: Callable[[], Any], what: str) -> Any:
        """Metadata calls: retried like the transfers (backoff with jitter, Retry-After, logged causes)."""
        import random

        from tenacity import RetryCallState, Retrying, retry_if_exception_type

        t = self.tuning
        retries = min(self.settings.download_retries, 2) if self.dry_run else self.settings.download_retries

        def stop(rs: RetryCallState) -> bool:
            if self.halt.is_set():
                return True
            exc = rs.outcome.exception() if rs.outcome else None
            if getattr(exc, "cause", "") in NO_ANSWER and not self.reached:
                return self._out_of_reach(exc, last_try=rs.attempt_number > retries)
            return rs.attempt_number > retries  # a dry run answers quickly, even offline

        def wait(rs: RetryCallState) -> float:
            exc = rs.outcome.exception() if rs.outcome else None
            server = getattr(exc, "retry_after", None)
            if server is not None:
                return min(server, t.retry_after_max)
            return min(t.backoff_initial * 2 ** (rs.attempt_number - 1), t.backoff_max) * random.uniform(0.5, 1.0)

        def before_sleep(rs: RetryCallState) -> None:
            exc = rs.outcome.exception() if rs.outcome else None
            quiet = getattr(exc, "cause", "") in NO_ANSWER and not self.reached and rs.attempt_number > 1
            (log.debug if quiet else log.warning)("fetch.retry", what=what, cause=getattr(exc, "cause", type(exc).__name__),
                        attempt=rs.attempt_number, wait=round(rs.next_action.sleep, 2) if rs.next_action else None,
                        error=str(exc))

        try:
            for attempt in Retrying(retry=retry_if_exception_type(Transient), stop=stop, wait=wait,
                                    sleep=lambda s: self.halt.wait(s), before_sleep=before_sleep, reraise=True):
                with attempt:
                    if self.halt.is_set():
                        raise Interrupted(f"{what}: stopped")
                    if self.unreachable:
                        raise Unreachable(self.unreachable)
                    result = fn()
                    self.reached = True
                    return result
        except Transient:
            if self.unreachable:
                raise Unreachable(self.unreachable) from None
            raise
        raise AssertionError("not reached")

    def _out_of_reach(self, exc: BaseException, last_try: bool) -> bool:
        """A metadata call got no answer and none ever did: stop retrying once that has lasted
        `unreachable_after` seconds (or this call's retries ran out), and say so once, in words."""
        now = time.monotonic()
        with self.lock:
            self.no_answer_since = self.no_answer_since or now
            waited = now - self.no_answer_since
            if self.unreachable or not (last_try or waited >= self.tuning.unreachable_after):
                return bool(self.unreachable)
            endpoint = self.settings.hf_endpoint
            self.unreachable = (f"cannot reach {endpoint}: no answer for {max(waited, 0.1):.0f} s ({exc}); check the "
                                "pod's network (HTTPS_PROXY?) and HF_ENDPOINT, or set HF_HUB_OFFLINE=true to start "
                                "with the files already on the volume")
        log.error("fetch.unreachable", endpoint=endpoint, seconds=round(waited, 1), message=self.unreachable)
        return True

    def needed(self, job: Job) -> int | None:
        """Bytes still to fetch for `job` (its resumable bytes subtracted); None when the size is unknown."""
        size = job.remote.size if job.remote and job.remote.size is not None else (job.size_hint or None)
        if size is None:
            return None
        return max(size - Partial(self.models_dir, job.dest).bytes_done(), 0)

    # -- what happened to one file ---------------------------------------------------------------------------------

    def repaired(self, job: Job, reason: str, found: int, expected: int | None) -> None:
        log.warning("fetch.repaired", dest=job.dest, reason=reason, size_found=found, size_expected=expected)
        with self.lock:
            name = job.snapshot or job.dest
            if name not in self.report.repaired:
                self.report.repaired.append(name)
            if job.snapshot:
                self.snapshots[job.snapshot].touched = True

    def verified(self, job: Job, how: str) -> None:
        log.info("fetch.verified", dest=job.dest, how=how)
        if self.run:
            self.run.progress.state(job.dest, "done")
        if not job.snapshot:
            with self.lock:
                self.report.verified.append(job.dest)

    def mark_file(self, job: Job, sha256: str, etag: str) -> None:
        volume.write_marker(self.models_dir, job.dest, volume.file_marker(
            self.models_dir, job.dest, source=job.source_id, sha256=sha256, etag=etag))

    def fail(self, dest: str, exc: FetchFailure, member: str = "") -> None:
        message = f"{member}: {exc}" if member else str(exc)
        fix = getattr(exc, "fix", "")
        text = f"{message} ({fix})" if fix else message
        log.error("fetch.failed", dest=dest, cause=exc.cause, error=message, fix=fix or None)
        with self.lock:
            if exc.cause == "unreachable":
                self.unreachable_dests.add(dest)
            if dest in self.report.failed:
                return
            self.report.failed[dest] = text
            self.problems.append((Problem(dest, message, fix), bool(getattr(exc, "access", False))))

    def summary(self) -> None:
        """The closing `fetch.summary` event (and the report's seconds and byte count): level error when files are
        not in place, warning when stopped, with one sentence for people."""
        self.report.seconds = round(time.monotonic() - self.started, 3)
        if self.run is not None:
            self.report.bytes_downloaded = self.run.progress.fetched()
        r = self.report
        if r.failed:
            first, why = next(iter(r.failed.items()))
            more = f" (and {len(r.failed) - 1} more: see the fetch.failed events)" if len(r.failed) > 1 else ""
            level, message = log.error, f"{len(r.failed)} file{'s' if len(r.failed) != 1 else ''} not in place: " \
                                        f"{first}: {why}{more}"
        elif r.interrupted:
            level, message = log.warning, "stopped; partial files are kept and resume at the next start"
        else:
            level, message = log.info, "every file is in place and verified" if not r.dry_run else "dry run"
        level("fetch.summary", message=message, downloaded=len(r.downloaded), verified=len(r.verified), repaired=len(r.repaired),
                 failed=len(r.failed), bytes_downloaded=r.bytes_downloaded, seconds=r.seconds,
                 mb_per_s=round(r.bytes_downloaded / max(r.seconds, 1e-6) / 1e6, 1), interrupted=r.interrupted,
                 dry_run=r.dry_run, offline=r.offline, ok=r.ok)


def parallel(items: Iterable[Job], fn: Callable[[Job], None], workers: int, state: FetchState,
             run: "Run | None" = None, grace: float = 1.0) -> None:
    """Run fn over items on `workers` daemon threads (daemon: a thread stuck in a slow call can never keep the
    process from exiting). Returns when all are done, or about `grace` seconds after `stop` is set. A bug in `fn`
    fails that file (never a silent success) and leaves the others running."""
    halt, stop = state.halt, state.stop
    pending: queue.SimpleQueue[Job] = queue.SimpleQueue()
    count = 0
    for item in items:
        pending.put(item)
        count += 1
    if not count:
        return

    def loop() -> None:
        while not halt.is_set():
            try:
                item = pending.get_nowait()
            except queue.Empty:
                return
            try:
                fn(item)
            except Exception as exc:  # a bug in one file must not hang the others
                log.exception("fetch.bug", dest=item.dest, error=f"{type(exc).__name__}: {exc}")
                state.fail(item.snapshot or item.dest, FetchFailure(
                    f"internal error: {type(exc).__name__}: {exc}", "bug"), member=item.rel)

    threads = [threading.Thread(target=loop, name="fetch-file", daemon=True) for _ in range(min(workers, count))]
    for thread in threads:
        thread.start()
    give_up_at: float | None = None
    while any(t.is_alive() for t in threads):
        for thread in threads:
            thread.join(0.05)
        if stop.is_set() and not halt.is_set():
            halt.set()
        if halt.is_set():
            if run is not None:
                run.sockets.shutdown_all()
            if give_up_at is None:
                give_up_at = time.monotonic() + grace
            elif time.monotonic() > give_up_at:
                return
