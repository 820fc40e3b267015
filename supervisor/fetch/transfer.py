"""One file's bytes: parallel ranged GETs into `<dest>.partial`, retried, checkpointed, hashed, then placed.

Each connection loops: take a part, GET it with `Range`, write it with pwrite at its offset. A failed GET is retried
by tenacity (exponential backoff with jitter, `Retry-After` honoured, every retry logged with its cause); a retry
after progress is free, a retry without progress spends one of the file's DOWNLOAD_RETRIES. A CDN 403 (expired
signed URL) resolves the file again first. The read timeout is the stall watchdog. When `halt` is set, the sockets
being read are shut down, so a blocked read returns at once and the partial stays for the next start.
"""

from __future__ import annotations

import math
import os
import random
import threading
import time
from typing import Any
from urllib.parse import urljoin

import httpx
from tenacity import RetryCallState, Retrying

from ._log import log
from .errors import (Corrupt, Deadline, DiskFull, Expired, FetchFailure, Interrupted, LockLost, Permanent,
                     SourceChanged, Transient, is_disk_full)
from .hashing import Digests, PrefixHasher, hash_file
from .net import origin, status_failure, transport_failure
from .ranges import RangeSet
from .resolve import Remote
from .schedule import Part, Schedule
from .session import Budget, Result, Run, Sockets, Source, VersionChanged
from .store import Checkpoint, Partial

__all__ = ["Result", "Run", "Sockets", "Source", "Transfer"]


class RangeIgnored(FetchFailure):
    """The server answered a Range request with the whole file."""


