"""Supervisor speed and footprint, with the stand-in ComfyUI (tests/standins/comfyui.py) as a real child.

Figures, each printed with its goal and the ratio measured / goal (below 1 is better than the goal):

* ready latency: from the stand-in's socket being bound (it records time.time() right after bind) to the
  `supervise.ready` event. Goal 100 ms. Also shown without the ready log line (`--dont-print-server`), where only
  the startup poll (every 50 ms) notices.
* restart latency: from a crash (the stand-in records time.time() just before os._exit) to the next ComfyUI being
  spawned (`comfyui.spawned`), with RESTART_BACKOFF_INITIAL=0 so the figure is the supervisor's own reaction
  (the backoff is a policy added on top). Goal 200 ms.
* shutdown: SIGTERM to the supervisor; a well-behaved child exits on it (the stand-in records its exit time);
  figure = supervisor exit - child exit. Goal 100 ms.
* RSS of the supervisor once ready (fetch and workflow modules loaded). Goal 60 MB. Also after a cold start that
  downloads a 512 MiB file from the stand-in Hub (tests/standins/hub.py, in its own process) through 8 connections.
* CPU of the supervisor while idle and ready, over --idle-seconds (default 60). Goal 0.5 %.
* warm start overhead, side by side: the stand-in ComfyUI alone (exec of `python main.py` -> first answer of
  GET /system_stats) and `supervisor run` (exec -> `supervise.ready`) on a warm volume (nothing to download, the
  flag check cached by an earlier start), alternated; figure = median(supervised) - median(alone). Goal 300 ms.

    python bench/supervise.py [--rounds 5] [--idle-seconds 60] [--pid1]
"""

from __future__ import annotations

import argparse
import json
import os
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from datetime import datetime
from pathlib import Path

import psutil

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from tests.standins.comfyui import write_main  # noqa: E402

GOALS = {"ready_ms": 100.0, "restart_ms": 200.0, "shutdown_ms": 100.0, "rss_mb": 60.0, "idle_cpu_pct": 0.5,
         "warm_start_ms": 300.0}


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def ts(text: str) -> float:
    return datetime.fromisoformat(text.replace("Z", "+00:00")).timestamp()


class Supervisor:
    def __init__(self, root: Path, pid1: bool, **env: str):
        comfy = root / "comfyui"
        if not (comfy / "main.py").exists():
            write_main(comfy)
        self.record = root / f"standin-{time.monotonic_ns()}.jsonl"
        self.env = {"PATH": os.environ["PATH"], "HOME": str(root), "LOG_FORMAT": "json", "LOG_LEVEL": "info",
                    "COMFYUI_DIR": str(comfy), "COMFYUI_PYTHON": sys.executable,
                    "COMFYUI_DATA_DIR": str(root / "data"), "MODELS_DIR": str(root / "models"),
                    "LOG_DIR": str(root / "logs"), "COMFYUI_PORT": str(free_port()), "COMFYUI_LISTEN": "127.0.0.1",
                    "STATUS_ADDR": f"127.0.0.1:{free_port()}", "STANDIN_RECORD": str(self.record), **env}
        argv = [sys.executable, "-m", "supervisor", "run"]
        if pid1:
            argv = ["unshare", "--pid", "--fork", "--mount-proc", "--kill-child", *argv]
        self.proc = subprocess.Popen(argv, cwd=REPO, env=self.env, stdout=subprocess.PIPE,
                                     stderr=subprocess.DEVNULL, text=True)
        self.pid1 = pid1
        self.events: list[dict] = []
        self.cond = threading.Condition()
        self.exited_at: float | None = None
        threading.Thread(target=self._read, daemon=True).start()
        threading.Thread(target=self._wait, daemon=True).start()

    def _read(self) -> None:
        assert self.proc.stdout is not None
        for line in self.proc.stdout:
            if line.startswith("{"):
                with self.cond:
                    self.events.append(json.loads(line))
                    self.cond.notify_all()

    def _wait(self) -> None:
        self.proc.wait()
        self.exited_at = time.time()
        with self.cond:
            self.cond.notify_all()

    @property
    def pid(self) -> int:
        if not self.pid1:
            return self.proc.pid
        for _ in range(500):
            children = psutil.Process(self.proc.pid).children()
            if children:
                return children[0].pid
            time.sleep(0.01)
        raise RuntimeError("no namespace init")

    def wait_for(self, name: str, count: int = 1, timeout: float = 30.0) -> dict:
        deadline = time.monotonic() + timeout
        with self.cond:
            while True:
                found = [e for e in self.events if e.get("event") == name]
                if len(found) >= count:
                    return found[count - 1]
                if time.monotonic() > deadline or self.exited_at is not None:
                    raise RuntimeError(f"no {name} x{count}; last: {[e.get('event') for e in self.events[-10:]]}")
                self.cond.wait(0.1)

    def records(self, event: str) -> list[dict]:
        if not self.record.exists():
            return []
        return [r for r in map(json.loads, self.record.read_text().splitlines()) if r["event"] == event]

    def stop(self, sig: int = signal.SIGTERM) -> None:
        if self.proc.poll() is None:
            os.kill(self.pid, sig)
        try:
            self.proc.wait(20)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()


