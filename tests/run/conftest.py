"""Helpers for the supervisor's tests: a pod layout in tmp_path with the stand-in ComfyUI as COMFYUI_DIR, and a
running `supervisor run` (a real process, optionally a real PID 1 in its own PID namespace) whose JSON events are
collected from its stdout."""

from __future__ import annotations

import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

import psutil
import pytest

from tests.standins.comfyui import write_main

REPO = Path(__file__).resolve().parents[2]
DATA = REPO / "tests" / "data" / "run"


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


_UNSHARE: list[str] | None | bool = False


def unshare_prefix() -> list[str] | None:
    """The command prefix that runs a process as PID 1 of a new PID namespace here, or None if none works."""
    global _UNSHARE
    if _UNSHARE is not False:
        return _UNSHARE  # type: ignore[return-value]
    _UNSHARE = None
    if shutil.which("unshare"):
        for prefix in (["unshare", "--pid", "--fork", "--mount-proc", "--kill-child"],
                       ["unshare", "--user", "--map-root-user", "--pid", "--fork", "--mount-proc", "--kill-child"]):
            try:
                probe = subprocess.run([*prefix, sys.executable, "-c", "import os; print(os.getpid())"],
                                       capture_output=True, text=True, timeout=20)
            except (OSError, subprocess.TimeoutExpired):
                continue
            if probe.returncode == 0 and probe.stdout.strip() == "1":
                _UNSHARE = prefix
                break
    return _UNSHARE  # type: ignore[return-value]


def needs_pid1() -> list[str]:
    prefix = unshare_prefix()
    if prefix is None:
        pytest.skip("this platform cannot create a PID namespace (unshare --pid fails, also with --user)")
    return prefix


@dataclass
class Pod:
    root: Path
    env: dict[str, str]

    @property
    def comfy_dir(self) -> Path:
        return Path(self.env["COMFYUI_DIR"])

    @property
    def record_path(self) -> Path:
        return Path(self.env["STANDIN_RECORD"])

    @property
    def status_url(self) -> str:
        return f"http://{self.env['STATUS_ADDR']}"

    @property
    def comfy_url(self) -> str:
        return f"http://127.0.0.1:{self.env['COMFYUI_PORT']}"

    def records(self, event: str | None = None) -> list[dict[str, Any]]:
        try:
            lines = self.record_path.read_text().splitlines()
        except FileNotFoundError:
            return []
        found = []
        for line in lines:
            try:
                item = json.loads(line)
            except ValueError:
                continue  # a line being written right now
            if event is None or item.get("event") == event:
                found.append(item)
        return found

    def wait_record(self, event: str, timeout: float = 10.0, count: int = 1, **match: Any) -> list[dict[str, Any]]:
        deadline = time.monotonic() + timeout
        while True:
            found = [r for r in self.records(event) if all(r.get(k) == v for k, v in match.items())]
            if len(found) >= count:
                return found
            if time.monotonic() > deadline:
                raise AssertionError(f"no {count} standin record(s) {event} {match} in {timeout} s; "
                                     f"have {[r['event'] for r in self.records()]}")
            time.sleep(0.02)

    def modes(self, *lines: str) -> None:
        """One line of stand-in modes per ComfyUI start (the last repeats)."""
        path = self.root / "modes.txt"
        path.write_text("\n".join(lines) + "\n")
        self.env["STANDIN_MODE_FILE"] = str(path)


