"""Before any byte is written: MODELS_DIR must be a folder the supervisor can write, and the bytes still needed must
fit on its disk beside DISK_RESERVE_GB. Both failures name what to change."""

from __future__ import annotations

import errno
import os
import tempfile
from pathlib import Path

from ..errors import Problem
from ..plan import volume
from ._log import log
from .errors import FetchError
from .report import human
from .state import GB, FetchState, Job
from .store import free_bytes

_FIX = {
    errno.EROFS: "the volume is mounted read-only: mount it read-write, or point MODELS_DIR at a writable folder",
    errno.ENOTDIR: "part of the path is a file, not a folder: point MODELS_DIR at a folder on the volume",
    errno.EACCES: "give the container's user write access to it, or point MODELS_DIR at a writable folder",
    errno.EPERM: "give the container's user write access to it, or point MODELS_DIR at a writable folder",
}


def check_models_dir(models_dir: Path) -> None:
    """Raise FetchError naming MODELS_DIR when files cannot be written under it (read-only volume, a file in the
    way, no permission). Creating and removing a file is the only test that works for root and on NFS."""
    try:
        state_dir = Path(models_dir) / volume.STATE_DIR
        state_dir.mkdir(parents=True, exist_ok=True)
        fd, probe = tempfile.mkstemp(prefix=".write-test-", dir=state_dir)
        os.close(fd)
        os.unlink(probe)
    except OSError as exc:
        fix = _FIX.get(exc.errno or 0, "point MODELS_DIR at a writable folder on the volume")
        problem = Problem("MODELS_DIR", f"{models_dir} cannot be written ({exc.strerror or exc})", fix)
        raise FetchError([problem], "MODELS_DIR is not usable", config=True) from None


def check_disk(state: FetchState, jobs: list[Job]) -> None:
    """Raise FetchError (nothing downloaded) when the bytes still needed do not fit beside DISK_RESERVE_GB. Files
    already at their destination with the right size are only hashed, so they need no space; with nothing to
    download, a disk below the reserve is a warning (the outputs share the volume: a full one must not keep a
    complete pod from becoming ready)."""
    need = sum(state.needed(j) or 0 for j in jobs if not _in_place(state, j))
    free = free_bytes(state.models_dir)
    reserve = int(state.settings.disk_reserve_gb * GB)
    if need == 0 and free < reserve:
        log.warning("fetch.disk", need=need, free=free, reserve=reserve, path=str(state.models_dir),
                    message=f"only {human(free)} free, less than DISK_RESERVE_GB="
                            f"{state.settings.disk_reserve_gb:g}; nothing needs downloading, but outputs may fail "
                            "to save: free some space")
        return
    log.info("fetch.disk", need=need, free=free, reserve=reserve, path=str(state.models_dir))
    if need > free - reserve:
        short = need - (free - reserve)
        problem = Problem(str(state.models_dir), f"{human(need)} to download but {human(free)} free and "
                                                 f"DISK_RESERVE_GB={state.settings.disk_reserve_gb:g} kept free",
                          f"free {human(short)} ({short} bytes) more, use a larger volume, or disable a feature")
        for job in jobs:
            state.report.failed[job.snapshot or job.dest] = "not enough disk space"
        state.summary()
        raise FetchError([problem], "not enough disk space", report=state.report)


def _in_place(state: FetchState, job: Job) -> bool:
    """A file of the expected size is already at the destination (it will be hashed and adopted, not fetched)."""
    size = job.remote.size if job.remote else None
    try:
        return size is not None and (state.models_dir / job.dest).stat().st_size == size
    except OSError:
        return False
