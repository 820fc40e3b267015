"""ENABLE_R2_SYNC: every finished prompt's outputs to the bucket, in the background, each file once.

The loop hands over the files a finished prompt's /history entry lists (activity.py finds them; ComfyUI adds the
entry only when the prompt is done, so no file is still being written). This worker thread owns everything on
the volume under COMFYUI_DATA_DIR/.supervisor/uploads/:

    pending/<sha1 of the file's path>.json   a file to upload: written before the upload starts, removed after its
                                             marker; at start, whatever is pending is queued again
    done/<path under output/>.json           the marker of an uploaded file: key, size, mtime, seconds; a file with a
                                             marker of the same size and mtime is never uploaded again

So a restart (of ComfyUI, of the supervisor, of the pod) neither loses a file nor uploads one twice. (A kill in
the instant between the upload's last byte and its marker uploads that one file again, to the same key.)

Retries come in three layers: botocore retries each request, `Store` starts an upload over with backoff while the
failure is transient, and when it still fails this worker puts the file back in the queue and tries again after
RETRY_INITIAL doubling to RETRY_MAX seconds, for as long as the pod runs (a credentials or bucket error waits
RETRY_MAX). Uploads never block ComfyUI: they read files ComfyUI has finished with. On shutdown the upload in
flight may finish within SHUTDOWN_GRACE; the rest stays pending for the next start.

The worker reports with `post("outputs", 0, **snapshot)` after every change (and every second during an upload);
the loop publishes that as status["outputs"], which the status page and /metrics show.
"""

from __future__ import annotations

import hashlib
import json
import os
import threading
import time
import uuid
from collections import deque
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable

import structlog

from .store import StoreConfig, UploadError

log = structlog.get_logger("outputs")  # lazy: uses the configuration at each call
# Store's own retries (per upload): a few tries with backoff; then this worker's requeue takes over.
STORE_OPTIONS: dict[str, Any] = {"attempts": 3, "wait_initial": 1.0, "wait_max": 20.0}
RETRY_INITIAL = 10.0  # seconds before a failed file is tried again, doubling...
RETRY_MAX = 300.0  # ...up to this
PROGRESS_EVERY = 1.0  # seconds between progress reports during an upload


@dataclass
class Item:
    path: Path  # the file
    rel: str  # its path under the output root: the key's tail and the marker's name
    prompt_id: str
    attempts: int = 0
    not_before: float = 0.0  # monotonic

    @property
    def journal(self) -> str:
        return hashlib.sha1(self.rel.encode()).hexdigest() + ".json"


def pod_name(settings: Any, environ: Any) -> str:
    """What `{pod}` in R2_PREFIX stands for: RUNPOD_POD_ID, else an id made once and kept on the volume."""
    pod = str(environ.get("RUNPOD_POD_ID") or "").strip()
    if pod:
        return pod
    path = Path(settings.comfyui_data_dir) / ".supervisor" / "pod-id"
    try:
        return path.read_text().strip() or _new_id(path)
    except FileNotFoundError:
        return _new_id(path)


def _new_id(path: Path) -> str:
    value = "pod-" + uuid.uuid4().hex[:12]
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(value + "\n")
    return value


