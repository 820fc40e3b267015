"""sha256 (and the git blob sha1 the Hub uses as ETag of small files), computed while the download runs.

Parts arrive out of order, but the file's start fills in first (parts are handed out in order), so a helper thread
hashes the longest complete prefix as it grows, reading back from the page cache. When the last byte lands only the
tail is left to hash. After a restart the hash starts again from byte 0 (hashlib state cannot be saved), reading the
resumed bytes from disk at disk speed.
"""

from __future__ import annotations

import hashlib
import os
import threading
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

from .errors import Interrupted

BLOCK = 4 << 20


@dataclass(frozen=True)
class Digests:
    sha256: str
    git_sha1: str = ""  # only when asked for


class _Hashes:
    def __init__(self, size: int, git: bool):
        self.sha256 = hashlib.sha256()
        self.git = hashlib.sha1(f"blob {size}\0".encode()) if git else None

    def update(self, block: bytes) -> None:
        self.sha256.update(block)
        if self.git is not None:
            self.git.update(block)

    def digests(self) -> Digests:
        return Digests(self.sha256.hexdigest(), self.git.hexdigest() if self.git else "")


class PrefixHasher:
    """Hashes bytes [0, prefix) of an open file as `advance(prefix)` reports them complete."""

    def __init__(self, fd: int, size: int, *, git: bool = False):
        self.fd = fd
        self.size = size
        self.hashes = _Hashes(size, git)
        self.hashed = 0
        self.target = 0
        self.error: BaseException | None = None
        self._cond = threading.Condition()
        self._cancelled = False
        self._thread = threading.Thread(target=self._run, name="fetch-hash", daemon=True)
        self._thread.start()

    def advance(self, prefix: int) -> None:
        with self._cond:
            if prefix > self.target:
                self.target = prefix
                self._cond.notify()

    def _run(self) -> None:
        try:
            while True:
                with self._cond:
                    while self.hashed >= self.target and not self._cancelled and self.hashed < self.size:
                        self._cond.wait()
                    if self._cancelled or self.hashed >= self.size:
                        self._cond.notify_all()
                        return
                    end = self.target
                while self.hashed < end:
                    block = os.pread(self.fd, min(BLOCK, end - self.hashed), self.hashed)
                    if not block:
                        raise OSError(f"short read at {self.hashed} while hashing")
                    self.hashes.update(block)
                    self.hashed += len(block)
                    if self._cancelled:
                        return
                with self._cond:
                    self._cond.notify_all()
        except BaseException as exc:  # reported by finish()
            self.error = exc
            with self._cond:
                self._cond.notify_all()

    def finish(self, stop: threading.Event | None = None) -> Digests:
        """Wait for the whole file to be hashed (call once every byte is written)."""
        self.advance(self.size)
        with self._cond:
            while self.hashed < self.size and self.error is None:
                if stop is not None and stop.is_set():
                    self.cancel()
                    raise Interrupted("stopped while hashing")
                self._cond.wait(0.2)
        self._thread.join(timeout=5)
        if self.error:
            raise self.error
        return self.hashes.digests()

    def cancel(self) -> None:
        with self._cond:
            self._cancelled = True
            self._cond.notify_all()


def hash_file(path: Path, *, git: bool = False, stop: threading.Event | None = None,
              on_bytes: Callable[[int], None] | None = None) -> Digests:
    """Hash a whole file (verify mode, adopting a file found in place)."""
    size = os.path.getsize(path)
    hashes = _Hashes(size, git)
    with open(path, "rb", buffering=0) as handle:
        while block := handle.read(BLOCK):
            if stop is not None and stop.is_set():
                raise Interrupted(f"stopped while hashing {path}")
            hashes.update(block)
            if on_bytes:
                on_bytes(len(block))
    return hashes.digests()
