"""One ComfyUI process slot (a unit): what it runs, and the process running in it now.

A unit owns its plan and its out-of-memory ladder (`degrade`), the current process (an `Incarnation`: the child,
its output reader, its prober, how far its readiness got), its exits and its restart backoff, and the
out-of-memory errors ComfyUI survived inside prompts. It does no I/O and never calls the loop: the loop calls it on
the loop's thread, does the spawning, signalling and timers, and acts on what the unit returns (restart after a
delay, step down the ladder, give up).
"""

from __future__ import annotations

import threading
import time
from dataclasses import dataclass, field
from typing import Any

from ..plan.instances import Instance
from ..plan.types import Plan
from . import exits
from .init import Child
from .launch import LEGACY_REBOOT_LINE, READY_LINE, Launch
from .output import LineReader
from .restart import Decision, RestartPolicy
from .workers import Prober


@dataclass(eq=False)
class Incarnation:
    """One ComfyUI process and what is known about it."""

    generation: int
    child: Child
    reader: LineReader | None
    launch: Launch
    plan: Plan
    prober: Prober
    oom_kills: int  # the cgroup's oom_kill counter when it started
    started_at: float = field(default_factory=time.time)
    answered_at: float | None = None  # monotonic, like child.started
    version: str | None = None
    checks_started: float | None = None
    checks_done: float | None = None
    checked_s: float | None = None
    warmup_s: float | None = None
    ready_at: float | None = None
    problems: list[str] = field(default_factory=list)
    warmup_error: str | None = None
    liveness_failures: int = 0
    queue: int | None = None
    killed_for: str | None = None
    forwarded: set[int] = field(default_factory=set)
    stop: threading.Event = field(default_factory=threading.Event)  # readiness and drain workers

    @property
    def running(self) -> bool:
        return self.child.running

    def restart_in_place(self, prober: Prober) -> None:
        """Same process, new start (ComfyUI-Manager's legacy reboot): readiness starts over."""
        self.retire()
        self.answered_at = self.checks_started = self.checks_done = self.ready_at = None
        self.stop = threading.Event()
        self.prober = prober

    def retire(self) -> None:
        """Stop this process's worker threads (it exited, or is being stopped)."""
        self.prober.stop.set()
        self.stop.set()


# ComfyUI logs this once it caught an out-of-memory error inside a prompt (execution.py), and goes on serving.
PROMPT_OOM_LINE = "Got an OOM, unloading all loaded models."
PROMPT_END_LINE = "Prompt executed in "  # main.py, after every prompt, failed or not
# What on_prompt_oom asks the loop to do.
STEP_DOWN_NOW, STEP_DOWN_WHEN_IDLE, REMEMBER, COUNT = "step_down_now", "step_down_when_idle", "remember", "count"


@dataclass(frozen=True)
class ExitOutcome:
    """What one exit means: its class, and (unless the supervisor is stopping) what to do about it."""

    info: exits.ExitInfo
    record: dict[str, Any]
    decision: Decision | None  # None while stopping: nothing is restarted
    step_down: bool  # out of memory and OOM_DOWNGRADE: restart on the next rung of the ladder


