"""fetch_plan: every file of the plan present and verified under MODELS_DIR.

Phases, each cheaper than the next, so a warm boot stops after the first:
1. scan: one stat and one marker read per destination; verified files are done (no network, no hashing; with
   `verify` they are re-hashed instead). HF_HUB_OFFLINE stops here too: success, or a list of what is missing.
2. expand and resolve (network, metadata only): snapshot folders become their files (tree API); each file gets its
   URL, size and sha256 (one HEAD). Access problems (gated, missing) surface here, before any byte is written.
3. disk check against the exact sizes (resumable bytes subtracted), then download DOWNLOAD_CONCURRENCY files at
   once, each under a cross-process lock, each through transfer.Transfer; a marker is written for each.
4. snapshot markers, the summary event, and FetchError for what needs the user.
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
from ._log import log
from ..errors import Problem
from ..plan.types import Download, Plan
from ..plan.settings import Settings, declared_variables
from .errors import DiskFull, FetchError, FetchFailure, Interrupted, Permanent, Transient
from .hashing import hash_file
from .progress import Progress
from .report import FetchReport, PlannedFile, human
from .store import Partial, clean_hf_orphans, free_bytes
from .tuning import Tuning

if TYPE_CHECKING:
    from .resolve import Remote
    from .transfer import Run

GB = 1e9


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
class _Snapshot:
    download: Download
    commit: str = ""
    files: list[tuple[str, int]] = field(default_factory=list)
    jobs: list[Job] = field(default_factory=list)
    existed: bool = False  # the folder was there (unverified or damaged) before this run
    touched: bool = False  # some file of it was downloaded or repaired in this run


class _Fetch:
    """One call of fetch_plan."""

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
        self.snapshots: dict[str, _Snapshot] = {}
        self.run: "Run | None" = None
        self.rehash_failed: set[str] = set()  # `verify` found other bytes than the marker says

    # -- phase 1: what is on disk ----------------------------------------------------------------------------------

    def scan(self) -> list[Job]:
        todo: list[Job] = []
        seen: set[str] = set()
        for download in self.plan.downloads:
            if download.dest in seen:
                continue
            seen.add(download.dest)
            state = volume.file_state(self.models_dir, download)
            if state == volume.VERIFIED and self.verify and not self.dry_run:
                state = self._rehash(download)
            if state == volume.VERIFIED:
                self.report.verified.append(download.dest)
                log.debug("fetch.verified", dest=download.dest, how="marker")
                continue
            todo.append(Job(download=download, dest=download.dest, kind=download.kind, path=download.path,
                            revision=download.revision, size_hint=download.size, pin_sha256=download.sha256 or "",
                            source_id=volume.identity(download), state=state,
                            known_bad=download.dest in self.rehash_failed))
        return todo

    def _rehash(self, download: Download) -> str:
        """`verify`: hash a marker-verified file (or each file of a snapshot) against its marker."""
        if download.kind == "snapshot":
            marker = volume.read_marker(self.models_dir, download.dest)
            bad = [rel for rel, _ in (marker.files if marker else ())
                   if not self._rehash_one(f"{download.dest}/{rel}", "")]
            if bad:
                volume.remove_marker(self.models_dir, download.dest)
                self.report.repaired.append(download.dest)
                return volume.WRONG_SIZE
            log.info("fetch.verified", dest=download.dest, how="rehashed")
            return volume.VERIFIED
        if self._rehash_one(download.dest, download.sha256 or ""):
            log.info("fetch.verified", dest=download.dest, how="rehashed")
            return volume.VERIFIED
        self.rehash_failed.add(download.dest)
        self.report.repaired.append(download.dest)
        return volume.WRONG_SIZE

    def _rehash_one(self, dest: str, pin: str) -> bool:
        marker = volume.read_marker(self.models_dir, dest)
        expected = pin or (marker.sha256 if marker else "")
        try:
            digests = hash_file(self.models_dir / dest, stop=self.stop)
        except OSError as exc:
            log.warning("fetch.repaired", dest=dest, reason=f"unreadable: {exc}")
            volume.remove_marker(self.models_dir, dest)
            return False
        if expected and digests.sha256 == expected:
            return True
        log.warning("fetch.repaired", dest=dest, reason="sha256 differs from its marker", found=digests.sha256,
                    expected=expected or None)
        volume.remove_marker(self.models_dir, dest)
        return False

    # -- offline -----------------------------------------------------------------------------------------------------

    def offline(self, todo: list[Job]) -> None:
        missing: list[Problem] = []
        for job in todo:
            if job.state == volume.UNVERIFIED and job.kind != "snapshot" and job.pin_sha256:
                if hash_file(self.models_dir / job.dest, stop=self.stop).sha256 == job.pin_sha256:
                    self._mark_file(job, job.pin_sha256, "")
                    self.report.verified.append(job.dest)
                    log.info("fetch.verified", dest=job.dest, how="hashed_offline")
                    continue
            elif job.state == volume.UNVERIFIED:
                self.report.verified.append(job.dest)
                log.warning("fetch.unverified_offline", dest=job.dest,
                            message="present with the catalogue's size but never verified; trusted because "
                                    "HF_HUB_OFFLINE is set (it is hashed at the next online start)")
                continue
            size = human(job.size_hint) if job.size_hint else "size unknown"
            missing.append(Problem(job.dest, f"{job.state.replace('_', ' ')} ({job.download.source}, {size}, "
                                             f"for {', '.join(job.download.features) or 'the catalogue'})",
                                   f"unset HF_HUB_OFFLINE, or put the file at {self.models_dir / job.dest}"))
        for problem in missing:
            self.report.failed[problem.where] = f"{problem.what}; {problem.fix}"
        if missing:
            self._finish()
            raise FetchError(missing, f"HF_HUB_OFFLINE is set and {len(missing)} file"
                                      f"{'s are' if len(missing) != 1 else ' is'} missing under {self.models_dir}",
                             report=self.report)

    # -- phase 2: expand snapshots, resolve files ----------------------------------------------------------------------

    def token(self, name: str) -> str:
        if not name:
            return ""
        for variable in declared_variables():
            if variable["env"] == name:
                return str(getattr(self.settings, variable["field"]) or "")
        value = os.environ.get(name, "")  # a catalogue may name its own variable
        logs.register_secret(value)
        return value

    def resolve_all(self, todo: list[Job]) -> list[Job]:
        jobs: list[Job] = []
        snapshots = [j for j in todo if j.kind == "snapshot"]
        jobs += [j for j in todo if j.kind != "snapshot"]
        _parallel(snapshots, self._expand, 8, self.halt, self.stop, None)
        for snap in self.snapshots.values():
            jobs += snap.jobs
        _parallel(jobs, self._resolve, 8, self.halt, self.stop, None)
        return [j for j in jobs if j.remote is not None]

    def _expand(self, job: Job) -> None:
        from .resolve import list_snapshot

        d = job.download
        try:
            commit, files = self._retrying(lambda: list_snapshot(
                endpoint=self.settings.hf_endpoint, repo=d.repo, revision=d.revision, allow=d.allow,
                token=self.token(d.auth_env), timeout=self.settings.download_stall_timeout, features=d.features),
                f"list {d.repo}")
        except Interrupted:
            return
        except FetchFailure as exc:
            self._fail(job.dest, exc)
            return
        snap = _Snapshot(download=d, commit=commit, files=[(f.path, f.size) for f in files],
                         existed=job.state != volume.MISSING)
        for f in files:
            dest = f"{d.dest}/{f.path}"
            if self._member_ok(dest, f.size, f.sha256, f.etag):
                continue
            target = self.models_dir / dest
            state = volume.MISSING if not target.exists() else volume.WRONG_SIZE
            snap.jobs.append(Job(download=d, dest=dest, kind="file", path=f.path, revision=commit, size_hint=f.size,
                                 pin_sha256=f.sha256, git_sha1="" if f.sha256 else f.etag,
                                 source_id=f"{d.repo}@{d.revision}:{f.path}", state=state, snapshot=d.dest,
                                 rel=f.path))
        with self.lock:
            self.snapshots[d.dest] = snap
        log.info("fetch.resolve", dest=d.dest, source=d.source, commit=commit, files=len(files),
                 to_fetch=len(snap.jobs), size=sum(f.size for f in files))

    def _member_ok(self, dest: str, size: int, sha256: str, etag: str) -> bool:
        marker = volume.read_marker(self.models_dir, dest)
        if marker is None:
            return False
        try:
            stat = (self.models_dir / dest).stat()
        except OSError:
            return False
        if (stat.st_size, stat.st_mtime_ns) != (marker.size, marker.mtime_ns) or marker.size != size:
            return False
        return marker.sha256 == sha256 if sha256 else marker.etag == etag

    def _resolve(self, job: Job) -> None:
        from .resolve import resolve_hub_file, resolve_url

        d = job.download
        token = self.token(d.auth_env)
        if job.kind == "url":
            assert self.run is not None
            client = self.run.client
            fn = lambda: resolve_url(client, d.url, token)  # noqa: E731
        else:
            fn = lambda: resolve_hub_file(endpoint=self.settings.hf_endpoint, repo=d.repo, path=job.path,  # noqa: E731
                                          revision=job.revision, token=token,
                                          timeout=self.settings.download_stall_timeout, features=d.features)
        try:
            remote = self._retrying(fn, f"resolve {job.dest}")
            if job.pin_sha256 and remote.sha256 and job.pin_sha256 != remote.sha256:
                what = "the catalogue pins" if not job.snapshot else "the file list says"
                raise Permanent(f"{what} sha256 {job.pin_sha256} but the server has {remote.sha256} for "
                                f"{d.source}@{job.revision}", "sha256_pin", access=True,
                                fix="update `sha256` in the catalogue, or pin `revision` to the commit it was taken from")
        except Interrupted:
            return
        except FetchFailure as exc:
            self._fail(job.dest if not job.snapshot else job.snapshot, exc, member=job.rel)
            return
        if job.size_hint and remote.size is not None and remote.size != job.size_hint and not job.snapshot:
            log.info("fetch.size_differs", dest=job.dest, catalogue=job.size_hint, server=remote.size)
        job.remote = remote
        log.info("fetch.resolve", dest=job.dest, size=remote.size, sha256=remote.sha256 or None,
                 commit=remote.commit or None, ranges=remote.ranges)

    def _retrying(self, fn: Callable[[], Any], what: str) -> Any:
        """Metadata calls: retried like the transfers (backoff with jitter, Retry-After, logged causes)."""
        import random

        from tenacity import RetryCallState, Retrying, retry_if_exception_type

        t = self.tuning
        retries = min(self.settings.download_retries, 2) if self.dry_run else self.settings.download_retries

        def stop(rs: RetryCallState) -> bool:
            return self.halt.is_set() or rs.attempt_number > retries  # a dry run answers quickly, even offline

        def wait(rs: RetryCallState) -> float:
            exc = rs.outcome.exception() if rs.outcome else None
            server = getattr(exc, "retry_after", None)
            if server is not None:
                return min(server, t.retry_after_max)
            return min(t.backoff_initial * 2 ** (rs.attempt_number - 1), t.backoff_max) * random.uniform(0.5, 1.0)

        def before_sleep(rs: RetryCallState) -> None:
            exc = rs.outcome.exception() if rs.outcome else None
            log.warning("fetch.retry", what=what, cause=getattr(exc, "cause", type(exc).__name__),
                        attempt=rs.attempt_number, wait=round(rs.next_action.sleep, 2) if rs.next_action else None,
                        error=str(exc))

        for attempt in Retrying(retry=retry_if_exception_type(Transient), stop=stop, wait=wait,
                                sleep=lambda s: self.halt.wait(s), before_sleep=before_sleep, reraise=True):
            with attempt:
                if self.halt.is_set():
                    raise Interrupted(f"{what}: stopped")
                return fn()
        raise AssertionError("unreachable")

    # -- dry run -------------------------------------------------------------------------------------------------------

    def plan_only(self, todo: list[Job], jobs: list[Job] | None) -> None:
        """List what would be fetched: exact sizes if `jobs` were resolved, else the catalogue's estimates."""
        planned: list[PlannedFile] = []
        if jobs is None:
            for job in todo:
                planned.append(PlannedFile(job.dest, job.download.source, job.size_hint or None, False, job.state,
                                           job.download.features, "offline" if self.settings.hf_hub_offline else ""))
        else:
            by_snapshot: dict[str, list[Job]] = {}
            for job in jobs:
                if job.snapshot:
                    by_snapshot.setdefault(job.snapshot, []).append(job)
                    continue
                planned.append(PlannedFile(job.dest, job.download.source, self._needed(job),
                                           job.remote is not None and job.remote.size is not None, job.state,
                                           job.download.features))
            for dest, members in by_snapshot.items():
                snap = self.snapshots[dest]
                planned.append(PlannedFile(dest, snap.download.source, sum(self._needed(j) or 0 for j in members),
                                           True, "incomplete" if snap.existed else "missing",
                                           snap.download.features, f"{len(members)} of {len(snap.files)} files"))
            for dest, snap in self.snapshots.items():
                if not snap.jobs and dest not in self.report.failed:
                    self.report.verified.append(dest)
            listed = {p.dest for p in planned} | {j.snapshot for j in jobs if j.snapshot}
            for job in todo:  # could not be resolved: the catalogue's estimate, and the reason below the list
                if job.dest not in listed and job.dest not in self.report.verified:
                    planned.append(PlannedFile(job.dest, job.download.source, job.size_hint or None, False, job.state,
                                               job.download.features, "not resolved, see the problem below"))
        self.report.planned = planned
        self.report.bytes_planned = sum(p.size or 0 for p in planned)
        for p in planned:
            log.info("fetch.dry_run", dest=p.dest, source=p.source, size=p.size, exact=p.exact, state=p.state)

    def _needed(self, job: Job) -> int | None:
        size = job.remote.size if job.remote and job.remote.size is not None else (job.size_hint or None)
        if size is None:
            return None
        return max(size - Partial(self.models_dir, job.dest).bytes_done(), 0)

    # -- phase 3: disk and downloads -------------------------------------------------------------------------------------

    def check_disk(self, jobs: list[Job]) -> None:
        need = sum(self._needed(j) or 0 for j in jobs)
        free = free_bytes(self.models_dir)
        reserve = int(self.settings.disk_reserve_gb * GB)
        log.info("fetch.disk", need=need, free=free, reserve=reserve, path=str(self.models_dir))
        if need > free - reserve:
            short = need - (free - reserve)
            problem = Problem(str(self.models_dir), f"{human(need)} to download but {human(free)} free and "
                                                    f"DISK_RESERVE_GB={self.settings.disk_reserve_gb:g} kept free",
                              f"free {human(short)} ({short} bytes) more, use a larger volume, or disable a feature")
            for job in jobs:
                self.report.failed[job.snapshot or job.dest] = "not enough disk space"
            self._finish()
            raise FetchError([problem], "not enough disk space", report=self.report)

    def download_all(self, jobs: list[Job]) -> None:
        assert self.run is not None
        for job in jobs:
            size = job.remote.size if job.remote else None
            self.run.progress.track(job.dest, size, Partial(self.models_dir, job.dest).bytes_done())
        _parallel(jobs, self._download, self.settings.download_concurrency, self.halt, self.stop, self.run)

    def _download(self, job: Job) -> None:
        from .lock import Lock, lock_path
        from .transfer import Source, Transfer

        assert self.run is not None and job.remote is not None
        progress = self.run.progress
        lock = Lock(lock_path(self.models_dir, job.dest), heartbeat=self.tuning.lock_heartbeat,
                    stale_after=self.tuning.lock_stale_after)

        def on_wait(owner: Any) -> None:
            progress.state(job.dest, "waiting")
            log.info("fetch.waiting", dest=job.dest, owner=owner.describe() if owner else "unknown",
                     message="another process is downloading this file; waiting for it")

        done_elsewhere = lambda: self._is_done(job)  # noqa: E731
        try:
            if not lock.acquire(self.halt, on_wait=on_wait, check=done_elsewhere):
                if not self.halt.is_set():
                    self._verified(job, "by_other")
                return
            if lock.broken:
                log.warning("fetch.lock_broken", dest=job.dest, owner=lock.broken.describe(),
                            message="took over the lock of a process that is gone; resuming its partial file")
            if self._is_done(job):
                self._verified(job, "by_other")
                return
            partial = Partial(self.models_dir, job.dest)
            prepared = self._prepare(job, partial)
            if prepared == "verified":
                return
            source = Source(job.remote, lambda: self._retrying(lambda: self._resolve_again(job), f"resolve {job.dest}"))
            transfer = Transfer(self.run, dest=job.dest, partial=partial, source=source,
                                expect_sha256=job.pin_sha256, expect_git_sha1=self._git_sha1(job),
                                source_id=job.source_id, lock_lost=lock.lost,
                                adopted=prepared if not isinstance(prepared, str) else None)
            started = time.monotonic()
            result = transfer.execute()
            remote = source.current()[0]
            self._mark_file(job, result.sha256, remote.etag)
            seconds = time.monotonic() - started
            with self.lock:
                if job.snapshot:
                    self.snapshots[job.snapshot].touched = True
                else:
                    self.report.downloaded.append(job.dest)
            progress.state(job.dest, "done")
            log.info("fetch.done", dest=job.dest, size=result.size, fetched=result.fetched, sha256=result.sha256,
                     seconds=round(seconds, 2), mb_per_s=round(result.fetched / max(seconds, 1e-6) / 1e6, 1))
        except DiskFull as exc:
            with self.lock:
                self.disk_full = self.disk_full or exc
                self.report.failed[job.snapshot or job.dest] = "disk full; the partial file is kept for the next start"
            self.halt.set()
            self.run.sockets.shutdown_all()
            progress.state(job.dest, "failed")
        except Interrupted:
            progress.state(job.dest, "queued")
        except FetchFailure as exc:
            progress.state(job.dest, "failed")
            self._fail(job.snapshot or job.dest, exc, member=job.rel)
        except OSError as exc:  # the volume itself: permissions, I/O errors, a read-only mount
            progress.state(job.dest, "failed")
            self._fail(job.snapshot or job.dest, FetchFailure(f"{job.dest}: {exc}", "os_error"), member=job.rel)
        finally:
            lock.release()

    def _resolve_again(self, job: Job) -> "Remote":
        from .resolve import resolve_hub_file, resolve_url

        d = job.download
        token = self.token(d.auth_env)
        if job.kind == "url":
            assert self.run is not None
            return resolve_url(self.run.client, d.url, token)
        return resolve_hub_file(endpoint=self.settings.hf_endpoint, repo=d.repo, path=job.path, revision=job.revision,
                                token=token, timeout=self.settings.download_stall_timeout, features=d.features)

    def _git_sha1(self, job: Job) -> str:
        """The Hub's ETag of a file outside LFS is its git blob id: a content check where no sha256 exists."""
        if job.git_sha1:
            return job.git_sha1
        etag = job.remote.etag if job.remote else ""
        if job.kind == "file" and len(etag) == 40 and all(c in "0123456789abcdef" for c in etag):
            return etag
        return ""

    def _is_done(self, job: Job) -> bool:
        """Did another process finish this file while we waited (a fresh marker for this very version)?"""
        marker = volume.read_marker(self.models_dir, job.dest)
        if marker is None or marker.source != job.source_id:
            return False
        try:
            stat = (self.models_dir / job.dest).stat()
        except OSError:
            return False
        if (stat.st_size, stat.st_mtime_ns) != (marker.size, marker.mtime_ns):
            return False
        remote = job.remote
        if remote is not None and remote.size is not None and remote.size != marker.size:
            return False
        wanted = job.pin_sha256 or (remote.sha256 if remote else "")
        return not wanted or marker.sha256 == wanted

    def _prepare(self, job: Job, partial: Partial) -> Any:
        """A file already at the destination without a valid marker: adopt it if its bytes are right, reuse it as
        the start of the download if it is a truncated copy, otherwise remove it. Returns "verified", "download" or
        the adopted RangeSet."""
        target = self.models_dir / job.dest
        remote = job.remote
        assert remote is not None
        try:
            found = target.stat().st_size
        except FileNotFoundError:
            return "download"
        if target.is_dir():
            raise Permanent(f"{target} is a folder, where a file should go", "in_the_way", fix="remove it")
        volume.remove_marker(self.models_dir, job.dest)
        expected_sha = job.pin_sha256 or remote.sha256
        git = "" if expected_sha else self._git_sha1(job)
        if job.known_bad:
            reason = "bytes differ from the marker (--verify)"
        elif remote.size is not None and found == remote.size:
            self.run.progress.state(job.dest, "hashing")  # type: ignore[union-attr]
            digests = hash_file(target, git=bool(git), stop=self.halt)
            if (expected_sha and digests.sha256 == expected_sha) or (git and digests.git_sha1 == git) or \
                    (not expected_sha and not git):
                self._mark_file(job, digests.sha256, remote.etag)
                self._verified(job, "hashed" if expected_sha or git else "size_only")
                return "verified"
            reason = "same size, other bytes"
        elif remote.size is not None and found < remote.size and (expected_sha or git) and remote.ranges \
                and partial.bytes_done() < found:
            partial.discard()
            adopted = partial.adopt({**remote.identity(), "source": job.source_id}, found)
            self._repaired(job, "truncated: resuming from its last byte", found, remote.size)
            return adopted
        else:
            reason = "wrong size"
        self._repaired(job, reason, found, remote.size)
        target.unlink()
        return "download"

    def _repaired(self, job: Job, reason: str, found: int, expected: int | None) -> None:
        log.warning("fetch.repaired", dest=job.dest, reason=reason, size_found=found, size_expected=expected)
        with self.lock:
            name = job.snapshot or job.dest
            if name not in self.report.repaired:
                self.report.repaired.append(name)
            if job.snapshot:
                self.snapshots[job.snapshot].touched = True

    def _verified(self, job: Job, how: str) -> None:
        log.info("fetch.verified", dest=job.dest, how=how)
        if self.run:
            self.run.progress.state(job.dest, "done")
        if not job.snapshot:
            with self.lock:
                self.report.verified.append(job.dest)

    def _mark_file(self, job: Job, sha256: str, etag: str) -> None:
        volume.write_marker(self.models_dir, job.dest, volume.file_marker(
            self.models_dir, job.dest, source=job.source_id, sha256=sha256, etag=etag))

    def _fail(self, dest: str, exc: FetchFailure, member: str = "") -> None:
        message = f"{member}: {exc}" if member else str(exc)
        fix = getattr(exc, "fix", "")
        text = f"{message} ({fix})" if fix else message
        log.error("fetch.failed", dest=dest, cause=exc.cause, error=message, fix=fix or None)
        with self.lock:
            if dest in self.report.failed:
                return
            self.report.failed[dest] = text
            self.problems.append((Problem(dest, message, fix), bool(getattr(exc, "access", False))))

    # -- phase 4 -------------------------------------------------------------------------------------------------------

    def finish_snapshots(self) -> None:
        """A snapshot is verified when each of its files has a marker of the listed size."""
        for dest, snap in self.snapshots.items():
            if dest in self.report.failed:
                continue
            sizes = []
            for rel, size in snap.files:
                marker = volume.read_marker(self.models_dir, f"{dest}/{rel}")
                if marker is None or marker.size != size:
                    break
                sizes.append((rel, size))
            else:
                volume.write_marker(self.models_dir, dest, volume.Marker(
                    size=sum(s for _, s in sizes), mtime_ns=0, etag=snap.commit,
                    source=volume.identity(snap.download), files=tuple(sizes)))
                with self.lock:
                    (self.report.downloaded if snap.touched else self.report.verified).append(dest)
                log.info("fetch.verified", dest=dest, how="snapshot", files=len(sizes), commit=snap.commit)

    def _finish(self) -> None:
        self.report.seconds = round(time.monotonic() - self.started, 3)
        if self.run is not None:
            self.report.bytes_downloaded = self.run.progress.fetched()
        r = self.report
        log.info("fetch.summary", downloaded=len(r.downloaded), verified=len(r.verified), repaired=len(r.repaired),
                 failed=len(r.failed), bytes_downloaded=r.bytes_downloaded, seconds=r.seconds,
                 mb_per_s=round(r.bytes_downloaded / max(r.seconds, 1e-6) / 1e6, 1), interrupted=r.interrupted,
                 dry_run=r.dry_run, offline=r.offline, ok=r.ok)


