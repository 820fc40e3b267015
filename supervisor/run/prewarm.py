"""Read the plan's weights once so the first prompt loads them from the page cache (PREWARM=true).

A network volume reads near 150 MB/s (RunPod's), so 28 GB of weights take minutes to load on the first prompt.
After ComfyUI is ready, a background thread reads each file of the plan once, the model weights first. Reading
more than the page cache can hold would evict what was read first, so files beyond the memory that is available
are skipped (and named). A stop event ends it within one chunk on shutdown.
"""

from __future__ import annotations

import os
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Iterable

import structlog


log = structlog.get_logger("prewarm")  # lazy: uses the configuration at each call
CHUNK = 8 * 1024 * 1024
CACHE_SHARE = 0.8  # of the available memory that prewarming may fill


@dataclass
class PrewarmResult:
    files: int = 0
    bytes: int = 0
    seconds: float = 0.0
    skipped: list[str] = field(default_factory=list)
    stopped: bool = False

    @property
    def mb_per_s(self) -> float:
        return round(self.bytes / 1e6 / self.seconds, 1) if self.seconds > 0 else 0.0

    def to_dict(self) -> dict[str, object]:
        return {"files": self.files, "bytes": self.bytes, "seconds": round(self.seconds, 3),
                "mb_per_s": self.mb_per_s, "skipped": self.skipped, "stopped": self.stopped}


def plan_files(plan, models_dir: Path) -> list[Path]:
    """Files of the plan on disk, the runtime models' weights first, then by size, largest first."""
    models = {m.knobs.files.get("model") for m in plan.models if m.knobs is not None}
    ordered = sorted(plan.downloads, key=lambda d: (Path(d.dest).name not in models, -d.size))
    paths: list[Path] = []
    for download in ordered:
        target = Path(models_dir) / download.dest
        if target.is_dir():
            paths += sorted((p for p in target.rglob("*") if p.is_file()), key=lambda p: -p.stat().st_size)
        elif target.is_file():
            paths.append(target)
    return paths


def available_memory() -> int:
    import psutil

    return int(psutil.virtual_memory().available)


def prewarm(paths: Iterable[Path], stop: threading.Event, budget: int | None = None) -> PrewarmResult:
    """Read each file once, sequentially (one reader gets a network volume's full bandwidth)."""
    budget = int(available_memory() * CACHE_SHARE) if budget is None else budget
    result = PrewarmResult()
    buffer = bytearray(CHUNK)
    view = memoryview(buffer)
    start = time.monotonic()
    for path in paths:
        try:
            size = path.stat().st_size
        except OSError:
            continue
        if result.bytes + size > budget:
            result.skipped.append(str(path))
            continue
        try:
            fd = os.open(path, os.O_RDONLY)
        except OSError as exc:
            log.warning("prewarm.unreadable", path=str(path), error=str(exc))
            continue
        try:
            try:
                os.posix_fadvise(fd, 0, 0, os.POSIX_FADV_SEQUENTIAL)  # bigger readahead
            except (AttributeError, OSError):
                pass
            while not stop.is_set():
                count = os.readv(fd, [view])
                if count <= 0:
                    break
                result.bytes += count
        finally:
            os.close(fd)
        if stop.is_set():
            result.stopped = True
            break
        result.files += 1
    result.seconds = time.monotonic() - start
    return result
