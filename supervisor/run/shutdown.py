"""The shutdown of everything, in order.

Stop restarting and stop the fetch (it keeps its partial files) -> with DRAIN_TIMEOUT, wait for the prompts
running now -> send the stop signal to every ComfyUI's group (the one received: SIGINT is ComfyUI's graceful
stop, SIGTERM ends it at once) and SIGTERM to the side services -> after SHUTDOWN_GRACE, SIGKILL to everything
left. A second SIGTERM/SIGINT skips the rest and kills at once. The process exits as soon as ComfyUI, the
services, the pulls, the fetch, an output upload in flight and any leftovers (processes that left ComfyUI's group)
are gone, with ComfyUI's code.
"""

from __future__ import annotations

import signal
import time
from typing import Any, Callable

import structlog

from . import exits, workers
from .init import STOP_SIGNALS, signal_name
from .runtime import Runtime
from .sidecars import Sidecars
from .units import Units

log = structlog.get_logger("supervise")  # lazy: uses the configuration at each call
KILL_NOW_SIGNALS = (signal.SIGTERM, signal.SIGINT)  # a second one of these during shutdown
FORCE_EXIT_AFTER_KILL = 1.0  # after SIGKILL to everything, exit even if something is stuck in the kernel
DOCKER_STOP_TIMEOUT = 10.0  # docker stop / compose stop_grace_period default; RunPod's (undocumented) assumed equal