@pytest.fixture
def pod(tmp_path: Path) -> Pod:
    comfy = tmp_path / "comfyui"
    write_main(comfy)
    home = tmp_path / "home"
    home.mkdir()
    env = {
        "PATH": os.environ.get("PATH", os.defpath),
        "HOME": str(home),
        "LANG": "C.UTF-8",
        "LOG_FORMAT": "json",
        "LOG_LEVEL": "debug",
        "COMFYUI_DIR": str(comfy),
        "COMFYUI_PYTHON": sys.executable,
        "COMFYUI_DATA_DIR": str(tmp_path / "data"),
        "MODELS_DIR": str(tmp_path / "models"),
        "LOG_DIR": str(tmp_path / "logs"),
        "COMFYUI_PORT": str(free_port()),
        "COMFYUI_LISTEN": "127.0.0.1",
        "STATUS_ADDR": f"127.0.0.1:{free_port()}",
        "STANDIN_RECORD": str(tmp_path / "standin.jsonl"),
        "HEALTH_INTERVAL": "0.2",
        "HEALTH_TIMEOUT": "1",
        "HEALTH_FAILURES": "3",
        "RESTART_BACKOFF_INITIAL": "0.05",
        "RESTART_BACKOFF_MAX": "0.4",
        "RESTART_STABLE_AFTER": "30",
        "RESTART_MAX": "5",
        "SHUTDOWN_GRACE": "3",
        "STARTUP_TIMEOUT": "20",
        "PYTHONDONTWRITEBYTECODE": "1",
    }
    return Pod(root=tmp_path, env=env)


@dataclass
class Run:
    """A running `supervisor run` and the events it printed."""

    proc: subprocess.Popen
    pid1: bool
    events: list[dict[str, Any]] = field(default_factory=list)
    raw: list[str] = field(default_factory=list)
    stderr: list[str] = field(default_factory=list)
    cond: threading.Condition = field(default_factory=threading.Condition)

    @property
    def pid(self) -> int:
        """The supervisor's pid as seen from here (the namespace's PID 1 when pid1)."""
        if not self.pid1:
            return self.proc.pid
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline:
            try:
                children = psutil.Process(self.proc.pid).children()
            except psutil.NoSuchProcess:
                children = []
            if children:
                return children[0].pid
            time.sleep(0.01)
        raise AssertionError("the namespace's init did not appear")

    def _read(self) -> None:
        assert self.proc.stdout is not None
        for line in self.proc.stdout:
            with self.cond:
                self.raw.append(line)
                if line.startswith("{"):
                    try:
                        self.events.append(json.loads(line))
                    except ValueError:
                        pass
                self.cond.notify_all()
        with self.cond:
            self.cond.notify_all()

    def _read_err(self) -> None:
        assert self.proc.stderr is not None
        for line in self.proc.stderr:
            self.stderr.append(line)

    def named(self, name: str, **match: Any) -> list[dict[str, Any]]:
        with self.cond:
            return [e for e in self.events if e.get("event") == name and all(e.get(k) == v for k, v in match.items())]

    def wait_for(self, name: str, timeout: float = 15.0, count: int = 1,
                 where: Callable[[dict[str, Any]], bool] | None = None, **match: Any) -> dict[str, Any]:
        deadline = time.monotonic() + timeout
        with self.cond:
            while True:
                found = [e for e in self.named_unlocked(name, **match) if where is None or where(e)]
                if len(found) >= count:
                    return found[count - 1]
                left = deadline - time.monotonic()
                if left <= 0 or (self.proc.poll() is not None and not self._reader_alive()):
                    names = [e.get("event") for e in self.events][-40:]
                    raise AssertionError(f"no {name} {match} (x{count}) within {timeout} s; last events {names}; "
                                         f"stderr {''.join(self.stderr)[-2000:]}")
                self.cond.wait(min(left, 0.1))

    def named_unlocked(self, name: str, **match: Any) -> list[dict[str, Any]]:
        return [e for e in self.events if e.get("event") == name and all(e.get(k) == v for k, v in match.items())]

    def _reader_alive(self) -> bool:
        return any(t.is_alive() for t in getattr(self, "_threads", []))

    def send(self, sig: int) -> None:
        os.kill(self.pid, sig)

    def wait(self, timeout: float = 15.0) -> int:
        code = self.proc.wait(timeout)
        for thread in getattr(self, "_threads", []):
            thread.join(5)
        return code

    def status(self) -> dict[str, Any]:
        import httpx

        return httpx.get(f"{self.status_url}/status", timeout=5, trust_env=False).json()

    status_url: str = ""

    def cleanup(self) -> None:
        if self.proc.poll() is None:
            if self.pid1:
                # SIGKILL of the namespace's init kills every process in it (pid_namespaces(7)).
                try:
                    os.kill(self.pid, signal.SIGKILL)
                except (ProcessLookupError, AssertionError):
                    pass
            else:
                try:
                    descendants = psutil.Process(self.proc.pid).children(recursive=True)
                except psutil.NoSuchProcess:
                    descendants = []
                for proc in descendants:
                    try:
                        proc.kill()
                    except psutil.NoSuchProcess:
                        pass
                self.proc.kill()
            try:
                self.proc.wait(10)
            except subprocess.TimeoutExpired:
                pass
        for thread in getattr(self, "_threads", []):
            thread.join(5)