class ComfyUnit:
    """A slot that runs one ComfyUI at a time: its plan, its current process, its restarts."""

    def __init__(self, instance: Instance, settings: Any, policy: RestartPolicy | None = None):
        self.instance = instance  # which GPU and port (plan/instances.py)
        self.name = instance.name
        self.settings = settings
        self.policy = policy or RestartPolicy.from_settings(settings)
        self.plan: Plan | None = None
        self.degrade: dict[str, int] = {}  # feature -> rungs stepped down after out-of-memory exits
        self.proc: Incarnation | None = None
        self.restarts = 0
        self.backoff: tuple[float, float] | None = None  # (restart delay, monotonic time it was scheduled)
        self.memory_key = ""  # where a step down is remembered (plan/memory.py)
        self.ooms: dict[str, int] = {}  # rung -> out-of-memory errors inside prompts on it
        self.last_oom: dict[str, Any] | None = None
        self.step_down_pending = False  # OOM_STEP_DOWN=idle: once no prompt is queued
        self.retry: dict[str, Any] | None = None  # OOM_RETRY_PROMPT: the prompt to queue again when ready

    # -- timers the loop keeps for this unit -------------------------------------------------------------------

    def timer(self, what: str) -> str:
        return f"{self.name}:{what}"

    # -- process lifecycle ---------------------------------------------------------------------------------------

    def started(self, proc: Incarnation) -> None:
        self.proc = proc
        self.backoff = None

    def on_exit(self, stopping: bool, oom_kills_now: int) -> ExitOutcome:
        """The current process exited: classify it and decide (the loop has already reaped and drained it)."""
        proc = self.proc
        assert proc is not None
        proc.retire()
        self.proc = None
        child = proc.child
        info = exits.classify(code=child.code, sig=child.signal, returncode=child.returncode or 0,
                              lines=proc.reader.last_lines if proc.reader else [], uptime=child.uptime,
                              killed_for=proc.killed_for or (exits.SHUTDOWN if stopping else None),
                              forwarded=proc.forwarded, reboot_requested=proc.launch.reboot_marker.exists(),
                              oom_kills=max(0, oom_kills_now - proc.oom_kills))
        record = {**info.to_dict(), "generation": proc.generation, "pid": child.pid, "at": time.time()}
        if stopping:
            return ExitOutcome(info, record, None, False)
        decision = self.policy.decide(info, time.monotonic())
        step_down = info.klass == exits.OOM and decision.restart and self.settings.oom_downgrade
        if decision.restart:
            self.restarts += 1
            self.backoff = (decision.delay, time.monotonic())
        return ExitOutcome(info, record, decision, step_down)

    def lower_rung(self) -> dict[str, int]:
        """`degrade` one rung down the ladder for every model that has one left (unchanged at the bottom)."""
        return {**self.degrade, **{m.feature: self.degrade.get(m.feature, 0) + 1
                                   for m in (self.plan.models if self.plan else []) if m.ladder}}

    def step_down(self) -> list[str]:
        """Take the lower rung; the features stepped (none: at the bottom). The caller makes the new plan with
        `degrade`."""
        lower = self.lower_rung()
        features = [feature for feature in lower if lower[feature] != self.degrade.get(feature, 0)]
        self.degrade = lower
        return features

    def rung(self) -> str:
        """The plan's current step, as `variant/offload/blocks` of each model that has a ladder."""
        models = [m for m in (self.plan.models if self.plan else []) if m.knobs]
        return ", ".join(f"{m.variant}/{m.offload}/{m.knobs.blocks_to_swap}" for m in models) or "-"

    def kill_reason(self, why: str) -> bool:
        """Mark the current process as killed for `why`; False if it already is (or none runs)."""
        proc = self.proc
        if proc is None or proc.killed_for:
            return False
        proc.killed_for = why
        proc.prober.stop.set()
        return True

    # -- what ComfyUI printed and the probes found ----------------------------------------------------------------

    def on_line(self, line: str) -> str | None:
        """One line of ComfyUI's output. Returns what it means to the loop: "ready" (probe now), "legacy_reboot"
        (restarting in place), "prompt_oom" (an out-of-memory error it survived), or None."""
        proc = self.proc
        if proc is None:
            return None
        if PROMPT_OOM_LINE in line or line.startswith(PROMPT_END_LINE):
            # A finished prompt's lines are not evidence for a later exit (exits.py).
            if proc.reader is not None:
                proc.reader.last_lines.clear()
            return "prompt_oom" if PROMPT_OOM_LINE in line else None
        if READY_LINE in line:
            return "ready"
        if LEGACY_REBOOT_LINE in line:
            return "legacy_reboot"
        return None

    def on_prompt_oom(self, found: dict[str, Any]) -> tuple[str, int]:
        """Count an out-of-memory error inside a prompt on this rung; (what to do, count on this rung)."""
        rung = self.rung()
        count = self.ooms[rung] = self.ooms.get(rung, 0) + 1
        self.last_oom = {**{k: found.get(k) for k in ("prompt_id", "node_id", "node_type", "message")},
                         "rung": rung, "at": time.time()}
        policy, after = self.settings.oom_step_down, self.settings.oom_step_down_after
        if policy == "off" or count < after or self.step_down_pending:
            return COUNT, count
        if policy == "next-start":
            return REMEMBER, count
        if self.settings.oom_retry_prompt and found.get("graph"):
            self.retry = {"graph": found["graph"], "extra": found.get("extra"), "original": found.get("prompt_id")}
        self.step_down_pending = True
        queue = found.get("queue", self.proc.queue if self.proc else None)  # counted after the failed prompt ended
        return (STEP_DOWN_NOW if queue == 0 else STEP_DOWN_WHEN_IDLE), count

    def oom_status(self) -> dict[str, Any]:
        return {"in_prompt": sum(self.ooms.values()), "by_rung": dict(self.ooms), "rung": self.rung(),
                "last": self.last_oom, "policy": self.settings.oom_step_down,
                "step_down_after": self.settings.oom_step_down_after, "step_down_pending": self.step_down_pending,
                "degrade": dict(self.degrade), "remembered": dict(self.plan.remembered) if self.plan else {}}


    def on_answering(self, data: dict[str, Any]) -> float:
        proc = self.proc
        assert proc is not None
        proc.answered_at = time.monotonic()
        proc.version = ((data.get("stats") or {}).get("system") or {}).get("comfyui_version")
        return round(proc.answered_at - proc.child.started, 3)

    def on_liveness(self, data: dict[str, Any]) -> tuple[int, bool]:
        """(consecutive failures, whether that many means ComfyUI hangs)."""
        proc = self.proc
        assert proc is not None
        if data.get("ok"):
            before, proc.liveness_failures = proc.liveness_failures, 0
            proc.queue = data.get("queue")
            return -before, False
        proc.liveness_failures += 1
        return proc.liveness_failures, proc.liveness_failures >= self.settings.health_failures

    def on_checked(self, data: dict[str, Any]) -> None:
        assert self.proc is not None
        self.proc.problems = list(data.get("problems") or [])
        self.proc.checked_s = data.get("seconds")

    def on_warmed(self, data: dict[str, Any]) -> None:
        assert self.proc is not None
        self.proc.warmup_s = data.get("seconds")
        self.proc.warmup_error = None if data.get("ok") else str(data.get("message"))

    # -- readiness ---------------------------------------------------------------------------------------------

    def not_ready_reasons(self) -> list[str]:
        """Why this unit's ComfyUI is not ready (empty: it is). The pod-wide reasons are the loop's."""
        proc, settings = self.proc, self.settings
        if proc is None:
            return ["ComfyUI is not running" + (" (restart pending)" if self.backoff else "")]
        if proc.answered_at is None:
            return ["ComfyUI is starting"]
        reasons = []
        if proc.liveness_failures:
            reasons.append(f"ComfyUI failed {proc.liveness_failures} liveness checks in a row")
        if proc.checks_done is None:
            if proc.checks_started is not None:
                reasons.append("warmup running" if proc.checked_s is not None or not settings.check_workflows
                               else "checking workflows")
            else:
                reasons.append("waiting for the files before the workflow check")
            return reasons
        if proc.warmup_error:
            reasons.append(f"warmup failed: {proc.warmup_error}")
        if proc.problems and settings.check_blocks_ready:
            reasons.append(f"workflow check failed ({len(proc.problems)} problems)")
        if settings.ready_max_queue and proc.queue is not None and proc.queue > settings.ready_max_queue:
            reasons.append(f"{proc.queue} prompts queued (READY_MAX_QUEUE={settings.ready_max_queue})")
        return reasons

    def live(self) -> bool:
        return not (self.proc and self.proc.liveness_failures >= self.settings.health_failures)

    def phase(self) -> str:
        """Where this unit is, when it is not ready."""
        proc = self.proc
        if proc is None:
            return "backoff" if self.backoff else "launching"
        if proc.answered_at is None:
            return "starting"
        if proc.checks_done is None and proc.checks_started is not None:
            return "checking"
        return "not_ready"

    def describe(self, ready: bool) -> dict[str, Any]:
        """This unit for /status."""
        proc = self.proc
        if proc is None:
            if self.backoff:
                delay, since = self.backoff
                return {"state": "backoff", "restart_in_s": round(max(0.0, delay - (time.monotonic() - since)), 3)}
            return {"state": "not_started"}
        return {
            "state": "ready" if ready else ("answering" if proc.answered_at else "starting"),
            "pid": proc.child.pid, "generation": proc.generation, "url": proc.launch.url,
            "argv": list(proc.launch.argv), "started_at": proc.started_at, "version": proc.version,
            "answered_after_s": round(proc.answered_at - proc.child.started, 3) if proc.answered_at else None,
            "liveness_failures": proc.liveness_failures, "queue_remaining": proc.queue,
            "ready_at": round(time.time() - (time.monotonic() - proc.ready_at), 3) if proc.ready_at else None,
        }
