"""Stopping ComfyUI: killing a hung or silent one, and the shutdown of everything (a mixin of `Supervisor`).

Shutdown: stop restarting and stop the fetch (it keeps its partial files) -> with DRAIN_TIMEOUT, wait for the
prompts running now -> send the stop signal to ComfyUI's group (the one received: SIGINT is ComfyUI's graceful stop,
SIGTERM ends it at once) and SIGTERM to the side services -> after SHUTDOWN_GRACE, SIGKILL to everything left.
A second SIGTERM/SIGINT skips the rest and kills at once. The process exits as soon as ComfyUI, the services, the
pulls, the fetch and any leftovers (processes that left ComfyUI's group) are gone, with ComfyUI's code.
"""

from __future__ import annotations

import signal
import time
from typing import TYPE_CHECKING

import structlog

from . import exits, workers
from .init import signal_name

if TYPE_CHECKING:
    from .supervise import Incarnation, Supervisor

log = structlog.get_logger("supervise")  # lazy: uses the configuration at each call
STOP_SIGNALS = (signal.SIGTERM, signal.SIGINT, signal.SIGQUIT)
KILL_NOW_SIGNALS = (signal.SIGTERM, signal.SIGINT)  # a second one of these during shutdown
FORCE_EXIT_AFTER_KILL = 1.0  # after SIGKILL to everything, exit even if something is stuck in the kernel
DOCKER_STOP_TIMEOUT = 10.0  # docker stop / compose stop_grace_period default; RunPod's (undocumented) assumed equal