class Shutdown:
    def __init__(self, rt: Runtime, units: Units, sidecars: Sidecars, fetch: Callable[[], Any],
                 forward: Callable[[int], None], uploads: Any = None):
        self.rt, self.units, self.sidecars, self.fetch, self.forward = rt, units, sidecars, fetch, forward
        self.uploads = uploads  # the output sync (ENABLE_R2_SYNC): stop(), busy()
        self.settings = rt.settings
        self.signal: int | None = None
        self.began = 0.0
        self.killing = False
        self.gave_up = False
        self.draining: set[int] = set()  # generations whose running prompts are awaited
        self.final_code: int | None = None  # the code to exit with; ComfyUI's own unless we gave up
        self.exit_code: int | None = None  # set when everything is gone: the loop ends

    def begin(self, sig: int, why: str = "", gave_up: bool = False) -> None:
        rt = self.rt
        if rt.stopping:
            if sig in KILL_NOW_SIGNALS and not self.gave_up:
                log.warning("supervise.kill_now", signal=signal_name(sig), message="second stop signal")
                self.kill_everything()
            elif sig not in KILL_NOW_SIGNALS:
                self.forward(sig)
            return
        rt.stopping, self.signal, self.began, self.gave_up = True, sig, time.monotonic(), gave_up
        for unit in self.units:
            rt.cancel_timer(unit.timer("restart"), unit.timer("startup"))
        rt.cancel_timer("node_update")
        self.units.prewarm_stop.set()
        job = self.fetch()
        if job is not None and job.running:
            job.stop.set()
        if self.uploads is not None:
            self.uploads.stop()  # the upload in flight finishes (within the grace); the rest stays pending
        answering = [p for p in self.units.processes() if p.running and p.answered_at is not None]
        drain = self.settings.drain_timeout > 0 and bool(answering) and not gave_up
        budget = self.settings.shutdown_grace + (self.settings.drain_timeout if drain else 0)
        (log.info if budget < DOCKER_STOP_TIMEOUT else log.warning)(
            "supervise.stopping", signal=signal_name(sig), why=why or f"received {signal_name(sig)}",
            grace_s=self.settings.shutdown_grace, drain_s=self.settings.drain_timeout if drain else 0,
            budget_s=budget, margin_s=round(DOCKER_STOP_TIMEOUT - budget, 3),
            note=None if budget < DOCKER_STOP_TIMEOUT else "DRAIN_TIMEOUT + SHUTDOWN_GRACE exceed docker stop's "
            "default 10 s: raise `docker stop -t` / stop_grace_period or SIGKILL will cut the shutdown short")
        for proc in self.units.processes():
            proc.prober.stop.set()
        if drain:
            self.draining = {p.generation for p in answering}
            for proc in answering:
                workers.start(lambda proc=proc: workers.drain(proc.launch.url, proc.generation, rt.post, proc.stop),
                              f"drain-{proc.generation}")
            rt.set_timer("drain", self.settings.drain_timeout, self.drain_timeout)
            self.sidecars.stop()
        else:
            self.stop_children()

    def on_drained(self, generation: int, data: dict[str, Any]) -> None:
        if not self.rt.stopping or self.killing or "drain" not in self.rt.timers:
            return
        self.draining.discard(generation)
        if not self.draining:
            log.info("supervise.drained", unfinished=data.get("unfinished"))
            self.rt.cancel_timer("drain")
            self.stop_children()

    def drain_timeout(self) -> None:
        log.warning("supervise.drain_timeout", seconds=self.settings.drain_timeout,
                    message="the running prompt did not finish in time; stopping anyway")
        self.stop_children()

    def stop_children(self) -> None:
        """The stop signal to every ComfyUI's group (TERM, or what was received: INT stops ComfyUI gracefully)."""
        sig = self.signal if self.signal in STOP_SIGNALS else signal.SIGTERM
        for proc in self.units.processes():
            proc.stop.set()
            self.rt.init.signal(proc.child, sig)
        self.sidecars.stop()
        self.rt.set_timer("grace", self.settings.shutdown_grace, self.grace_expired)

    def grace_expired(self) -> None:
        log.warning("supervise.grace_expired", seconds=self.settings.shutdown_grace,
                    remaining=[c.name for c in self.rt.init.children.values()] or None)
        self.kill_everything()

    def kill_everything(self) -> None:
        self.killing = True
        self.rt.cancel_timer("drain", "grace", *(unit.timer("kill") for unit in self.units))
        for proc in self.units.processes():
            if proc.running:
                proc.killed_for = proc.killed_for or exits.SHUTDOWN
        for child in list(self.rt.init.children.values()):
            self.rt.init.signal(child, signal.SIGKILL)
        self.rt.init.signal_rest(signal.SIGKILL)
        self.rt.set_timer("force_exit", FORCE_EXIT_AFTER_KILL, self.force_exit)

    def force_exit(self) -> None:
        log.error("supervise.force_exit", remaining=[c.pid for c in self.rt.init.children.values()])
        self.finish()

    def maybe_finish(self) -> None:
        """During shutdown: exit once ComfyUI, the services, the pulls and the fetch are gone."""
        if not self.rt.stopping or self.exit_code is not None:
            return
        if self.units.processes() or self.sidecars.busy():
            return
        job = self.fetch()
        if not self.killing and job is not None and job.thread is not None and job.thread.is_alive():
            return  # it keeps its partial files and returns within about a second
        if not self.killing and self.uploads is not None and self.uploads.busy():
            return  # an output upload in flight: SHUTDOWN_GRACE bounds the wait
        leftovers = self.rt.init.descendants()
        if leftovers and not self.killing:
            if "leftovers" not in self.rt.timers:
                log.info("supervise.leftovers", pids=leftovers, names=_names(leftovers),
                         message="stopping the processes still running after ComfyUI and the services ended "
                                 "(orphans of any child, SSH sessions, shells of JupyterLab)")
                self.rt.init.signal_rest(signal.SIGTERM)
                remaining = max(0.0, self.began + self.settings.shutdown_grace - time.monotonic())
                self.rt.set_timer("leftovers", remaining, self.kill_everything)
            return
        self.finish()

    def finish(self) -> None:
        self.exit_code = self.final_code if self.final_code is not None else 128 + (self.signal or signal.SIGTERM)

    def emergency_stop(self) -> None:
        """After a bug in the loop: stop every child quickly, from outside the loop."""
        init = self.rt.init
        for child in list(init.children.values()):
            init.signal(child, signal.SIGTERM)
        deadline = time.monotonic() + min(self.settings.shutdown_grace, 2.0)
        while init.children and time.monotonic() < deadline:
            time.sleep(0.05)
            init.reap()
        for child in list(init.children.values()):
            init.signal(child, signal.SIGKILL)
        init.signal_rest(signal.SIGKILL)


def _names(pids: list[int]) -> list[str]:
    """The program names of `pids`, for the log line (a process may be gone already)."""
    import psutil

    names = []
    for pid in pids:
        try:
            names.append(psutil.Process(pid).name())
        except psutil.Error:
            pass
    return names
