"""Phase 3 of a fetch (after the checks in `preflight`): DOWNLOAD_CONCURRENCY files at once, each under a
cross-process lock, each through `transfer.Transfer`; a marker is written for each.

A file already at its destination without a valid marker is adopted when its bytes are right, resumed when it is a
truncated copy, and replaced otherwise (`_prepare`).
"""

from __future__ import annotations

import time
from typing import Any

from ..plan import volume
from ..errors import Problem
from ._log import log
from .errors import DiskFull, FetchError, FetchFailure, Interrupted, Permanent
from .hashing import hash_file
from .lookup import resolve_again
from .report import human
from .state import GB, FetchState, Job, parallel
from .store import Partial, free_bytes


def download_all(state: FetchState, jobs: list[Job]) -> None:
    assert state.run is not None
    for job in jobs:
        size = job.remote.size if job.remote else None
        state.run.progress.track(job.dest, size, Partial(state.models_dir, job.dest).bytes_done())
    parallel(jobs, lambda job: _download(state, job), state.settings.download_concurrency, state, state.run)


def _download(state: FetchState, job: Job) -> None:
    from .lock import Lock, lock_path
    from .transfer import Source, Transfer

    assert state.run is not None and job.remote is not None
    progress = state.run.progress
    lock = Lock(lock_path(state.models_dir, job.dest), heartbeat=state.tuning.lock_heartbeat,
                stale_after=state.tuning.lock_stale_after)

    def on_wait(owner: Any) -> None:
        progress.state(job.dest, "waiting")
        log.info("fetch.waiting", dest=job.dest, owner=owner.describe() if owner else "unknown",
                 message="another process is downloading this file; waiting for it")

    try:
        if not lock.acquire(state.halt, on_wait=on_wait, check=lambda: is_done(state, job)):
            if not state.halt.is_set():
                state.verified(job, "by_other")
            return
        if lock.broken:
            log.warning("fetch.lock_broken", dest=job.dest, owner=lock.broken.describe(),
                        message="took over the lock of a process that is gone; resuming its partial file")
        if is_done(state, job):
            state.verified(job, "by_other")
            return
        partial = Partial(state.models_dir, job.dest)
        prepared = _prepare(state, job, partial)
        if prepared == "verified":
            return
        source = Source(job.remote, lambda: resolve_again(state, job))
        transfer = Transfer(state.run, dest=job.dest, partial=partial, source=source,
                            expect_sha256=job.pin_sha256, expect_git_sha1=_git_sha1(job),
                            source_id=job.source_id, lock_lost=lock.lost,
                            adopted=prepared if not isinstance(prepared, str) else None)
        started = time.monotonic()
        result = transfer.execute()
        remote = source.current()[0]
        state.mark_file(job, result.sha256, remote.etag)
        seconds = time.monotonic() - started
        with state.lock:
            if job.snapshot:
                state.snapshots[job.snapshot].touched = True
            else:
                state.report.downloaded.append(job.dest)
        progress.state(job.dest, "done")
        log.info("fetch.done", dest=job.dest, size=result.size, fetched=result.fetched, sha256=result.sha256,
                 seconds=round(seconds, 2), mb_per_s=round(result.fetched / max(seconds, 1e-6) / 1e6, 1))
    except DiskFull as exc:
        with state.lock:
            state.disk_full = state.disk_full or exc
            state.report.failed[job.snapshot or job.dest] = "disk full; the partial file is kept for the next start"
        state.halt.set()
        state.run.sockets.shutdown_all()
        progress.state(job.dest, "failed")
    except Interrupted:
        progress.state(job.dest, "queued")
    except FetchFailure as exc:
        progress.state(job.dest, "failed")
        state.fail(job.snapshot or job.dest, exc, member=job.rel)
    except OSError as exc:  # the volume itself: permissions, I/O errors, a read-only mount
        progress.state(job.dest, "failed")
        state.fail(job.snapshot or job.dest, FetchFailure(f"{job.dest}: {exc}", "os_error"), member=job.rel)
    finally:
        lock.release()


