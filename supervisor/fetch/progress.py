"""Progress: counters the downloads bump, and a reporter thread that shows them.

In a terminal: one progress bar on stderr, redrawn in place. Otherwise (RunPod's log viewer, `docker logs`): a
`fetch.progress` event per active file and one `fetch.progress_total` every `interval` seconds. Either way the
`on_progress` callback (the status endpoint) gets a dict snapshot at each tick.
"""

from __future__ import annotations

import sys
import threading
import time
from collections import deque
from dataclasses import dataclass, field
from typing import Any, Callable, TextIO

from ._log import log

MB = 1_000_000
RATE_WINDOW = 10.0  # seconds of history behind a rate


@dataclass
class _File:
    dest: str
    size: int | None
    done: int = 0  # bytes on disk for it (resumed ones included)
    fetched: int = 0  # bytes received in this run
    state: str = "queued"  # queued | waiting | resolving | downloading | hashing | done | failed
    samples: deque[tuple[float, int]] = field(default_factory=lambda: deque([(time.monotonic(), 0)], maxlen=64))


def _eta(remaining: int | None, rate: float) -> float | None:
    if remaining is None or rate <= 0:
        return None
    return round(remaining / rate, 1)


class Progress:
    def __init__(self, *, interval: float = 5.0, on_progress: Callable[[dict[str, Any]], None] | None = None,
                 stream: TextIO | None = None, tty: bool | None = None):
        self.stream = stream or sys.stderr
        if tty is None:
            try:
                tty = self.stream.isatty()
            except (AttributeError, ValueError):
                tty = False
        self.tty = tty
        self.interval = min(interval, 0.5) if tty else interval
        self.on_progress = on_progress
        self.started = time.monotonic()
        self._files: dict[str, _File] = {}
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self._total_samples: deque[tuple[float, int]] = deque([(self.started, 0)], maxlen=64)
        self._drawn = False

    # -- counters -----------------------------------------------------------------------------------------------

    def track(self, dest: str, size: int | None, done: int = 0, state: str = "queued") -> None:
        with self._lock:
            entry = self._files.get(dest)
            if entry is None:
                self._files[dest] = _File(dest, size, done, state=state)
            else:
                entry.size, entry.done, entry.state = size, done, state

    def state(self, dest: str, state: str, size: int | None = None, done: int | None = None) -> None:
        with self._lock:
            entry = self._files.setdefault(dest, _File(dest, size))
            entry.state = state
            if size is not None:
                entry.size = size
            if done is not None:
                entry.done = done

    def add(self, dest: str, n: int) -> None:
        with self._lock:
            entry = self._files.get(dest)
            if entry:
                entry.done += n
                entry.fetched += n

    def fetched(self) -> int:
        with self._lock:
            return sum(f.fetched for f in self._files.values())

    # -- snapshots ----------------------------------------------------------------------------------------------

    def snapshot(self) -> dict[str, Any]:
        now = time.monotonic()
        with self._lock:
            files = []
            for f in self._files.values():
                f.samples.append((now, f.fetched))
                rate = _rate(f.samples, now)
                remaining = None if f.size is None else max(f.size - f.done, 0)
                files.append({"dest": f.dest, "state": f.state, "size": f.size, "bytes": f.done,
                              "percent": _percent(f.done, f.size), "bytes_per_s": round(rate),
                              "mb_per_s": round(rate / MB, 2),
                              "eta_s": _eta(remaining, rate) if f.state == "downloading" else None})
            fetched = sum(f.fetched for f in self._files.values())
            self._total_samples.append((now, fetched))
            rate = _rate(self._total_samples, now)
        known = [f for f in files if f["size"] is not None]
        size = sum(f["size"] for f in known)
        done = sum(min(f["bytes"], f["size"]) for f in known)
        total = {"files": len(files), "done_files": sum(f["state"] == "done" for f in files),
                 "failed_files": sum(f["state"] == "failed" for f in files), "size": size, "bytes": done,
                 "fetched": fetched, "percent": _percent(done, size), "bytes_per_s": round(rate),
                 "mb_per_s": round(rate / MB, 2), "eta_s": _eta(size - done, rate)}
        return {"files": files, "total": total, "elapsed_s": round(now - self.started, 1)}

    # -- the reporter -------------------------------------------------------------------------------------------

    def start(self) -> "Progress":
        self._thread = threading.Thread(target=self._run, name="fetch-progress", daemon=True)
        self._thread.start()
        return self

    def stop(self) -> dict[str, Any]:
        self._stop.set()
        if self._thread:
            self._thread.join(timeout=2)
        final = self.snapshot()
        self._emit(final, final=True)
        return final

    def _run(self) -> None:
        while not self._stop.wait(self.interval):
            self._emit(self.snapshot())

    def _emit(self, snap: dict[str, Any], final: bool = False) -> None:
        if self.on_progress:
            try:
                self.on_progress(snap)
            except Exception as exc:  # a broken status page must not stop downloads
                log.warning("fetch.progress_callback_failed", error=str(exc))
        if self.tty:
            self._draw(snap, final)
        elif not final:
            self._log(snap)

    def _log(self, snap: dict[str, Any]) -> None:
        active = [f for f in snap["files"] if f["state"] in ("downloading", "hashing")]
        if not active:
            return
        for f in active:
            log.info("fetch.progress", dest=f["dest"], bytes=f["bytes"], size=f["size"], percent=f["percent"],
                     mb_per_s=f["mb_per_s"], eta_s=f["eta_s"], state=f["state"])
        t = snap["total"]
        log.info("fetch.progress_total", files=t["files"], done_files=t["done_files"], bytes=t["bytes"],
                 size=t["size"], percent=t["percent"], mb_per_s=t["mb_per_s"], eta_s=t["eta_s"])

    def _draw(self, snap: dict[str, Any], final: bool) -> None:
        t = snap["total"]
        if not t["size"] and not final:
            return
        width = 30
        filled = int(width * (t["percent"] or 0) / 100)
        eta = f" ETA {_clock(t['eta_s'])}" if t["eta_s"] is not None and not final else ""
        active = [f["dest"].rsplit("/", 1)[-1] for f in snap["files"] if f["state"] == "downloading"]
        name = f" {active[0][:32]}" + (f" +{len(active) - 1}" if len(active) > 1 else "") if active else ""
        line = (f"[{'#' * filled}{'.' * (width - filled)}] {t['percent'] or 0:5.1f}% "
                f"{t['done_files']}/{t['files']} files {_size(t['bytes'])}/{_size(t['size'])} "
                f"{t['mb_per_s']:.1f} MB/s{eta}{name}")
        try:
            self.stream.write("\r\x1b[2K" + line + ("\n" if final else ""))
            self.stream.flush()
        except (OSError, ValueError):
            pass


def _rate(samples: deque[tuple[float, int]], now: float) -> float:
    old = next(((t, b) for t, b in samples if now - t <= RATE_WINDOW), None)
    if old is None or now - old[0] <= 0:
        return 0.0
    return (samples[-1][1] - old[1]) / (now - old[0])


def _percent(done: int, size: int | None) -> float | None:
    if not size:
        return None if size is None else 100.0
    return round(100.0 * min(done, size) / size, 1)


def _size(n: int) -> str:
    from ..plan.hardware import format_size

    return format_size(n)


def _clock(seconds: float) -> str:
    seconds = int(seconds)
    if seconds >= 3600:
        return f"{seconds // 3600}h{seconds % 3600 // 60:02d}m"
    return f"{seconds // 60}m{seconds % 60:02d}s" if seconds >= 60 else f"{seconds}s"