class Transfer:
    def __init__(self, run: Run, *, dest: str, partial: Partial, source: Source, expect_sha256: str = "",
                 expect_git_sha1: str = "", source_id: str = "", lock_lost: threading.Event | None = None,
                 adopted: RangeSet | None = None):
        self.run = run
        self.dest = dest
        self.partial = partial
        self.source = source
        self.expect_sha256 = expect_sha256
        self.expect_git_sha1 = expect_git_sha1
        self.source_id = source_id
        self.lock_lost = lock_lost or threading.Event()
        self.adopted = adopted
        self.budget = Budget(run.retries)
        self.started = time.monotonic()
        self.abort = threading.Event()  # this file is failing: its other connections stop too
        self.ranged = True
        self.fetched = 0
        self._fetched_lock = threading.Lock()

    # -- the file ------------------------------------------------------------------------------------------------

    def execute(self) -> Result:
        restarts = 0
        while True:
            try:
                return self._once()
            except (Corrupt, VersionChanged, RangeIgnored) as exc:
                restarts += 1
                if isinstance(exc, RangeIgnored):
                    self.ranged = False
                if restarts > self.run.tuning.max_restarts or (isinstance(exc, Corrupt) and restarts > 1):
                    raise
                cause = {Corrupt: "corrupt", VersionChanged: "version_changed", RangeIgnored: "range_ignored"}[
                    type(exc)]
                log.warning("fetch.retry", dest=self.dest, cause=cause, attempt=restarts, wait=0, offset=0,
                            error=str(exc), restart=True)
                self.partial.discard()
                self.adopted = None
                self.abort.clear()

    def _identity(self, remote: Remote) -> dict[str, Any]:
        return {**remote.identity(), "source": self.source_id}

    def _once(self) -> Result:
        remote, _ = self.source.current()
        size = remote.size
        identity = self._identity(remote)
        if size is None or not self.ranged or not remote.ranges:
            self.partial.discard()  # without ranges nothing can be resumed
            done = RangeSet()
            self.ranged = False
        else:
            done = self.adopted if self.adopted is not None else self.partial.load(identity)
            if done.total:
                log.info("fetch.resume", dest=self.dest, offset=done.prefix(), bytes_done=done.total, size=size,
                         adopted=self.adopted is not None)
        fd = self.partial.open(size)
        placed = False
        hasher: PrefixHasher | None = None
        span = size if size is not None else 1 << 62
        schedule = Schedule(done, span, self._part_size(size) if self.ranged else span, self.run.tuning.min_steal,
                            connections=self._connections(size, done), min_part=self.run.tuning.min_part)
        try:
            if size is not None:
                git = bool(self.expect_git_sha1) and not (self.expect_sha256 or remote.sha256)
                hasher = PrefixHasher(fd, size, git=git)
                hasher.advance(done.prefix())
            self.run.progress.state(self.dest, "downloading", size=size, done=done.total)
            log.info("fetch.start", dest=self.dest, size=size, resumed_bytes=done.total,
                     connections=self._connections(size, done), ranged=self.ranged)
            checkpoint = Checkpoint(self.partial, identity, schedule, self.run.tuning)
            self._run_connections(fd, schedule, hasher, checkpoint, size)
            if size is None:
                size = schedule.done.total
                os.ftruncate(fd, size)
            elif not schedule.complete():
                raise Transient(f"{self.dest}: parts missing after every connection ended", "incomplete")
            self.run.progress.state(self.dest, "hashing")
            digests = hasher.finish(self.run.halt) if hasher else hash_file(self.partial.path, stop=self.run.halt)
            self._verify(digests, remote, size)
            if not self.lock_lost.is_set():
                self.partial.place(fd)
                placed = True
            else:
                raise LockLost(f"{self.dest}: another process took over the lock; leaving the file to it")
            return Result(size=size, sha256=digests.sha256, git_sha1=digests.git_sha1, fetched=self.fetched)
        except OSError as exc:
            if is_disk_full(exc):
                raise DiskFull(f"no space left while writing {self.partial.path}", str(self.partial.path)) from None
            raise
        finally:
            if hasher:
                hasher.cancel()
            if not placed:
                try:
                    os.close(fd)
                except OSError:
                    pass
                if self.partial.path.exists() and size is not None and self.ranged:
                    try:
                        self.partial.save(identity, schedule.snapshot())
                    except OSError:
                        pass  # disk full: the previous record still under-states the partial, which is safe

    def _verify(self, digests: Digests, remote: Remote, size: int) -> None:
        actual_size = os.path.getsize(self.partial.path)
        if actual_size != size:
            self.partial.discard()
            raise Corrupt(f"{self.dest}: {actual_size} bytes written, {size} expected")
        wanted = self.expect_sha256 or remote.sha256
        if wanted and digests.sha256 != wanted:
            self.partial.discard()
            raise Corrupt(f"{self.dest}: sha256 {digests.sha256} does not match the expected {wanted}")
        if not wanted and self.expect_git_sha1 and digests.git_sha1 and digests.git_sha1 != self.expect_git_sha1:
            self.partial.discard()
            raise Corrupt(f"{self.dest}: git blob id {digests.git_sha1} does not match the Hub's {self.expect_git_sha1}")

    def _part_size(self, size: int | None) -> int:
        return self.run.tuning.max_part if size is not None else 1 << 62

    def _connections(self, size: int | None, done: RangeSet) -> int:
        if size is None or not self.ranged or size < self.run.tuning.single_below:
            return 1
        missing = size - done.total
        return max(1, min(self.run.connections, math.ceil(missing / self.run.tuning.min_part)))

    def _run_connections(self, fd: int, schedule: Schedule, hasher: PrefixHasher | None, checkpoint: "Checkpoint",
                         size: int | None) -> None:
        errors: list[BaseException] = []
        count = self._connections(size, schedule.done)

        def connection() -> None:
            try:
                while not self.abort.is_set():
                    part = schedule.next()
                    if part is None:
                        return
                    try:
                        self._fetch_part(fd, part, schedule, hasher, checkpoint, size)
                    finally:
                        schedule.release(part)
            except BaseException as exc:
                errors.append(exc)
                self.abort.set()

        threads = [threading.Thread(target=connection, name=f"fetch-conn-{i}", daemon=True) for i in range(count)]
        for thread in threads:
            thread.start()
        flushed = threading.Event()
        flusher = threading.Thread(target=self._flush, args=(fd, flushed), name="fetch-flush", daemon=True)
        flusher.start()
        for thread in threads:
            while thread.is_alive():
                thread.join(0.1)
                if self.run.halt.is_set():
                    self.abort.set()
        flushed.set()
        flusher.join()
        checkpoint.save(force=True)
        worst = _worst(errors) if errors else None
        if self.run.halt.is_set() and not isinstance(worst, DiskFull):
            raise Interrupted(f"{self.dest}: stopped")
        if worst is not None:
            raise worst

    def _flush(self, fd: int, done: threading.Event) -> None:
        """Write dirty pages out while downloading, so the fsync before the final rename has only the last second to
        flush (measured: a 2 GB file otherwise waits ~2 s for it) and the page cache never holds gigabytes of dirty
        data. It does not make the progress record durable; see store.py."""
        seconds = self.run.tuning.flush_seconds
        if seconds <= 0:
            return
        while not done.wait(seconds):
            try:
                os.fdatasync(fd)
            except OSError:
                return  # ENOSPC and friends surface in the writers; fsync errors again at placement

    # -- one part, with retries -----------------------------------------------------------------------------------

    def _fetch_part(self, fd: int, part: Part, schedule: Schedule, hasher: PrefixHasher | None,
                    checkpoint: "Checkpoint", size: int | None) -> None:
        # The accounting happens in `retry`, which tenacity always calls first; `stop` and `wait` only read it, so
        # the order tenacity calls them in (wait before stop since 8.3, stop before wait in 8.2) does not matter.
        state: dict[str, Any] = {"misses": 0, "refresh": None, "spent": True}

        def retry(rs: RetryCallState) -> bool:
            exc = rs.outcome.exception() if rs.outcome else None
            if not isinstance(exc, Transient):
                return False
            if getattr(exc, "progressed", False):
                state["misses"], state["spent"] = 0, True  # a retry after progress is free
            else:
                state["misses"] += 1
                state["spent"] = self.budget.spend()
            return True

        def stop(rs: RetryCallState) -> bool:
            if self.run.halt.is_set() or self.abort.is_set() or self._past_deadline():
                return True
            return not state["spent"]

        def wait(rs: RetryCallState) -> float:
            exc = rs.outcome.exception() if rs.outcome else None
            t = self.run.tuning
            server = getattr(exc, "retry_after", None)
            if server is not None:
                return min(server, t.retry_after_max)
            if getattr(exc, "progressed", False):
                return min(0.1, t.backoff_initial)
            base = min(t.backoff_initial * 2 ** max(state["misses"] - 1, 0), t.backoff_max)
            return base * random.uniform(0.5, 1.0)  # jitter: connections do not retry in lockstep

        def before_sleep(rs: RetryCallState) -> None:
            exc = rs.outcome.exception() if rs.outcome else None
            log.warning("fetch.retry", dest=self.dest, cause=getattr(exc, "cause", type(exc).__name__),
                        attempt=rs.attempt_number, wait=round(rs.next_action.sleep, 2) if rs.next_action else None,
                        offset=part.pos, error=str(exc), retries_left=self.budget.left)

        retrying = Retrying(retry=retry, stop=stop, wait=wait,
                            sleep=lambda s: self.run.halt.wait(s), before_sleep=before_sleep, reraise=True)
        for attempt in retrying:
            with attempt:
                if state["refresh"] is not None:
                    generation, state["refresh"] = state["refresh"], None
                    self.source.refresh(generation)
                try:
                    self._stream(fd, part, schedule, hasher, checkpoint, size)
                except (Expired, SourceChanged):
                    state["refresh"] = self.source.current()[1]  # ask the Hub again before the next try
                    raise

    def _check(self) -> None:
        if self.run.halt.is_set():
            raise Interrupted(f"{self.dest}: stopped")
        if self.abort.is_set():
            raise Interrupted(f"{self.dest}: another connection failed")
        if self.lock_lost.is_set():
            raise LockLost(f"{self.dest}: another process took over the lock")
        if self._past_deadline():
            raise Deadline(f"{self.dest}: not finished within DOWNLOAD_TIMEOUT={self.run.deadline_s:g} s; the partial "
                           "is kept and resumes at the next start")

    def _past_deadline(self) -> bool:
        return bool(self.run.deadline_s) and time.monotonic() - self.started > self.run.deadline_s

    def _stream(self, fd: int, part: Part, schedule: Schedule, hasher: PrefixHasher | None,
                checkpoint: "Checkpoint", size: int | None) -> None:
        self._check()
        if part.pos >= part.end:
            return
        remote, _ = self.source.current()
        start = part.pos
        url = remote.url
        try:
            for _ in range(6):
                headers = remote.headers_for(url)
                if self.ranged:
                    headers["Range"] = f"bytes={part.pos}-{part.end - 1}"
                with self.run.client.stream("GET", url, headers=headers) as response:
                    if response.is_redirect and "location" in response.headers:
                        url = urljoin(url, response.headers["location"])
                        continue
                    self._check_answer(response, part, remote, url, size)
                    sock = self.run.sockets.add(response)
                    try:
                        self._read(response, fd, part, schedule, hasher, checkpoint)
                    finally:
                        self.run.sockets.remove(sock)
                    break
            else:
                raise Permanent(f"{self.dest}: too many redirects", "redirects")
            if size is not None and part.pos < part.end:
                raise Transient(f"{self.dest}: the body ended at {part.pos}, before {part.end}", "short_read")
            if size is None:
                part.end = part.pos  # unknown length: the end of the body is the end of the file
        except httpx.TransportError as exc:
            if self.run.halt.is_set():
                raise Interrupted(f"{self.dest}: stopped") from None
            failure = transport_failure(exc, f"GET {self.dest}")
            failure.progressed = part.pos > start  # type: ignore[attr-defined]
            raise failure from None
        except Transient as exc:
            exc.progressed = part.pos > start  # type: ignore[attr-defined]
            raise

    def _check_answer(self, response: httpx.Response, part: Part, remote: Remote, url: str,
                      size: int | None) -> None:
        status = response.status_code
        if status == 206 and self.ranged:
            first, _, total = response.headers.get("content-range", "").removeprefix("bytes ").partition("/")
            begin = first.partition("-")[0]
            if not begin.isdigit() or int(begin) != part.pos:
                raise SourceChanged(f"{self.dest}: asked for bytes from {part.pos}, got {first or 'no range'}",
                                    "bad_range")
            if total.isdigit() and size is not None and int(total) != size:
                raise SourceChanged(f"{self.dest}: the server has {total} bytes, the Hub said {size}", "size_mismatch")
            return
        if status == 200:
            length = response.headers.get("content-length")
            if self.ranged and (part.pos != 0 or (size is not None and part.end != size)):
                raise RangeIgnored(f"{self.dest}: the server ignored Range (answered 200 with the whole file)",
                                   "range_ignored")
            if size is not None and length and length.isdigit() and int(length) != size:
                raise SourceChanged(f"{self.dest}: the server has {length} bytes, the Hub said {size}",
                                    "size_mismatch")
            return
        raise status_failure(response, f"GET {self.dest}", auth_origin=origin(url) == remote.auth_origin,
                             what=self.dest)

    def _read(self, response: httpx.Response, fd: int, part: Part, schedule: Schedule,
              hasher: PrefixHasher | None, checkpoint: "Checkpoint") -> None:
        buffer = bytearray()
        limit = self.run.tuning.write_buffer
        skip = 0 if self.ranged else part.pos  # no Range: the body starts at 0 again, drop what we have
        try:
            for chunk in response.iter_raw():
                if skip:
                    cut = min(skip, len(chunk))
                    chunk, skip = chunk[cut:], skip - cut
                buffer += chunk
                if len(buffer) >= limit or self.run.halt.is_set() or self.abort.is_set():
                    finished = self._write(fd, part, schedule, hasher, checkpoint, buffer)
                    buffer = bytearray()
                    if finished:
                        return
                    self._check()
        finally:
            if buffer:
                self._write(fd, part, schedule, hasher, checkpoint, buffer)  # received bytes are good bytes

    def _write(self, fd: int, part: Part, schedule: Schedule, hasher: PrefixHasher | None,
               checkpoint: "Checkpoint", data: bytearray) -> bool:
        """Write what still belongs to this part; True when the part is complete."""
        if self.lock_lost.is_set():
            raise LockLost(f"{self.dest}: another process took over the lock")
        n = schedule.reserve(part, len(data))
        view = memoryview(data)[:n]
        offset = part.pos
        try:
            while view:
                written = os.pwrite(fd, view, offset)
                view = view[written:]
                offset += written
        except OSError as exc:
            if is_disk_full(exc):
                raise DiskFull(f"no space left while writing {self.partial.path}", str(self.partial.path)) from None
            raise
        prefix = schedule.advance(part, n)
        if hasher:
            hasher.advance(prefix)
        with self._fetched_lock:
            self.fetched += n
        self.run.progress.add(self.dest, n)
        checkpoint.note(n)
        return part.pos >= part.end


_SEVERITY = (DiskFull, LockLost, Permanent, Corrupt, VersionChanged, RangeIgnored, Deadline, Transient, Interrupted)


def _worst(errors: list[BaseException]) -> BaseException:
    """Of the errors the connections ended with, the one that decides what happens to the file."""
    for kind in _SEVERITY:
        for exc in errors:
            if isinstance(exc, kind):
                return exc
    for exc in errors:
        if isinstance(exc, OSError) and is_disk_full(exc):
            return DiskFull(f"no space left on device: {exc}")
    return errors[0]