def comfyui_alone(root: Path) -> float:
    """Seconds from exec of the stand-in ComfyUI to its first answer of GET /system_stats."""
    import urllib.request

    port = free_port()
    data = root / "alone"
    (data / "user").mkdir(parents=True, exist_ok=True)
    started = time.perf_counter()
    proc = subprocess.Popen([sys.executable, "main.py", "--listen", "127.0.0.1", "--port", str(port),
                             "--user-directory", str(data / "user")], cwd=root / "comfyui",
                            env={"PATH": os.environ["PATH"], "STANDIN_RECORD": str(data / "r.jsonl")},
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        opener = urllib.request.build_opener(urllib.request.ProxyHandler({}))
        while True:
            try:
                with opener.open(f"http://127.0.0.1:{port}/system_stats", timeout=1) as answer:
                    answer.read()
                return time.perf_counter() - started
            except OSError:
                if proc.poll() is not None:
                    raise RuntimeError("the stand-in ComfyUI exited")
                time.sleep(0.005)
    finally:
        proc.terminate()
        proc.wait(10)


def warm_start(root: Path, rounds: int, pid1: bool) -> tuple[list[float], list[float]]:
    """(alone, supervised) seconds, alternated so that a busy moment hits both."""
    env = {"COMFYUI_PORT": str(free_port()), "STATUS_ADDR": f"127.0.0.1:{free_port()}"}
    first = Supervisor(root, pid1, **env)  # fills the flag cache, as a pod's first start does
    first.wait_for("supervise.ready")
    first.stop()
    alone, supervised = [], []
    for _ in range(rounds):
        alone.append(comfyui_alone(root))
        started = time.perf_counter()
        sup = Supervisor(root, pid1, **env)
        try:
            sup.wait_for("supervise.ready")
            supervised.append(time.perf_counter() - started)
        finally:
            sup.stop()
    return alone, supervised


def ready_latency(root: Path, rounds: int, pid1: bool, extra: dict[str, str]) -> list[float]:
    samples = []
    for _ in range(rounds):
        sup = Supervisor(root, pid1, **extra)
        try:
            ready = sup.wait_for("supervise.ready")
            (listening,) = sup.records("listening")
            samples.append((ts(ready["timestamp"]) - listening["t"]) * 1000)
        finally:
            sup.stop()
    return samples


def restart_latency(root: Path, crashes: int, pid1: bool) -> list[float]:
    sup = Supervisor(root, pid1, STANDIN_MODE="crash_after:0.3", RESTART_BACKOFF_INITIAL="0",
                     RESTART_MAX=str(crashes + 5), RESTART_WINDOW="3600")
    try:
        sup.wait_for("comfyui.spawned", count=crashes + 1, timeout=60)
        spawned = [e for e in sup.events if e.get("event") == "comfyui.spawned"]
        exits = {r["pid"]: r["t"] for r in sup.records("exiting")}
        samples = []
        for before, after in zip(spawned, spawned[1:]):
            inner = before["pid"]
            # In a PID namespace the stand-in's own pid (in its record) is the one the supervisor logged too.
            if inner in exits:
                samples.append((ts(after["timestamp"]) - exits[inner]) * 1000)
        return samples
    finally:
        sup.stop()


def shutdown_latency(root: Path, rounds: int, pid1: bool) -> tuple[list[float], list[float]]:
    after_child, total = [], []
    for _ in range(rounds):
        sup = Supervisor(root, pid1, STANDIN_MODE="term_exit:0")
        try:
            sup.wait_for("supervise.ready")
            sent = time.time()
            os.kill(sup.pid, signal.SIGTERM)
            sup.proc.wait(20)
            while sup.exited_at is None:
                time.sleep(0.001)
            (child_exit,) = sup.records("exiting")
            after_child.append((sup.exited_at - child_exit["t"]) * 1000)
            total.append((sup.exited_at - sent) * 1000)
        finally:
            sup.stop()
    return after_child, total


def footprint(root: Path, idle_seconds: float, pid1: bool) -> tuple[float, float, float]:
    sup = Supervisor(root, pid1)
    try:
        sup.wait_for("supervise.ready")
        time.sleep(1.0)  # let the first liveness check run
        proc = psutil.Process(sup.pid)
        rss = proc.memory_info().rss / 1e6
        uss = proc.memory_full_info().uss / 1e6
        before = proc.cpu_times()
        started = time.monotonic()
        time.sleep(idle_seconds)
        after = proc.cpu_times()
        elapsed = time.monotonic() - started
        cpu = ((after.user - before.user) + (after.system - before.system)) / elapsed * 100
        return rss, uss, cpu
    finally:
        sup.stop()


def footprint_after_download(root: Path, pid1: bool, size_mib: int = 512) -> tuple[float, float]:
    """RSS and USS once ready after downloading one file, the Hub and a one-file catalogue beside."""
    hub_root = root / "hub"
    (hub_root / "bench" / "weights").mkdir(parents=True, exist_ok=True)
    blob = hub_root / "bench" / "weights" / "model.safetensors"
    with open(blob, "wb") as handle:
        chunk = os.urandom(1 << 20)
        for _ in range(size_mib):
            handle.write(chunk)
    catalog = root / "bench-catalog.toml"
    catalog.write_text('[files.bench_model]\nrepo = "bench/weights"\npath = "model.safetensors"\n'
                       f'dest = "diffusion_models/bench.safetensors"\nsize = {size_mib << 20}\n\n'
                       '[features.bench]\nswitch = "ENABLE_BENCH"\nfiles = ["bench_model"]\n')
    hub = subprocess.Popen([sys.executable, "-m", "tests.standins.hub", "--root", str(hub_root)], cwd=REPO,
                           stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True)
    try:
        urls = json.loads(hub.stdout.readline())  # type: ignore[union-attr]
        sup = Supervisor(root, pid1, ENABLE_STEADYDANCER="false", ENABLE_BENCH="true", HF_ENDPOINT=urls["hub"],
                         SUPERVISOR_CATALOG=str(catalog), MODELS_DIR=str(root / f"models-{time.monotonic_ns()}"),
                         DISK_RESERVE_GB="0")
        try:
            sup.wait_for("supervise.ready", timeout=120)
            time.sleep(1.0)
            proc = psutil.Process(sup.pid)
            return proc.memory_info().rss / 1e6, proc.memory_full_info().uss / 1e6
        finally:
            sup.stop()
    finally:
        hub.terminate()
        hub.wait()


def line(name: str, value: float, goal: float, unit: str, note: str = "") -> None:
    print(f"{name:<34} {value:9.1f} {unit:<3} goal {goal:g} {unit:<3} ratio {value / goal:5.2f}  {note}")


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--idle-seconds", type=float, default=60.0)
    parser.add_argument("--pid1", action="store_true", help="run the supervisor as PID 1 of a new PID namespace")
    parser.add_argument("--only", choices=["warm_start", "rss"], help="run only this part")
    args = parser.parse_args()
    if args.only:
        with tempfile.TemporaryDirectory(prefix="bench-supervise-") as tmp:
            root = Path(tmp)
            if args.only == "warm_start":
                alone, supervised = warm_start(root, args.rounds, args.pid1)
                overhead = 1000 * (statistics.median(supervised) - statistics.median(alone))
                line("warm start overhead (median)", overhead, GOALS["warm_start_ms"], "ms",
                     f"ComfyUI alone {1000 * statistics.median(alone):.0f} ms, supervised "
                     f"{1000 * statistics.median(supervised):.0f} ms (exec to ready)")
            else:
                rss, uss, _ = footprint(root, 1.0, args.pid1)
                line("RSS when ready", rss, GOALS["rss_mb"], "MB", f"USS {uss:.1f} MB")
        return 0
    with tempfile.TemporaryDirectory(prefix="bench-supervise-") as tmp:
        root = Path(tmp)
        print(f"supervisor benchmark: {args.rounds} rounds, idle {args.idle_seconds:g} s, "
              f"{'PID 1' if args.pid1 else 'child subreaper'}, {os.cpu_count()} cores, Python {sys.version.split()[0]}")
        ready = ready_latency(root, args.rounds, args.pid1, {})
        line("ready after first answer (median)", statistics.median(ready), GOALS["ready_ms"], "ms",
             f"max {max(ready):.1f} ms")
        quiet = ready_latency(root, args.rounds, args.pid1, {"COMFYUI_ARGS": "--dont-print-server"})
        line("  same, no ready line (median)", statistics.median(quiet), GOALS["ready_ms"], "ms",
             f"max {max(quiet):.1f} ms (poll every 50 ms)")
        restarts = restart_latency(root, max(args.rounds, 5), args.pid1)
        line("crash to restart spawned (median)", statistics.median(restarts), GOALS["restart_ms"], "ms",
             f"max {max(restarts):.1f} ms over {len(restarts)} crashes")
        after_child, total = shutdown_latency(root, args.rounds, args.pid1)
        line("shutdown after child exit (median)", statistics.median(after_child), GOALS["shutdown_ms"], "ms",
             f"max {max(after_child):.1f} ms; SIGTERM to exit {statistics.median(total):.1f} ms")
        rss, uss, cpu = footprint(root, args.idle_seconds, args.pid1)
        line("RSS when ready", rss, GOALS["rss_mb"], "MB", f"USS {uss:.1f} MB")
        rss_dl, uss_dl = footprint_after_download(root, args.pid1)
        line("RSS when ready after 512 MiB fetch", rss_dl, GOALS["rss_mb"], "MB", f"USS {uss_dl:.1f} MB")
        line(f"CPU idle over {args.idle_seconds:g} s", cpu, GOALS["idle_cpu_pct"], "%",
             "HEALTH_INTERVAL=10 (default)")
        alone, supervised = warm_start(root, args.rounds, args.pid1)
        overhead = 1000 * (statistics.median(supervised) - statistics.median(alone))
        line("warm start overhead (median)", overhead, GOALS["warm_start_ms"], "ms",
             f"ComfyUI alone {1000 * statistics.median(alone):.0f} ms, supervised "
             f"{1000 * statistics.median(supervised):.0f} ms (exec to ready)")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
