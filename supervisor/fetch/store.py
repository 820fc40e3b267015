"""Bytes on the volume: the partial file beside the destination, its progress record, the final atomic placement.

`<dest>.partial` lives beside the destination (same file system, so the final rename is atomic) and is never
visible under the final name. Its record, `<MODELS_DIR>/.supervisor/partial/<dest>.json`, lists the byte ranges
already written and the upstream version (size, sha256, etag) they belong to: a partial of another version is
discarded, never mixed. The record is replaced atomically and only ever under-states what the file holds (data is
written before the record that mentions it), so a SIGKILL at any moment loses at most the bytes written since the
last record (see CHECKPOINT_*). It is not fsynced: after a power cut, a resumed file whose hash fails is fetched
again from scratch.
"""

from __future__ import annotations

import json
import os
import threading
import time
from pathlib import Path
from typing import Any

from ..plan import volume
from .errors import is_disk_full
from .ranges import RangeSet
from .schedule import Schedule
from .tuning import Tuning

PARTIAL_SUFFIX = ".partial"
PARTIAL_DIR = "partial"


def partial_path(target: Path) -> Path:
    return target.with_name(target.name + PARTIAL_SUFFIX)


def record_path(models_dir: Path, dest: str) -> Path:
    return Path(models_dir) / volume.STATE_DIR / PARTIAL_DIR / f"{dest}.json"


class Partial:
    """One destination's partial file and progress record."""

    def __init__(self, models_dir: Path, dest: str):
        self.models_dir = Path(models_dir)
        self.dest = dest
        self.target = self.models_dir / dest
        self.path = partial_path(self.target)
        self.record = record_path(self.models_dir, dest)

    def load(self, identity: dict[str, Any]) -> RangeSet:
        """The ranges already good for this upstream version; anything else is thrown away."""
        try:
            data = json.loads(self.record.read_text())
            stat = self.path.stat()
        except (OSError, ValueError):
            self.discard()
            return RangeSet()
        if data.get("identity") != identity or (identity.get("size") is not None and stat.st_size != identity["size"]):
            self.discard()
            return RangeSet()
        try:
            done = RangeSet((int(a), int(b)) for a, b in data.get("done", []))
        except (TypeError, ValueError):
            self.discard()
            return RangeSet()
        return done

    def bytes_done(self) -> int:
        """How much a partial holds according to its record (for the disk check), without judging its version."""
        try:
            data = json.loads(self.record.read_text())
            return RangeSet((int(a), int(b)) for a, b in data.get("done", [])).total if self.path.exists() else 0
        except (OSError, ValueError, TypeError):
            return 0

    def open(self, size: int | None) -> int:
        self.path.parent.mkdir(parents=True, exist_ok=True)
        fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o644)
        if size is not None and os.fstat(fd).st_size != size:
            os.ftruncate(fd, size)  # sparse: parts are written at their offsets, in any order
        return fd

    def save(self, identity: dict[str, Any], done: RangeSet) -> None:
        self.record.parent.mkdir(parents=True, exist_ok=True)
        tmp = self.record.with_name(f".{self.record.name}.{os.getpid()}.tmp")
        tmp.write_text(json.dumps({"identity": identity, "done": done.to_list(), "saved": time.time()}))
        os.replace(tmp, self.record)

    def adopt(self, identity: dict[str, Any], size_found: int) -> RangeSet:
        """Turn a too-short file at the final name into the start of this partial (it is hashed at the end like any
        other byte, so a bad prefix only costs a second download)."""
        os.replace(self.target, self.path)
        done = RangeSet([(0, size_found)])
        self.save(identity, done)
        return done

    def discard(self) -> None:
        for path in (self.path, self.record):
            try:
                path.unlink()
            except FileNotFoundError:
                pass

    def place(self, fd: int) -> None:
        """fsync, rename over the destination, fsync the folder: after this the file is whole under its name."""
        os.fsync(fd)
        os.close(fd)
        os.replace(self.path, self.target)
        fsync_dir(self.target.parent)
        try:
            self.record.unlink()
        except FileNotFoundError:
            pass


class Checkpoint:
    """Saves the progress record every `checkpoint_bytes` or `checkpoint_seconds`, from whichever connection
    crosses the mark; the others do not wait for it."""

    def __init__(self, partial: Partial, identity: dict[str, Any], schedule: Schedule, tuning: Tuning):
        self.partial = partial
        self.identity = identity
        self.schedule = schedule
        self.tuning = tuning
        self._since = 0
        self._last = time.monotonic()
        self._lock = threading.Lock()
        self._saving = threading.Lock()

    def note(self, n: int) -> None:
        with self._lock:
            self._since += n
            due = self._since >= self.tuning.checkpoint_bytes or time.monotonic() - self._last >= \
                self.tuning.checkpoint_seconds
        if due:
            self.save()

    def save(self, force: bool = False) -> None:
        if not self._saving.acquire(blocking=force):
            return
        try:
            with self._lock:
                self._since = 0
                self._last = time.monotonic()
            if self.schedule.size < (1 << 62):
                self.partial.save(self.identity, self.schedule.snapshot())
        except OSError as exc:
            if not is_disk_full(exc):
                raise
        finally:
            self._saving.release()


def fsync_dir(path: Path) -> None:
    try:
        fd = os.open(path, os.O_RDONLY | os.O_DIRECTORY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass  # some network file systems refuse fsync on directories
    finally:
        os.close(fd)


def free_bytes(path: Path) -> int:
    """Free space for an unprivileged writer at `path` (or its nearest existing parent)."""
    path = Path(path)
    while not path.exists() and path != path.parent:
        path = path.parent
    stat = os.statvfs(path)
    return stat.f_bavail * stat.f_frsize


def clean_hf_orphans(models_dir: Path, folders: set[str], older_than: float = 3600.0) -> list[Path]:
    """huggingface_hub >= 1.18 never resumes its `.incomplete` files: ones left by a killed run (the old template
    used local_dir downloads) are dead weight. Only files untouched for `older_than` seconds go, in case another
    tool is downloading right now."""
    removed: list[Path] = []
    now = time.time()
    for folder in folders:
        cache = Path(models_dir) / folder / ".cache" / "huggingface" / "download"
        if not cache.is_dir():
            continue
        for orphan in cache.rglob("*.incomplete"):
            try:
                if now - orphan.stat().st_mtime > older_than:
                    orphan.unlink()
                    removed.append(orphan)
            except OSError:
                pass
    return removed