class OutputSync:
    def __init__(self, settings: Any, environ: Any, post: Callable[..., None],
                 store_factory: Callable[..., Any] | None = None):
        self.config = StoreConfig.from_settings(settings)
        if self.config is None:
            raise ValueError("R2_BUCKET is not set")
        self.root = (Path(settings.comfyui_data_dir) / "output").absolute()
        self.state = Path(settings.comfyui_data_dir) / ".supervisor" / "uploads"
        self.prefix = str(settings.r2_prefix or "").replace("{pod}", pod_name(settings, environ)).strip("/")
        self.post = post
        self.store_factory = store_factory
        self._cond = threading.Condition()
        self._new: deque[Item] = deque()  # handed over by the loop, not yet journaled
        self._queue: deque[Item] = deque()  # journaled, waiting for upload
        self._stop = False
        self._current: dict[str, Any] | None = None
        self.counts = {"uploaded": 0, "uploaded_bytes": 0, "failures": 0, "skipped": 0}
        self.last: dict[str, Any] | None = None
        self.last_error: str | None = None
        self.thread: threading.Thread | None = None

    # -- the loop's side ------------------------------------------------------------------------------------------

    def start(self) -> None:
        self.thread = threading.Thread(target=self._run, name="output-sync", daemon=True)
        self.thread.start()

    def add(self, prompt_id: str, files: list[dict[str, str]], output_dir: Path | None = None) -> int:
        """Queue the files of one finished prompt (`{filename, subfolder}` as /history lists them, under
        `output_dir`, default COMFYUI_DATA_DIR/output). Returns how many were queued."""
        base = (output_dir or self.root).absolute()
        items = []
        for entry in files:
            path = (base / entry.get("subfolder", "") / entry["filename"]).resolve()
            if not path.is_relative_to(base.resolve()):
                log.warning("outputs.outside", prompt_id=prompt_id, file=str(path),
                            message="not under ComfyUI's output folder; not uploaded")
                continue
            rel = path.relative_to(self.root.resolve()) if path.is_relative_to(self.root.resolve()) else \
                Path(base.name) / path.relative_to(base.resolve())
            items.append(Item(path=path, rel=rel.as_posix(), prompt_id=prompt_id))
        if items:
            with self._cond:
                self._new.extend(items)
                self._cond.notify_all()
            if self._stop or self.thread is None or not self.thread.is_alive():
                self._journal_new()  # the worker stops or is gone (shutdown): keep them for the next start
        return len(items)

    def stop(self) -> None:
        """Stop after the upload in flight; what is queued stays pending on the volume."""
        with self._cond:
            self._stop = True
            self._cond.notify_all()

    def busy(self) -> bool:
        """True while the worker runs (an upload in flight finishes first)."""
        return self.thread is not None and self.thread.is_alive()

    # -- the worker -----------------------------------------------------------------------------------------------

    def _run(self) -> None:
        try:
            store = (self.store_factory or _store)(self.config)
        except Exception as exc:  # boto3 missing, a malformed endpoint: say so and stay off
            self.last_error = f"cannot start the upload client: {type(exc).__name__}: {exc}"
            log.error("outputs.unavailable", error=self.last_error, where=self.config.where)
            self._report()
            return
        with store:
            self._resume()
            log.info("outputs.sync_started", where=self.config.where, prefix=self.prefix, pending=len(self._queue))
            self._report()
            while True:
                item = self._next()
                if item is None:
                    break
                self._upload(store, item)
        self._journal_new()
        log.info("outputs.sync_stopped", pending=self._pending_count(), uploaded=self.counts["uploaded"])
        self._report()

    def _next(self) -> Item | None:
        """The next file whose time has come; None when stopping."""
        while True:
            self._journal_new()
            with self._cond:
                if self._stop:
                    return None
                now = time.monotonic()
                ready = [i for i in self._queue if i.not_before <= now]
                if ready:
                    self._queue.remove(ready[0])
                    return ready[0]
                wait = min((i.not_before - now for i in self._queue), default=None)
                if not self._new:
                    self._cond.wait(wait)

    def _journal_new(self) -> None:
        with self._cond:
            new, self._new = list(self._new), deque()
        for item in new:
            if self._uploaded(item):
                continue
            _write_json(self.state / "pending" / item.journal,
                        {"file": item.rel, "prompt_id": item.prompt_id, "added_at": time.time()})
            log.info("outputs.queued", file=item.rel, prompt_id=item.prompt_id)
            with self._cond:
                if not any(q.rel == item.rel for q in self._queue):
                    self._queue.append(item)
        if new:
            self._report()

    def _resume(self) -> None:
        """Files left pending by an earlier run."""
        for journal in sorted((self.state / "pending").glob("*.json")):
            try:
                data = json.loads(journal.read_text())
                rel = str(data["file"])
            except (OSError, ValueError, KeyError):
                journal.unlink(missing_ok=True)
                continue
            item = Item(path=self.root / rel, rel=rel, prompt_id=str(data.get("prompt_id", "")))
            if self._uploaded(item) or any(q.rel == rel for q in self._queue):
                journal.unlink(missing_ok=True)  # done already, or listed twice
            elif journal.name != item.journal:
                _write_json(self.state / "pending" / item.journal, data)
                journal.unlink(missing_ok=True)
                self._queue.append(item)
            else:
                self._queue.append(item)

    def _uploaded(self, item: Item) -> bool:
        """A marker says this very file (same size and mtime) is in the bucket: drop it from the queue."""
        try:
            marker = json.loads((self.state / "done" / (item.rel + ".json")).read_text())
            stat = item.path.stat()
        except (OSError, ValueError):
            return False
        if marker.get("size") == stat.st_size and marker.get("mtime_ns") == stat.st_mtime_ns:
            (self.state / "pending" / item.journal).unlink(missing_ok=True)
            self.counts["skipped"] += 1
            log.info("outputs.already_uploaded", file=item.rel, key=marker.get("key"))
            return True
        return False

    def _upload(self, store: Any, item: Item) -> None:
        if self._uploaded(item):
            return
        key = f"{self.prefix}/{item.rel}" if self.prefix else item.rel
        try:
            stat = item.path.stat()
        except FileNotFoundError:
            log.warning("outputs.missing", file=item.rel, prompt_id=item.prompt_id,
                        message="the file is gone (deleted before its upload); nothing to upload")
            (self.state / "pending" / item.journal).unlink(missing_ok=True)
            return
        started = time.monotonic()
        sent = [0]
        last_report = [started]
        self._current = {"file": item.rel, "size": stat.st_size, "sent": 0, "started_at": time.time()}
        log.info("outputs.uploading", file=item.rel, key=key, bytes=stat.st_size, attempt=item.attempts + 1)
        self._report()

        def on_bytes(n: int) -> None:  # boto3's transfer threads
            sent[0] += n
            if self._current is not None:
                self._current["sent"] = min(sent[0], stat.st_size)
            if time.monotonic() - last_report[0] >= PROGRESS_EVERY:
                last_report[0] = time.monotonic()
                self._report()

        def on_retry(attempt: int, exc: BaseException) -> None:
            log.warning("outputs.upload_retry", file=item.rel, attempt=attempt, error=str(exc)[:300])

        try:
            store.upload(item.path, key, on_retry=on_retry, on_bytes=on_bytes)
        except UploadError as exc:
            self._failed(item, exc)
            return
        finally:
            self._current = None
        seconds = time.monotonic() - started
        _write_json(self.state / "done" / (item.rel + ".json"),
                    {"key": key, "bucket": self.config.bucket, "endpoint": self.config.endpoint, "size": stat.st_size,
                     "mtime_ns": stat.st_mtime_ns, "uploaded_at": time.time(), "seconds": round(seconds, 3),
                     "prompt_id": item.prompt_id})
        (self.state / "pending" / item.journal).unlink(missing_ok=True)
        self.counts["uploaded"] += 1
        self.counts["uploaded_bytes"] += stat.st_size
        self.last = {"file": item.rel, "key": key, "size": stat.st_size, "at": time.time()}
        self.last_error = None
        log.info("outputs.uploaded", file=item.rel, key=key, bytes=stat.st_size, seconds=round(seconds, 3),
                 mb_per_s=round(stat.st_size / 1e6 / seconds, 2) if seconds > 0 else None, prompt_id=item.prompt_id)
        self._report()

    def _failed(self, item: Item, exc: UploadError) -> None:
        item.attempts += 1
        delay = RETRY_MAX if not exc.transient else min(RETRY_MAX, RETRY_INITIAL * 2 ** (item.attempts - 1))
        item.not_before = time.monotonic() + delay
        self.counts["failures"] += 1
        self.last_error = str(exc)
        log.error("outputs.upload_failed", file=item.rel, error=str(exc), transient=exc.transient,
                  attempts=item.attempts, retry_in_s=delay, message="the file stays queued and is tried again")
        with self._cond:
            self._queue.append(item)
        self._report()

    # -- reporting --------------------------------------------------------------------------------------------------

    def _pending_count(self) -> int:
        with self._cond:
            return len(self._queue) + len(self._new)

    def snapshot(self) -> dict[str, Any]:
        current = dict(self._current) if self._current else None
        return {"enabled": True, "where": self.config.where, "prefix": self.prefix, "pending": self._pending_count(),
                "current": current, "last": self.last, "last_error": self.last_error, **self.counts,
                "running": self.busy()}

    def _report(self) -> None:
        self.post("outputs", 0, **self.snapshot())


def _store(config: StoreConfig) -> Any:
    from .store import Store

    return Store(config, **STORE_OPTIONS)


def _write_json(path: Path, data: dict[str, Any]) -> None:
    """Whole or not at all: a crash leaves the old file or the new one, never half of one."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp")
    tmp.write_text(json.dumps(data) + "\n")
    os.replace(tmp, path)