def _git_sha1(job: Job) -> str:
    """The Hub's ETag of a file outside LFS is its git blob id: a content check where no sha256 exists."""
    if job.git_sha1:
        return job.git_sha1
    etag = job.remote.etag if job.remote else ""
    if job.kind == "file" and len(etag) == 40 and all(c in "0123456789abcdef" for c in etag):
        return etag
    return ""


def is_done(state: FetchState, job: Job) -> bool:
    """Did another process finish this file while we waited (a fresh marker for this very version)?"""
    marker = volume.read_marker(state.models_dir, job.dest)
    if marker is None or marker.source != job.source_id:
        return False
    try:
        stat = (state.models_dir / job.dest).stat()
    except OSError:
        return False
    if (stat.st_size, stat.st_mtime_ns) != (marker.size, marker.mtime_ns):
        return False
    remote = job.remote
    if remote is not None and remote.size is not None and remote.size != marker.size:
        return False
    wanted = job.pin_sha256 or (remote.sha256 if remote else "")
    return not wanted or marker.sha256 == wanted


def _prepare(state: FetchState, job: Job, partial: Partial) -> Any:
    """A file already at the destination without a valid marker: adopt it if its bytes are right, reuse it as
    the start of the download if it is a truncated copy, otherwise remove it. Returns "verified", "download" or
    the adopted RangeSet."""
    target = state.models_dir / job.dest
    remote = job.remote
    assert remote is not None
    try:
        found = target.stat().st_size
    except FileNotFoundError:
        return "download"
    if target.is_dir():
        raise Permanent(f"{target} is a folder, where a file should go", "in_the_way", fix="remove it")
    volume.remove_marker(state.models_dir, job.dest)
    expected_sha = job.pin_sha256 or remote.sha256
    git = "" if expected_sha else _git_sha1(job)
    if job.known_bad:
        reason = "bytes differ from the marker (--verify)"
    elif remote.size is not None and found == remote.size:
        state.run.progress.state(job.dest, "hashing")  # type: ignore[union-attr]
        digests = hash_file(target, git=bool(git), stop=state.halt)
        if (expected_sha and digests.sha256 == expected_sha) or (git and digests.git_sha1 == git) or \
                (not expected_sha and not git):
            state.mark_file(job, digests.sha256, remote.etag)
            state.verified(job, "hashed" if expected_sha or git else "size_only")
            return "verified"
        reason = "same size, other bytes"
    elif remote.size is not None and found < remote.size and (expected_sha or git) and remote.ranges \
            and partial.bytes_done() < found:
        partial.discard()
        adopted = partial.adopt({**remote.identity(), "source": job.source_id}, found)
        state.repaired(job, "truncated: resuming from its last byte", found, remote.size)
        return adopted
    else:
        reason = "wrong size"
    state.repaired(job, reason, found, remote.size)
    target.unlink()
    return "download"


def disk_full_error(state: FetchState, jobs: list[Job]) -> FetchError:
    """The disk filled up during the downloads: how many bytes to free before starting again."""
    remaining = sum(state.needed(j) or 0 for j in jobs if not is_done(state, j))
    free = free_bytes(state.models_dir)
    reserve = int(state.settings.disk_reserve_gb * GB)
    short = max(remaining + reserve - free, 0)
    where = state.disk_full.path if state.disk_full else str(state.models_dir)
    problem = Problem(str(state.models_dir), f"the disk filled up while writing {where}: {human(remaining)} still to "
                                             f"download, {human(free)} free, DISK_RESERVE_GB="
                                             f"{state.settings.disk_reserve_gb:g}",
                      f"free at least {human(short)} ({short} bytes) and start again: partial files are kept "
                      "(*.partial) and resume where they stopped")
    return FetchError([problem], "disk full", report=state.report)