class Shutdown:
    """Mixin of Supervisor: kill_comfy for hangs, and the whole shutdown sequence."""

    # Killing ComfyUI (hang, startup timeout)

    def startup_timeout(self: Supervisor) -> None:
        comfy = self.comfy
        if comfy is not None and comfy.answered_at is None:
            log.error("comfyui.startup_timeout", seconds=self.settings.startup_timeout, pid=comfy.child.pid,
                      message="ComfyUI is alive but never answered GET /system_stats; restarting it")
            self.kill_comfy(comfy, exits.STARTUP_TIMEOUT)

    def kill_comfy(self: Supervisor, comfy: Incarnation, why: str) -> None:
        """TERM the group now, KILL it after SHUTDOWN_GRACE if it is still there."""
        if comfy.killed_for:
            return
        comfy.killed_for = why
        comfy.prober.stop.set()
        log.warning("comfyui.killing", reason=why, pid=comfy.child.pid, grace_s=self.settings.shutdown_grace)
        self.init.signal(comfy.child, signal.SIGTERM)
        self.set_timer("kill", self.settings.shutdown_grace, lambda: self.init.signal(comfy.child, signal.SIGKILL))

    # Shutdown: stop restarting, drain (optional), TERM, grace, KILL

    def begin_shutdown(self: Supervisor, sig: int, why: str = "") -> None:
        if self.stopping:
            if sig in KILL_NOW_SIGNALS and not self.gave_up:
                log.warning("supervise.kill_now", signal=signal_name(sig), message="second stop signal")
                self.kill_everything()
            elif sig not in KILL_NOW_SIGNALS:
                self.forward(sig)
            return
        self.stopping, self.stop_signal, self.stop_began = True, sig, time.monotonic()
        for name in ("restart", "startup", "node_update"):
            self.cancel_timer(name)
        self.prewarm_stop.set()
        if self.fetch is not None and self.fetch.state == "running":
            self.fetch.stop.set()
        comfy = self.comfy
        drain = (self.settings.drain_timeout > 0 and comfy is not None and comfy.running
                 and comfy.answered_at is not None and not self.gave_up)
        budget = self.settings.shutdown_grace + (self.settings.drain_timeout if drain else 0)
        (log.info if budget < DOCKER_STOP_TIMEOUT else log.warning)(
            "supervise.stopping", signal=signal_name(sig), why=why or f"received {signal_name(sig)}",
            grace_s=self.settings.shutdown_grace, drain_s=self.settings.drain_timeout if drain else 0,
            budget_s=budget, margin_s=round(DOCKER_STOP_TIMEOUT - budget, 3),
            note=None if budget < DOCKER_STOP_TIMEOUT else "DRAIN_TIMEOUT + SHUTDOWN_GRACE exceed docker stop's "
            "default 10 s: raise `docker stop -t` / stop_grace_period or SIGKILL will cut the shutdown short")
        if comfy is not None:
            comfy.prober.stop.set()
        if drain and comfy is not None:
            workers.start(lambda: workers.drain(comfy.launch.url, comfy.generation, self.post, comfy.stop),
                          "drain")
            self.set_timer("drain", self.settings.drain_timeout, self.drain_timeout)
            self.stop_services()
        else:
            self.stop_children()

    def drain_timeout(self: Supervisor) -> None:
        log.warning("supervise.drain_timeout", seconds=self.settings.drain_timeout,
                    message="the running prompt did not finish in time; stopping anyway")
        self.stop_children()

    def stop_services(self: Supervisor) -> None:
        for service in self.services:
            self.cancel_timer(f"service:{service.name}")
            if service.child is not None:
                self.init.signal(service.child, signal.SIGTERM)
        for child in self.pulls:
            self.init.signal(child, signal.SIGTERM)

    def stop_children(self: Supervisor) -> None:
        """Send the stop signal to ComfyUI's group (TERM, or what was received: INT stops ComfyUI gracefully)."""
        if self.comfy is not None:
            self.comfy.stop.set()
            sig = self.stop_signal if self.stop_signal in STOP_SIGNALS else signal.SIGTERM
            self.init.signal(self.comfy.child, sig)
        self.stop_services()
        self.set_timer("grace", self.settings.shutdown_grace, self.grace_expired)

    def grace_expired(self: Supervisor) -> None:
        log.warning("supervise.grace_expired", seconds=self.settings.shutdown_grace,
                    remaining=[c.name for c in self.init.children.values()] or None)
        self.kill_everything()

    def kill_everything(self: Supervisor) -> None:
        self.killing = True
        for name in ("drain", "grace", "kill"):
            self.cancel_timer(name)
        if self.comfy is not None and self.comfy.running:
            self.comfy.killed_for = self.comfy.killed_for or exits.SHUTDOWN
        for child in list(self.init.children.values()):
            self.init.signal(child, signal.SIGKILL)
        self.init.signal_rest(signal.SIGKILL)
        self.set_timer("force_exit", FORCE_EXIT_AFTER_KILL, self.force_exit)

    def force_exit(self: Supervisor) -> None:
        log.error("supervise.force_exit", remaining=[c.pid for c in self.init.children.values()])
        self.finish()

    def maybe_finish(self: Supervisor) -> None:
        """During shutdown: exit once ComfyUI, the services, the pulls and the fetch are gone."""
        if not self.stopping or self.exit_code is not None:
            return
        if self.comfy is not None or any(s.child is not None for s in self.services) or self.pulls:
            return
        fetch = self.fetch
        if not self.killing and fetch is not None and fetch.thread is not None and fetch.thread.is_alive():
            return  # it keeps its partial files and returns within about a second
        leftovers = self.init.descendants()
        if leftovers and not self.killing:
            if "leftovers" not in self.timers:
                log.info("supervise.leftovers", pids=leftovers, message="terminating what ComfyUI left behind")
                self.init.signal_rest(signal.SIGTERM)
                remaining = max(0.0, self.stop_began + self.settings.shutdown_grace - time.monotonic())
                self.set_timer("leftovers", remaining, self.kill_everything)
            return
        self.finish()

    def finish(self: Supervisor) -> None:
        if self.final_code is not None:
            self.exit_code = self.final_code
        else:
            self.exit_code = 128 + (self.stop_signal or signal.SIGTERM)
