"""What the loop lends to the parts it owns: the PID-1 mechanics (`Init`), the timers, the inbox that worker
threads post to, the status being published, and the readers of the children's output.

The parts (ComfyUI units, side services, shutdown) get this object, never the loop itself: they can spawn,
signal, set timers and publish, but the order of events stays the loop's.
"""

from __future__ import annotations

import os
import queue
import time
from pathlib import Path
from typing import Any, Callable, Mapping

from .init import Child, Init
from .output import LineReader, LogFile
from .status import Status
from .workers import Message

MAX_SLEEP = 1.0  # the loop reaps at least this often even if a SIGCHLD were lost


class Runtime:
    def __init__(self, settings: Any, environ: Mapping[str, str]):
        self.settings, self.environ = settings, environ
        self.init = Init()
        self.status = Status()
        self.inbox: queue.SimpleQueue[Message] = queue.SimpleQueue()
        self.timers: dict[str, tuple[float, Callable[[], None]]] = {}
        self.readers: dict[int, LineReader] = {}  # pid -> the reader of that child's output
        self.own_logs: set[LogFile] = set()  # log files that close with their child's output
        self.stopping = False  # set once by the shutdown; every part reads it

    # -- worker threads -----------------------------------------------------------------------------------------

    def post(self, kind: str, generation: int, **data: Any) -> None:
        """Thread-safe: called by workers."""
        self.inbox.put(Message(kind, generation, data))
        self.init.wake()

    def messages(self) -> list[Message]:
        out = []
        while True:
            try:
                out.append(self.inbox.get_nowait())
            except queue.Empty:
                return out

    # -- timers -----------------------------------------------------------------------------------------------------

    def set_timer(self, name: str, delay: float, callback: Callable[[], None]) -> None:
        self.timers[name] = (time.monotonic() + max(0.0, delay), callback)
        self.init.wake()

    def cancel_timer(self, *names: str) -> None:
        for name in names:
            self.timers.pop(name, None)

    def sleep_time(self) -> float:
        if not self.timers:
            return MAX_SLEEP
        soonest = min(deadline for deadline, _ in self.timers.values())
        return min(MAX_SLEEP, max(0.0, soonest - time.monotonic()))

    def run_timers(self) -> None:
        now = time.monotonic()
        for name, (deadline, callback) in list(self.timers.items()):
            if deadline <= now and self.timers.get(name, (None,))[0] == deadline:
                del self.timers[name]
                callback()

    # -- children's output ----------------------------------------------------------------------------------------

    def spawn_logged(self, argv: Any, *, name: str, source: str, env: Mapping[str, str],
                     cwd: str | os.PathLike | None = None, log_file: LogFile | None = None,
                     log_name: str | None = None, on_line: Callable[[str], None] | None = None,
                     **bind: Any) -> tuple[Child, LineReader]:
        """Spawn a child whose output becomes events and lines of a log file: `log_file` (shared, kept open) or
        LOG_DIR/<log_name>.log (this child's own, closed with its output)."""
        child = self.init.spawn(argv, name=name, cwd=cwd, env=env)
        if log_name:
            log_file = LogFile(Path(self.settings.log_dir) / f"{log_name}.log")
            self.own_logs.add(log_file)
        reader = LineReader(child.output if child.output is not None else -1, source, log_file=log_file,
                            on_line=on_line, **bind)
        if child.output is not None:
            self.readers[child.pid] = reader
            self.init.watch(child.output, lambda: self._on_output(reader))
        else:
            reader.closed = True
        return child, reader

    def finish_output(self, child: Child) -> LineReader | None:
        """A child exited: read what is left of its output and stop watching it. Its reader (for the last lines)."""
        reader = self.readers.pop(child.pid, None)
        self._close(reader)
        return reader

    def close(self) -> None:
        for reader in list(self.readers.values()):
            self._close(reader)
        self.init.close()

    def _on_output(self, reader: LineReader) -> None:
        if not reader.on_readable():
            self._close(reader)

    def _close(self, reader: LineReader | None) -> None:
        if reader is None or reader.closed:
            return
        reader.drain()
        self.init.unwatch(reader.fd)
        reader.close()
        if reader.log_file in self.own_logs:
            self.own_logs.discard(reader.log_file)
            reader.log_file.close()
