"""PID-1 mechanics: signals, reaping, the child subreaper, and children that start clean.

One object, `Init`, owns everything the kernel tells a parent process:

* Signals. Handlers for TERM, INT, HUP, QUIT, USR1, USR2 and CHLD are installed (a PID 1 without a handler
  ignores the signal). The handlers do nothing themselves: `signal.set_wakeup_fd` makes the C-level handler write
  the signal number into a pipe, and `pump()` reads it from a selector in the main thread. No work ever runs
  inside a handler, and a signal that arrives while the loop sleeps wakes it at once.
* Reaping. `reap()` is the only caller of `waitpid` in the process (a second owner, such as
  subprocess.Popen.wait, would lose statuses to it: a crash then reads as exit 0). It records the raw status of
  every child it spawned and counts the orphans it reaps. It runs on every pump, so a lost SIGCHLD costs at most
  one pump timeout.
* Subreaper. When not PID 1 (`docker run --init`, a test), `prctl(PR_SET_CHILD_SUBREAPER)` makes orphaned
  descendants ours to reap instead of the real init's.
* Clean children. `spawn()` uses `os.posix_spawn` with a new session (own process group, so signals reach the
  whole group), an empty signal mask and default dispositions for every classic signal: SIG_IGN inherited by the
  supervisor (e.g. SIGINT from `cmd &`) would otherwise survive exec and make ComfyUI deaf to its graceful stop.
  Output (stdout and stderr together, in order) comes back through a non-blocking pipe.

Nothing here knows about ComfyUI.
"""

from __future__ import annotations

import ctypes
import errno
import os
import selectors
import signal
import threading
import time
from collections import deque
from dataclasses import dataclass, field
from typing import Callable, Mapping, Sequence

import structlog


log = structlog.get_logger("init")  # lazy: uses the configuration at each call

# Signals the supervisor handles; TERM/INT/QUIT stop it, all six are forwarded to ComfyUI's group.
HANDLED = (signal.SIGTERM, signal.SIGINT, signal.SIGHUP, signal.SIGQUIT, signal.SIGUSR1, signal.SIGUSR2)
STOP_SIGNALS = (signal.SIGTERM, signal.SIGINT, signal.SIGQUIT)
# Reset to SIG_DFL in every child: the classic signals except the two that cannot be caught.
CHILD_DEFAULTS = tuple(s for s in range(1, 32) if s not in (signal.SIGKILL, signal.SIGSTOP))

PR_SET_CHILD_SUBREAPER = 36
PR_GET_CHILD_SUBREAPER = 37

# `sh -c` changes directory, then execs the command in place (same pid, so the session and group stay its own).
# posix_spawn has no portable chdir action; the shell also turns a missing command into 127 and a
# non-executable one into 126, the conventions of tini and shells.
_TRAMPOLINE = 'cd -- "$1" || exit 126; shift; exec "$@"'

M_ARENA_MAX = -8  # glibc mallopt parameter


def limit_malloc_arenas(arenas: int = 2) -> bool:
    """Cap glibc's malloc arenas before any thread starts. Each download thread otherwise gets an arena of its own
    that keeps its freed buffers: measured after a 768 MiB download, RSS 107 MB with the default, 62 MB with two
    arenas. Returns False where the C library has no mallopt (musl)."""
    try:
        return bool(ctypes.CDLL(None).mallopt(M_ARENA_MAX, arenas))
    except (OSError, AttributeError):
        return False


def release_free_memory() -> None:
    """Give freed heap pages back to the kernel (after a download burst); a no-op without glibc."""
    try:
        ctypes.CDLL(None).malloc_trim(0)
    except (OSError, AttributeError):
        pass


def signal_name(number: int | None) -> str:
    if number is None:
        return ""
    try:
        return signal.Signals(number).name
    except ValueError:
        return f"signal {number}"


@dataclass(eq=False)
class Child:
    """A process we spawned. `status` is the raw wait status, set only by `Init.reap`."""

    pid: int
    name: str
    argv: tuple[str, ...]
    started: float  # time.monotonic()
    output: int | None = None  # read end of the stdout+stderr pipe, non-blocking
    status: int | None = None
    ended: float | None = None
    exited: threading.Event = field(default_factory=threading.Event)

    @property
    def running(self) -> bool:
        return self.status is None

    @property
    def code(self) -> int | None:
        """Exit code if it exited normally; None while running or when a signal ended it."""
        if self.status is None or not os.WIFEXITED(self.status):
            return None
        return os.WEXITSTATUS(self.status)

    @property
    def signal(self) -> int | None:
        if self.status is None or not os.WIFSIGNALED(self.status):
            return None
        return os.WTERMSIG(self.status)

    @property
    def returncode(self) -> int | None:
        """What a shell (and tini) reports: the exit code, or 128+N when signal N ended it."""
        if self.status is None:
            return None
        value = os.waitstatus_to_exitcode(self.status)
        return 128 - value if value < 0 else value

    @property
    def uptime(self) -> float:
        return (self.ended if self.ended is not None else time.monotonic()) - self.started

    def describe(self) -> str:
        if self.status is None:
            return "running"
        if self.signal is not None:
            return f"killed by {signal_name(self.signal)} ({self.returncode})"
        return f"exit code {self.code}"

    def wait(self, timeout: float | None = None) -> bool:
        """For threads other than the main one: block until `Init.reap` saw the exit."""
        return self.exited.wait(timeout)


