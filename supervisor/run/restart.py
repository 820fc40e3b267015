"""When to restart ComfyUI, and when to give up. Pure: the caller passes the monotonic clock in.

* Exits that restarting cannot fix (bad arguments, driver mismatch, a command that does not exist) give up at once.
* A reboot asked for by ComfyUI-Manager, an exit caused by a signal we forwarded, or our own restart on a lower rung
  after in-prompt out-of-memory errors restarts at once and is not a failure.
* Every other exit is a failure: it restarts after a delay that starts at RESTART_BACKOFF_INITIAL and doubles up
  to RESTART_BACKOFF_MAX; a run that stayed up RESTART_STABLE_AFTER seconds resets the delay. The
  RESTART_MAX-th failure within RESTART_WINDOW seconds gives up, so docker's restart policy (or RunPod) sees a
  non-zero exit instead of a container that looks alive and never works.
"""

from __future__ import annotations

from collections import deque
from dataclasses import dataclass

from . import exits

FATAL = frozenset({exits.BAD_ARGUMENTS, exits.DRIVER, exits.EXEC_FAILED})
FREE = frozenset({exits.REBOOT, exits.SIGNAL, exits.STEP_DOWN})


@dataclass(frozen=True)
class Decision:
    restart: bool
    delay: float
    failure: bool  # counted towards RESTART_MAX
    failures: int  # failures inside the window, this one included
    reason: str


class RestartPolicy:
    def __init__(self, *, initial: float, maximum: float, stable_after: float, max_failures: int, window: float):
        self.initial, self.maximum, self.stable_after = initial, max(maximum, initial), stable_after
        self.max_failures, self.window = max_failures, window
        self.next_delay = initial
        self._failures: deque[float] = deque()

    @classmethod
    def from_settings(cls, settings) -> "RestartPolicy":
        return cls(initial=settings.restart_backoff_initial, maximum=settings.restart_backoff_max,
                   stable_after=settings.restart_stable_after, max_failures=settings.restart_max,
                   window=settings.restart_window)

    def failures(self, now: float) -> int:
        self._expire(now)
        return len(self._failures)

    def decide(self, exit: exits.ExitInfo, now: float) -> Decision:
        self._expire(now)
        if exit.klass in FATAL:
            return Decision(False, 0.0, True, len(self._failures) + 1, f"{exit.klass}: restarting cannot help")
        if exit.klass in FREE:
            return Decision(True, 0.0, False, len(self._failures), f"{exit.klass}: restart at once, not a failure")
        if exit.uptime >= self.stable_after:
            self.next_delay = self.initial  # it ran long enough: this is a new problem, not the same loop
        self._failures.append(now)
        count = len(self._failures)
        if count >= self.max_failures:
            return Decision(False, 0.0, True, count,
                            f"{count} failures within {self.window:g} s (RESTART_MAX={self.max_failures})")
        delay = self.next_delay
        self.next_delay = min(self.next_delay * 2, self.maximum)
        return Decision(True, delay, True, count, f"failure {count} of {self.max_failures} within {self.window:g} s")

    def _expire(self, now: float) -> None:
        while self._failures and now - self._failures[0] > self.window:
            self._failures.popleft()
