"""One writer per destination, across processes and across pods that share a network volume.

A lock is a file, `<MODELS_DIR>/.supervisor/locks/<dest>.lock`, created with O_CREAT|O_EXCL (atomic on local file
systems and on NFSv3+, unlike flock, which some network file systems grant to everyone). It holds the owner's host,
pid, process start time and a random token; the owner touches it every HEARTBEAT seconds. Another process treats it
as stale when
- the owner is on this host and its process is gone (pid absent, or reused: other start time) -> at once;
- otherwise, its mtime has not changed for STALE_AFTER seconds *as measured by the waiter's own clock*, so clock
  skew between pods does not matter.
A stale lock is broken by renaming it aside (only one breaker can win the rename) and checking that what was moved
is the lock that was judged stale; if not, it is put back. The owner checks on each heartbeat that the lock is still
its own; if it was taken (it looked stale: a paused VM, say), it stops writing (`lost`).
"""

from __future__ import annotations

import json
import os
import socket
import threading
import time
import uuid
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import psutil

from ..plan import volume

LOCK_DIR = "locks"
HEARTBEAT = 5.0
STALE_AFTER = 60.0


def lock_path(models_dir: Path, dest: str) -> Path:
    return Path(models_dir) / volume.STATE_DIR / LOCK_DIR / f"{dest}.lock"


@dataclass(frozen=True)
class Owner:
    host: str
    pid: int
    started: float
    token: str

    def describe(self) -> str:
        return f"pid {self.pid} on {self.host}"


def _me() -> Owner:
    return Owner(host=socket.gethostname(), pid=os.getpid(), started=psutil.Process().create_time(),
                 token=uuid.uuid4().hex)


def _read(path: Path) -> tuple[Owner | None, int | None]:
    """(owner, mtime_ns) of a lock file; (None, None) if absent, (None, mtime) if unreadable (being written)."""
    try:
        mtime = path.stat().st_mtime_ns
    except FileNotFoundError:
        return None, None
    try:
        data = json.loads(path.read_text())
        return Owner(str(data["host"]), int(data["pid"]), float(data["started"]), str(data["token"])), mtime
    except (OSError, ValueError, KeyError, TypeError):
        return None, mtime


def _dead_here(owner: Owner) -> bool:
    """The owner ran on this host and is no longer running."""
    if owner.host != socket.gethostname():
        return False
    try:
        return abs(psutil.Process(owner.pid).create_time() - owner.started) > 1.0
    except (psutil.NoSuchProcess, psutil.ZombieProcess):
        return True
    except psutil.Error:
        return False


class Lock:
    def __init__(self, path: Path, *, heartbeat: float = HEARTBEAT, stale_after: float = STALE_AFTER):
        self.path = Path(path)
        self.heartbeat = heartbeat
        self.stale_after = stale_after
        self.me = _me()
        self.held = False
        self.lost = threading.Event()
        self._stop_beat = threading.Event()
        self._beat: threading.Thread | None = None
        self._seen: tuple[str | None, int | None] = (None, None)
        self._seen_since = 0.0
        self.broken: Owner | None = None  # the stale owner we took over from, for the log

    # -- taking -------------------------------------------------------------------------------------------------

    def try_acquire(self) -> bool:
        self.path.parent.mkdir(parents=True, exist_ok=True)
        try:
            fd = os.open(self.path, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o644)
        except FileExistsError:
            self._maybe_break()
            return False
        with os.fdopen(fd, "w") as handle:
            json.dump({"host": self.me.host, "pid": self.me.pid, "started": self.me.started,
                       "token": self.me.token, "since": time.time()}, handle)
        self.held = True
        self._stop_beat.clear()
        self._beat = threading.Thread(target=self._heartbeat, name=f"lock-{self.path.name}", daemon=True)
        self._beat.start()
        return True

    def acquire(self, stop: threading.Event, on_wait: Callable[[Owner | None], None] | None = None,
                poll: float = 0.25, check: Callable[[], bool] | None = None) -> bool:
        """Wait for the lock. Returns False if `stop` was set, or if `check()` says the wait is pointless (another
        process finished the file meanwhile)."""
        waited = False
        while not stop.is_set():
            if self.try_acquire():
                return True
            if not waited and on_wait:
                on_wait(self.owner())
            waited = True
            if check and check():
                return False
            stop.wait(poll)
        return False

    def owner(self) -> Owner | None:
        return _read(self.path)[0]

    def _maybe_break(self) -> None:
        owner, mtime = _read(self.path)
        if mtime is None:
            return  # gone meanwhile: the next try creates it
        now = time.monotonic()
        key = (owner.token if owner else None, mtime)
        if key != self._seen:
            self._seen, self._seen_since = key, now
        stale = (owner is not None and _dead_here(owner)) or now - self._seen_since > self.stale_after
        if not stale:
            return
        aside = self.path.with_name(f"{self.path.name}.stale.{self.me.token}")
        try:
            os.rename(self.path, aside)
        except FileNotFoundError:
            return  # someone else broke it first
        moved, _ = _read(aside)
        if (moved.token if moved else None) == (owner.token if owner else None):
            self.broken = owner
            aside.unlink(missing_ok=True)
            return
        # We moved a newer lock than the one judged stale: give it back (link fails if a third one exists).
        try:
            os.link(aside, self.path)
        except OSError:
            pass
        aside.unlink(missing_ok=True)

    # -- holding ------------------------------------------------------------------------------------------------

    def _heartbeat(self) -> None:
        while not self._stop_beat.wait(self.heartbeat):
            owner, _ = _read(self.path)
            if owner is None or owner.token != self.me.token:
                self.lost.set()
                return
            try:
                os.utime(self.path)
            except OSError:
                pass

    def still_mine(self) -> bool:
        owner, _ = _read(self.path)
        return owner is not None and owner.token == self.me.token and not self.lost.is_set()

    def release(self) -> None:
        if not self.held:
            return
        self._stop_beat.set()
        if self._beat:
            self._beat.join(timeout=2)
        if self.still_mine():
            self.path.unlink(missing_ok=True)
        self.held = False