class Init:
    """The process's signal, child and reaping state. `install()` once from the main thread, then `pump()`."""

    def __init__(self) -> None:
        self.pid1 = os.getpid() == 1
        self.subreaper = False
        self.children: dict[int, Child] = {}
        self.orphans_reaped = 0
        self._lock = threading.Lock()
        self._signals: deque[int] = deque()
        self._exited: deque[Child] = deque()
        self._selector = selectors.DefaultSelector()
        self._callbacks: dict[int, Callable[[], None]] = {}
        self._sig_r, self._sig_w = _pipe()
        self._wake_r, self._wake_w = _pipe()
        self._previous: dict[int, object] = {}
        self._installed = False

    # -- setup --------------------------------------------------------------------------------------------------

    def install(self) -> None:
        """Handlers + wakeup fd, an empty signal mask, and the subreaper flag when not PID 1."""
        signal.set_wakeup_fd(self._sig_w, warn_on_full_buffer=False)
        for sig in (*HANDLED, signal.SIGCHLD):
            self._previous[sig] = signal.signal(sig, _noop)
        # Blocked signals would never reach the handlers (a launcher may have blocked some).
        signal.pthread_sigmask(signal.SIG_SETMASK, set())
        self.watch(self._sig_r, self._read_signals)
        self.watch(self._wake_r, self._read_wake)
        self._installed = True
        if not self.pid1:
            self.subreaper = _set_subreaper()
            if self.subreaper:
                log.debug("init.subreaper", pid=os.getpid())
            else:
                log.warning("init.no_subreaper", pid=os.getpid(),
                            message="not PID 1 and PR_SET_CHILD_SUBREAPER failed: orphans of ComfyUI are reaped "
                                    "by the real init, not by the supervisor")
        log.info("init.ready", pid=os.getpid(), pid1=self.pid1, subreaper=self.subreaper)

    def close(self) -> None:
        if self._installed:
            signal.set_wakeup_fd(-1)
            for sig, handler in self._previous.items():
                try:
                    signal.signal(sig, handler)  # type: ignore[arg-type]
                except (TypeError, ValueError):
                    pass
            self._installed = False
        for fd in list(self._callbacks):
            self.unwatch(fd)
        for fd in (self._sig_r, self._sig_w, self._wake_r, self._wake_w):
            _close(fd)
        self._selector.close()

    # -- children -----------------------------------------------------------------------------------------------

    def spawn(self, argv: Sequence[str], *, name: str, cwd: str | os.PathLike[str] | None = None,
              env: Mapping[str, str] | None = None) -> Child:
        """Start `argv` in its own session with a clean signal state; its output comes back on `child.output`.

        A command that cannot be started does not raise: it becomes a child that already exited with 127
        (not found) or 126 (not executable), so callers handle every failure as an exit.
        """
        argv = tuple(str(a) for a in argv)
        environ = dict(os.environ if env is None else env)
        read_fd, write_fd = _pipe()
        actions = [(os.POSIX_SPAWN_OPEN, 0, os.devnull, os.O_RDONLY, 0),
                   (os.POSIX_SPAWN_DUP2, write_fd, 1), (os.POSIX_SPAWN_DUP2, write_fd, 2)]
        program = argv
        if cwd is not None:
            program = ("/bin/sh", "-c", _TRAMPOLINE, "supervisor-spawn", os.fspath(cwd), *argv)
        with self._lock:
            try:
                pid = os.posix_spawnp(program[0], program, environ, file_actions=actions, setsid=True,
                                      setsigmask=(), setsigdef=CHILD_DEFAULTS)
            except OSError as exc:
                _close(write_fd)
                _close(read_fd)
                return self._failed_spawn(argv, name, exc)
            _close(write_fd)
            child = Child(pid=pid, name=name, argv=argv, started=time.monotonic(), output=read_fd)
            self.children[pid] = child
        log.debug("init.spawned", name=name, pid=pid, argv=list(argv))
        return child

    def _failed_spawn(self, argv: tuple[str, ...], name: str, exc: OSError) -> Child:
        code = 126 if exc.errno in (errno.EACCES, errno.EPERM, errno.ENOEXEC) else 127
        log.error("init.spawn_failed", name=name, argv=list(argv), error=str(exc), code=code)
        child = Child(pid=-1, name=name, argv=argv, started=time.monotonic(), status=code << 8,
                      ended=time.monotonic())
        child.exited.set()
        self._exited.append(child)
        self.wake()
        return child

    def reap(self) -> list[Child]:
        """Collect every exited child; returns those we spawned (orphans are only counted). Never blocks."""
        done: list[Child] = []
        while True:
            with self._lock:
                try:
                    pid, status = os.waitpid(-1, os.WNOHANG)
                except ChildProcessError:
                    break
                except InterruptedError:
                    continue
                if pid == 0:
                    break
                child = self.children.pop(pid, None)
                if child is None:
                    self.orphans_reaped += 1
                    log.debug("init.reaped_orphan", pid=pid, returncode=_returncode(status))
                    continue
                child.status, child.ended = status, time.monotonic()
            child.exited.set()
            done.append(child)
            self._exited.append(child)
        return done

    def signal(self, child: Child, sig: int, *, group: bool = True) -> bool:
        """Send `sig` to the child's process group (or only to it). False if it is already gone."""
        if child.pid <= 0 or not child.running:
            return False
        try:
            if group:
                os.killpg(child.pid, sig)  # spawn() made it a session (and group) leader: pgid == pid
            else:
                os.kill(child.pid, sig)
            return True
        except ProcessLookupError:
            return False
        except PermissionError as exc:
            log.warning("init.signal_failed", name=child.name, pid=child.pid, signal=signal_name(sig), error=str(exc))
            return False

    def signal_rest(self, sig: int) -> int:
        """Signal every other process we may be responsible for: all of the namespace as PID 1 (`kill(-1)` skips
        ourselves), else every descendant (what a subreaper inherits). Returns how many were signalled."""
        if self.pid1:
            try:
                os.kill(-1, sig)
            except ProcessLookupError:
                return 0
            return len(self.descendants()) or 1
        count = 0
        for pid in self.descendants():
            try:
                os.kill(pid, sig)
                count += 1
            except (ProcessLookupError, PermissionError):
                pass
        return count

    def descendants(self) -> list[int]:
        """Live (not zombie) descendants, from /proc."""
        import psutil

        try:
            procs = psutil.Process().children(recursive=True)
        except psutil.Error:
            return []
        alive = []
        for proc in procs:
            try:
                if proc.status() != psutil.STATUS_ZOMBIE:
                    alive.append(proc.pid)
            except psutil.Error:
                pass
        return alive

    # -- the loop's primitives ----------------------------------------------------------------------------------

    def watch(self, fd: int, callback: Callable[[], None]) -> None:
        self._callbacks[fd] = callback
        self._selector.register(fd, selectors.EVENT_READ)

    def unwatch(self, fd: int) -> None:
        if self._callbacks.pop(fd, None) is not None:
            try:
                self._selector.unregister(fd)
            except (KeyError, ValueError):
                pass

    def pump(self, timeout: float | None) -> None:
        """Wait up to `timeout` for a signal, a wake-up or output, run the fd callbacks, then reap."""
        try:
            ready = self._selector.select(timeout)
        except InterruptedError:  # only without PEP 475 retry, kept for safety
            ready = []
        for key, _ in ready:
            callback = self._callbacks.get(key.fd)  # type: ignore[arg-type]
            if callback is not None:
                callback()
        self.reap()

    def take_signals(self) -> list[int]:
        taken = list(self._signals)
        self._signals.clear()
        return taken

    def take_exited(self) -> list[Child]:
        taken = list(self._exited)
        self._exited.clear()
        return taken

    def stop_requested(self) -> bool:
        """A stop signal is waiting to be taken (lets a blocking step end early)."""
        return any(sig in STOP_SIGNALS for sig in self.peek_signals())

    def peek_signals(self) -> list[int]:
        return list(self._signals)

    def wake(self) -> None:
        """Thread-safe: make the current or next `pump` return."""
        try:
            os.write(self._wake_w, b"\0")
        except (BlockingIOError, OSError):
            pass  # the pipe is full: a wake-up is pending anyway

    def _read_signals(self) -> None:
        for byte in _drain(self._sig_r):
            if byte != signal.SIGCHLD:
                self._signals.append(byte)

    def _read_wake(self) -> None:
        _drain(self._wake_r)


