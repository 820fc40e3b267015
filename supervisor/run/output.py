"""A child's output, line by line: re-emitted as structured events and kept in a rotating log file.

`LineReader` is fed by the loop when the child's pipe is readable (`on_readable`) and drained once more when the
child has exited, so every line written before the exit is seen before the exit is classified. It keeps the last
lines for that classification. Carriage-return progress bars (tqdm) are treated as lines but emitted at most
once a second, so a download bar does not flood the log.
"""

from __future__ import annotations

import logging
import logging.handlers
import os
import re
import time
from collections import deque
from pathlib import Path
from typing import Callable

import structlog

from ..logs import get_logger, scrub

MAX_LINE = 16_384  # longer lines are cut (a runaway print must not grow memory)
ROTATE_BYTES = 10 * 1024 * 1024
ROTATE_BACKUPS = 3
PROGRESS_EVERY = 1.0

_ERRORISH = re.compile(r"^(Traceback \(most recent call last\)|[\w.]*(Error|Exception)\b.*:|!!! |ERROR\b|error:|fatal:)"
                       r"|\bERROR\b|^Failed to |IMPORT FAILED")
_ANSI = re.compile(r"\x1b\[[0-9;?]*[A-Za-z]")  # colour codes of node packs' loggers: noise in JSON and log files
_log = structlog.get_logger("output")  # lazy: uses the configuration at each call


class LogFile:
    """A rotating file of raw lines with a UTC timestamp each; problems opening it are logged once, not fatal."""

    def __init__(self, path: Path):
        self.path = path
        self._logger: logging.Logger | None = None
        try:
            path.parent.mkdir(parents=True, exist_ok=True)
            handler = logging.handlers.RotatingFileHandler(path, maxBytes=ROTATE_BYTES, backupCount=ROTATE_BACKUPS,
                                                           encoding="utf-8")
            handler.setFormatter(logging.Formatter("%(asctime)s.%(msecs)03dZ %(message)s", "%Y-%m-%dT%H:%M:%S"))
            handler.formatter.converter = time.gmtime  # type: ignore[union-attr]
            logger = logging.Logger(f"supervisor.file.{path}")  # not registered: no propagation to the root
            logger.addHandler(handler)
            logger.setLevel(logging.INFO)
            self._logger = logger
        except OSError as exc:
            _log.warning("output.log_file_unavailable", path=str(path), error=str(exc))

    def write(self, line: str) -> None:
        if self._logger is not None:
            self._logger.info(line)

    def close(self) -> None:
        if self._logger is not None:
            for handler in self._logger.handlers:
                handler.close()
            self._logger = None


class LineReader:
    """Splits a non-blocking pipe into lines for `on_line`, an event per line and the log file."""

    def __init__(self, fd: int, source: str, *, log_file: LogFile | None = None,
                 on_line: Callable[[str], None] | None = None, keep: int = 60, emit: bool = True,
                 **bind: object):
        self.fd = fd
        self.source = source
        self.log_file = log_file
        self.on_line = on_line
        self.last_lines: deque[str] = deque(maxlen=keep)
        self.closed = False
        self.emit = emit  # False: only keep the lines (a helper's output is returned, not logged)
        self._buffer = b""
        self._last_progress = 0.0
        self._log = get_logger(source, source=source, **bind)

    def on_readable(self) -> bool:
        """Read what is there now. Returns False at end of file (every writer closed the pipe)."""
        while True:
            try:
                data = os.read(self.fd, 65536)
            except (BlockingIOError, InterruptedError):
                return True
            except OSError:
                data = b""
            if not data:
                self._flush_partial()
                return False
            self._feed(data)

    def drain(self) -> None:
        """After the child exited: take what is left, including a last line without a newline."""
        if not self.closed:
            self.on_readable()
            self._flush_partial()

    def close(self) -> None:
        if not self.closed:
            self.closed = True
            try:
                os.close(self.fd)
            except OSError:
                pass

    def _feed(self, data: bytes) -> None:
        self._buffer = (self._buffer + data).replace(b"\r\n", b"\n")
        while True:
            cut = _next_break(self._buffer)
            if cut < 0:
                break
            raw, sep, self._buffer = self._buffer[:cut], self._buffer[cut:cut + 1], self._buffer[cut + 1:]
            self._emit(raw, progress=sep == b"\r")
        if len(self._buffer) > MAX_LINE:
            self._emit(self._buffer[:MAX_LINE], progress=False)
            self._buffer = b""

    def _flush_partial(self) -> None:
        if self._buffer:
            self._emit(self._buffer, progress=False)
            self._buffer = b""

    def _emit(self, raw: bytes, *, progress: bool) -> None:
        line = _ANSI.sub("", raw.decode("utf-8", errors="replace")).rstrip()
        if len(line) > MAX_LINE:
            line = line[:MAX_LINE] + "…"
        if progress:
            now = time.monotonic()
            if not line or now - self._last_progress < PROGRESS_EVERY:
                return
            self._last_progress = now
        line = scrub(line)
        if line:
            self.last_lines.append(line)
        if self.log_file is not None:
            self.log_file.write(line)
        if line and self.emit:
            if _ERRORISH.search(line.lstrip()):
                self._log.warning(f"{self.source}.log", line=line)
            else:
                self._log.info(f"{self.source}.log", line=line)
        if self.on_line is not None:
            self.on_line(line)


def _next_break(buffer: bytes) -> int:
    """Index of the first line break; a trailing "\r" waits for the next read (it may start "\r\n")."""
    newline, carriage = buffer.find(b"\n"), buffer.find(b"\r")
    if carriage == len(buffer) - 1:
        carriage = -1
    candidates = [i for i in (newline, carriage) if i >= 0]
    return min(candidates) if candidates else -1