@pytest.fixture
def supervisor(request):
    """Factory: supervisor(pod, *args, pid1=False, env=None, launcher=None, patch="") -> Run; cleaned up after."""
    runs: list[Run] = []

    def start(pod: Pod, *args: str, pid1: bool = False, env: dict[str, str] | None = None,
              launcher: list[str] | None = None, patch: str = "") -> Run:
        """`patch`: Python run before the CLI in the supervisor's process (to shorten a constant)."""
        argv = [sys.executable, "-m", "supervisor", "run", *args]
        if patch:
            argv = [sys.executable, "-c", f"{patch}\nfrom supervisor.cli import main\nraise SystemExit(main())",
                    "run", *args]
        if launcher:
            argv = [*launcher, *argv]
        if pid1:
            argv = [*needs_pid1(), *argv]
        proc = subprocess.Popen(argv, cwd=REPO, env={**pod.env, **(env or {})}, stdout=subprocess.PIPE,
                                stderr=subprocess.PIPE, text=True, stdin=subprocess.DEVNULL)
        run = Run(proc=proc, pid1=pid1)
        run.status_url = pod.status_url
        run._threads = [threading.Thread(target=run._read, daemon=True),  # type: ignore[attr-defined]
                        threading.Thread(target=run._read_err, daemon=True)]
        for thread in run._threads:  # type: ignore[attr-defined]
            thread.start()
        runs.append(run)
        return run

    yield start
    for run in runs:
        run.cleanup()


def zombies_of(pid: int) -> list[int]:
    try:
        children = psutil.Process(pid).children(recursive=True)
    except psutil.NoSuchProcess:
        return []
    found = []
    for child in children:
        try:
            if child.status() == psutil.STATUS_ZOMBIE:
                found.append(child.pid)
        except psutil.NoSuchProcess:
            pass
    return found


def present_plan_files(pod: Pod, *hardware_args: str) -> list[str]:
    """Put every file the plan (and each of its out-of-memory steps) needs on the pod's volume, as sparse files of
    the catalogue's size with verified markers: the plan then needs no download."""
    import argparse

    from supervisor.plan import volume
    from supervisor.plan.context import HardwareOptions, load_context

    parser = argparse.ArgumentParser()
    for name in ("--gpu", "--vram", "--ram", "--disk"):
        parser.add_argument(name)
    args = parser.parse_args(list(hardware_args))
    # The files are sparse: plan as if the disk had room for them, whatever this machine has free.
    ctx = load_context(pod.env, HardwareOptions(gpu=args.gpu, vram=args.vram, ram=args.ram, disk=args.disk or "2000GB"))
    plan = ctx.plan()
    downloads = {d.dest: d for d in plan.downloads}
    for model in plan.models:
        for step in range(1, len(model.ladder) + 1):
            downloads.update({d.dest: d for d in ctx.plan(degrade={model.feature: step}).downloads})
    models_dir = Path(pod.env["MODELS_DIR"])
    for dest, download in downloads.items():
        path = models_dir / dest
        path.parent.mkdir(parents=True, exist_ok=True)
        with open(path, "wb") as f:
            f.truncate(download.size)
        stat = path.stat()
        volume.write_marker(models_dir, dest, volume.Marker(size=stat.st_size, mtime_ns=stat.st_mtime_ns,
                                                            sha256=download.sha256 or ""))
    return sorted(downloads)