# ---------------------------------------------------------------------------------------------------------------


def _noop(_signum: int, _frame: object) -> None:
    """The real work happens in the loop; the wakeup fd carries the signal number."""


def _pipe() -> tuple[int, int]:
    read_fd, write_fd = os.pipe()  # both close-on-exec (PEP 446)
    os.set_blocking(read_fd, False)
    os.set_blocking(write_fd, False)
    return read_fd, write_fd


def _drain(fd: int) -> bytes:
    chunks = []
    while True:
        try:
            data = os.read(fd, 4096)
        except (BlockingIOError, InterruptedError):
            break
        except OSError:
            break
        if not data:
            break
        chunks.append(data)
    return b"".join(chunks)


def _close(fd: int) -> None:
    try:
        os.close(fd)
    except OSError:
        pass


def _returncode(status: int) -> int:
    value = os.waitstatus_to_exitcode(status)
    return 128 - value if value < 0 else value


def _set_subreaper() -> bool:
    try:
        libc = ctypes.CDLL(None, use_errno=True)
        if libc.prctl(PR_SET_CHILD_SUBREAPER, 1, 0, 0, 0) != 0:
            return False
        flag = ctypes.c_int(0)
        libc.prctl(PR_GET_CHILD_SUBREAPER, ctypes.byref(flag), 0, 0, 0)
        return flag.value == 1
    except (OSError, AttributeError):
        return False