def fetch_plan(plan: Plan, settings: Settings, *, stop: threading.Event | None = None, verify: bool = False,
               dry_run: bool = False, on_progress: Callable[[dict[str, Any]], None] | None = None,
               tuning: Tuning | None = None) -> FetchReport:
    """Bring every file of `plan` to MODELS_DIR, verified. Blocking; safe in a thread. When `stop` is set it returns
    within about a second with `interrupted=True`, partial files kept for the next start. Raises FetchError when the
    user must act (disk full, offline with files missing, gated or missing files); its `.report` says what got done."""
    for secret in settings.secrets():
        logs.register_secret(secret)
    fetch = _Fetch(plan, settings, stop or threading.Event(), verify or settings.verify_downloads,
                   dry_run or settings.dry_run, on_progress, tuning)
    todo = fetch.scan()
    if not todo:
        fetch._finish()  # warm boot: no network, no hashing
        return fetch.report
    if settings.hf_hub_offline:
        if fetch.dry_run:
            fetch.plan_only(todo, None)
            fetch._finish()
            return fetch.report
        fetch.offline(todo)
        fetch._finish()
        return fetch.report
    return _online(fetch, todo)


def _online(fetch: _Fetch, todo: list[Job]) -> FetchReport:
    from .net import make_client
    from .transfer import Run, Sockets

    settings = fetch.settings
    clean_hf_orphans(fetch.models_dir, {j.dest.split("/", 1)[0] for j in todo})
    connections = settings.download_connections * settings.download_concurrency
    progress = Progress(interval=fetch.tuning.progress_interval, on_progress=fetch.on_progress)
    with make_client(connections, settings.download_stall_timeout) as client:
        fetch.run = Run(client=client, halt=fetch.halt, progress=progress, sockets=Sockets(),
                        connections=settings.download_connections, retries=settings.download_retries,
                        deadline_s=settings.download_timeout, tuning=fetch.tuning)
        progress.start()  # on_progress ticks from here on, resolving included
        try:
            jobs = fetch.resolve_all(todo)
            if fetch.stop.is_set():
                fetch.report.interrupted = True
            elif fetch.dry_run:
                fetch.plan_only(todo, jobs)
            else:
                fetch.check_disk(jobs)
                fetch.download_all(jobs)
                fetch.finish_snapshots()
                if fetch.stop.is_set() and fetch.disk_full is None:
                    fetch.report.interrupted = True
        finally:
            progress.stop()
    fetch._finish()
    if fetch.report.interrupted:
        log.warning("fetch.interrupted", message="stopped; partial files are kept and resume at the next start")
    if fetch.disk_full is not None:
        raise _disk_full_error(fetch, jobs)
    # Access and catalogue problems need the user (a token, a licence, a fix in the catalogue): raised. Failures that
    # another start may overcome (retries ran out, bytes stayed corrupt, DOWNLOAD_TIMEOUT) stay in report.failed.
    access = [p for p, is_access in fetch.problems if is_access]
    if access and not fetch.dry_run:
        raise FetchError(access, f"{len(access)} file{'s' if len(access) != 1 else ''} cannot be downloaded "
                                 "without a change to the environment or the catalogue", report=fetch.report,
                         config=True)
    return fetch.report


def _disk_full_error(fetch: _Fetch, jobs: list[Job]) -> FetchError:
    remaining = sum(fetch._needed(j) or 0 for j in jobs if not fetch._is_done(j))
    free = free_bytes(fetch.models_dir)
    reserve = int(fetch.settings.disk_reserve_gb * GB)
    short = max(remaining + reserve - free, 0)
    where = fetch.disk_full.path if fetch.disk_full else str(fetch.models_dir)
    problem = Problem(str(fetch.models_dir), f"the disk filled up while writing {where}: {human(remaining)} still to "
                                             f"download, {human(free)} free, DISK_RESERVE_GB="
                                             f"{fetch.settings.disk_reserve_gb:g}",
                      f"free at least {human(short)} ({short} bytes) and start again: partial files are kept "
                      "(*.partial) and resume where they stopped")
    return FetchError([problem], "disk full", report=fetch.report)


def _parallel(items: Iterable[Job], fn: Callable[[Job], None], workers: int, halt: threading.Event,
              stop: threading.Event, run: "Run | None", grace: float = 1.0) -> None:
    """Run fn over items on `workers` daemon threads (daemon: a thread stuck in a slow call can never keep the
    process from exiting). Returns when all are done, or about `grace` seconds after `stop` is set."""
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

