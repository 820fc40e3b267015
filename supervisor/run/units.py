"""The ComfyUI units under the loop: planning, launching, probing, checking, restarting and stepping down.

Each `ComfyUnit` (unit.py) holds its own state and decides; this module does what the decisions need: spawn the
process with its launch line, start its prober and readiness checks, set its timers, signal it. What only the
pod as a whole can do (give up, fetch the files of a new plan) goes back to the loop through the callbacks given
at construction.
"""

from __future__ import annotations

import signal
import threading
import time
from pathlib import Path
from typing import Any, Callable

import structlog

from ..errors import Problem
from ..plan import memory
from ..plan.context import Context
from ..plan.report import log_plan
from . import exits, launch as comfyui, workers
from .init import Child
from .output import LineReader, LogFile
from .runtime import MAX_SLEEP, Runtime
from .status import model_brief
from .unit import REMEMBER, STEP_DOWN_NOW, STEP_DOWN_WHEN_IDLE, ComfyUnit, Incarnation

log = structlog.get_logger("supervise")  # lazy: uses the configuration at each call
HELP_TIMEOUT = 60.0


class Units:
    def __init__(self, rt: Runtime, ctx: Context, *, give_up: Callable[[exits.ExitInfo, str], None],
                 bad_command: Callable[[list[Problem]], None], new_plan: Callable[[ComfyUnit, Any], None],
                 on_signal: Callable[[int], None]):
        self.rt, self.ctx, self.settings = rt, ctx, ctx.settings
        self.give_up, self.bad_command, self.new_plan, self.on_signal = give_up, bad_command, new_plan, on_signal
        self.units = [ComfyUnit(instance, self.settings) for instance in ctx.instances]
        self.log_files = {unit.name: LogFile(Path(self.settings.log_dir) / f"{unit.name}.log") for unit in self.units}
        self.generation = 0  # one counter for every unit, so a worker's message names exactly one process
        self.plan_seconds = 0.0
        self.known_flags: set[str] | None = None
        self.flags_checked = False
        self.prewarmed_plan: Any = None
        self.prewarm_stop = threading.Event()

    def __iter__(self):
        return iter(self.units)

    def owner(self, child: Child) -> ComfyUnit | None:
        return next((u for u in self.units if u.proc is not None and u.proc.child is child), None)

    def by_generation(self, generation: int) -> ComfyUnit | None:
        return next((u for u in self.units if u.proc is not None and u.proc.generation == generation), None)

    # ===========================================================================================================
    # Plan and launch

    def make_plan(self, unit: ComfyUnit) -> None:
        """The unit's first plan starts where an earlier run stepped down to (plan/memory.py); later ones follow
        the unit's own `degrade`."""
        started = time.monotonic()
        if unit.plan is None:
            unit.plan, unit.memory_key = self.ctx.starting(unit.instance)
            unit.degrade = dict(unit.plan.degrade)
        else:
            unit.plan = self.ctx.plan(degrade=unit.degrade, instance=unit.instance)
        self.plan_seconds = time.monotonic() - started
        log_plan(unit.plan)

    def launch(self, unit: ComfyUnit) -> None:
        """Start this unit's ComfyUI on its current plan."""
        if self.rt.stopping or unit.proc is not None:
            return
        assert unit.plan is not None
        self.prepare_workflows(unit)
        settings = self.settings
        if not settings.comfyui_command and not (Path(settings.comfyui_dir) / "main.py").is_file():
            self.bad_command([Problem("COMFYUI_DIR", f"{settings.comfyui_dir} has no main.py",
                                      "point COMFYUI_DIR at the ComfyUI checkout, or set COMFYUI_COMMAND")])
            return
        known = self.comfy_flags()
        if self.rt.stopping:
            return  # a signal came while --help ran
        try:
            line = comfyui.build_launch(unit.plan, settings, self.ctx.catalog, known, self.rt.environ, unit.instance)
        except OSError as exc:
            self.bad_command([Problem("COMFYUI_DATA_DIR", f"cannot prepare ComfyUI's folders: {exc}",
                                      "make COMFYUI_DATA_DIR writable")])
            return
        if known is not None and not line.custom:
            problems = comfyui.check_flags(line.argv[2:], known, settings.comfyui_args)
            if problems:
                self.bad_command(problems)
                return
        try:
            line.reboot_marker.unlink()
        except FileNotFoundError:
            pass
        self.spawn(unit, line)

    def spawn(self, unit: ComfyUnit, line: comfyui.Launch) -> None:
        assert unit.plan is not None
        self.generation += 1
        generation = self.generation
        oom_kills = exits.oom_kill_count()
        bind = {"instance": unit.name} if unit.instance.per_gpu else {}
        child, reader = self.rt.spawn_logged(line.argv, name=unit.name, source="comfyui", env=line.env, cwd=line.cwd,
                                             log_file=self.log_files[unit.name],
                                             on_line=lambda text: self.on_line(unit, text), generation=generation,
                                             **bind)
        unit.started(Incarnation(generation=generation, child=child, reader=None if reader.closed else reader,
                                 launch=line, plan=unit.plan, prober=self.prober(line.url, generation),
                                 oom_kills=oom_kills))
        log.info("comfyui.spawned", generation=generation, pid=child.pid, argv=list(line.argv), cwd=str(line.cwd),
                 url=line.url, restart=unit.restarts, custom_command=line.custom, instance=unit.name,
                 cuda_visible_devices=unit.instance.cuda_visible_devices)
        self.rt.set_timer(unit.timer("startup"), self.settings.startup_timeout, lambda: self.startup_timeout(unit))

    def prober(self, url: str, generation: int) -> workers.Prober:
        return workers.Prober(url, generation, self.rt.post, interval=self.settings.health_interval,
                              timeout=self.settings.health_timeout, check_queue=True)

    def comfy_flags(self) -> set[str] | None:
        """The installed ComfyUI's flags, from its --help (once per supervisor run)."""
        if self.flags_checked or self.settings.comfyui_command:
            return self.known_flags
        self.flags_checked = True
        cached = comfyui.cached_flags(self.settings)
        if cached is not None:  # the same checkout and Python as last time: --help would say the same
            self.known_flags = cached
            log.info("comfyui.flags_read", flags=len(cached), seconds=0.0, cached=True)
            return self.known_flags
        argv, cwd = comfyui.help_argv(self.settings)
        started = time.monotonic()
        code, lines = self.run_helper(argv, cwd, comfyui.child_env(self.settings, self.rt.environ, self.ctx.catalog))
        if code == 0:
            self.known_flags = comfyui.parse_help("\n".join(lines))
            comfyui.store_flags(self.settings, self.known_flags)
            log.info("comfyui.flags_read", flags=len(self.known_flags), seconds=round(time.monotonic() - started, 3),
                     cached=False)
        elif not self.rt.stopping:
            log.warning("comfyui.flags_unchecked", returncode=code, last_lines=lines[-5:],
                        message="`main.py --help` failed, so the flags are not checked before launch")
        return self.known_flags

    def run_helper(self, argv: list[str], cwd: Path, env: dict[str, str]) -> tuple[int | None, list[str]]:
        """Run a short command to completion from the loop's thread, still reaping and noticing stop signals."""
        init = self.rt.init
        child = init.spawn(argv, name="helper", cwd=cwd, env=env)
        reader = LineReader(child.output if child.output is not None else -1, "helper", keep=5000, emit=False)
        if child.output is not None:
            init.watch(reader.fd, reader.on_readable)
        else:
            reader.closed = True
        deadline = time.monotonic() + HELP_TIMEOUT
        while child.running and time.monotonic() < deadline and not init.stop_requested():
            init.pump(min(MAX_SLEEP, max(0.0, deadline - time.monotonic())))
        if child.running:
            init.signal(child, signal.SIGKILL)
        if not reader.closed:
            reader.drain()
            init.unwatch(reader.fd)
            reader.close()
        if init.stop_requested():
            for sig in init.take_signals():
                self.on_signal(sig)
        return child.returncode, list(reader.last_lines)

    def prepare_workflows(self, unit: ComfyUnit) -> None:
        try:
            from ..workflows import prepare
        except (ImportError, AttributeError):
            return
        try:
            user_root = comfyui.data_dirs(self.settings, unit.instance)["--user-directory"]
            for warning in prepare(unit.plan, self.settings, user_root) or []:
                log.warning("workflows.warning", message=str(warning))
        except Exception as exc:  # their module: report loudly, ComfyUI still starts
            log.error("workflows.prepare_failed", error=f"{type(exc).__name__}: {exc}")

    # ===========================================================================================================
    # Exits: restart, step down, give up

    def on_exit(self, unit: ComfyUnit) -> exits.ExitInfo:
        self.rt.cancel_timer(unit.timer("startup"), unit.timer("kill"))
        outcome = unit.on_exit(self.rt.stopping, exits.oom_kill_count())
        info, decision = outcome.info, outcome.decision
        self.rt.status.append_exit(outcome.record)
        level = log.info if self.rt.stopping or info.klass in (exits.REBOOT, exits.SIGNAL) else log.error
        level("comfyui.exited", **outcome.record)
        if decision is None:  # stopping
            return info
        if outcome.step_down:
            self.step_down(unit, f"ComfyUI exited out of memory: {info.message}")
        elif unit.step_down_pending and decision.restart:
            self.step_down(unit, self.prompt_oom_why(unit))
        if not decision.restart:
            self.give_up(info, decision.reason)
            return info
        log.info("supervise.restart_scheduled", delay_s=decision.delay, exit_class=info.klass,
                 failures=decision.failures, failure=decision.failure, reason=decision.reason)
        self.rt.set_timer(unit.timer("restart"), decision.delay, lambda: self.launch(unit))
        return info

    def step_down(self, unit: ComfyUnit, why: str) -> bool:
        """One rung down the ladder of every model that has one left, remembered for the next start. False at the
        bottom of the ladder."""
        unit.step_down_pending = False
        before = {m.feature: m for m in unit.plan.models} if unit.plan else {}
        features = unit.step_down()
        if not features:
            log.warning("supervise.no_downgrade", why=why, message="out of memory, but the plan has no lighter step left")
            return False
        old = unit.plan
        self.make_plan(unit)
        for feature in features:
            log.warning("supervise.downgrade", feature=feature, step=unit.degrade[feature],
                        before=model_brief(before.get(feature)), after=model_brief(unit.plan.model(feature)),
                        why=why, new_downloads=[d.dest for d in unit.plan.missing()])
        self.remember(unit, unit.degrade, why)
        self.new_plan(unit, old)
        return True

    def remember(self, unit: ComfyUnit, degrade: dict[str, int], why: str) -> None:
        if not unit.memory_key:
            return
        file = memory.path(self.settings)
        try:
            memory.save(file, unit.memory_key, degrade, why)
        except OSError as exc:
            log.warning("supervise.step_down_not_remembered", file=str(file), error=str(exc),
                        message="the next start begins at the top of the ladder again")

    def prompt_oom_why(self, unit: ComfyUnit) -> str:
        last = unit.last_oom or {}
        return (f"{unit.ooms.get(last.get('rung', ''), 0)} out-of-memory errors inside prompts on "
                f"{last.get('rung')} (OOM_STEP_DOWN_AFTER={self.settings.oom_step_down_after}), the last in "
                f"{last.get('node_type')} (node {last.get('node_id')}): {last.get('message')}")

    def on_prompt_oom(self, unit: ComfyUnit, data: dict[str, Any]) -> None:
        """ComfyUI survived an out-of-memory error inside a prompt: count it, and step down when the policy says."""
        action, count = unit.on_prompt_oom(data)
        log.warning("comfyui.prompt_oom", prompt_id=data.get("prompt_id"), node_id=data.get("node_id"),
                    node_type=data.get("node_type"), message=data.get("message"), rung=unit.rung(),
                    count_on_rung=count, policy=self.settings.oom_step_down, action=action)
        if action == REMEMBER:
            degrade = unit.lower_rung()
            if degrade != unit.degrade:
                log.warning("supervise.step_down_remembered", degrade=degrade, why=self.prompt_oom_why(unit),
                            message="OOM_STEP_DOWN=next-start: the next start begins on the lower rung")
                self.remember(unit, degrade, self.prompt_oom_why(unit))
        elif action == STEP_DOWN_WHEN_IDLE:
            log.info("supervise.step_down_waiting", message="restarting on a lower rung once no prompt is queued")
        elif action == STEP_DOWN_NOW:
            self.step_down_in_place(unit)

    def step_down_in_place(self, unit: ComfyUnit) -> None:
        """OOM_STEP_DOWN=idle, ComfyUI idle: restart it on the next rung now."""
        if self.step_down(unit, self.prompt_oom_why(unit)):
            self.kill(unit, exits.STEP_DOWN)
        else:
            unit.retry = None

    def restart_summary(self, unit: ComfyUnit) -> dict[str, Any]:
        now = time.monotonic()
        summary: dict[str, Any] = {"count": unit.restarts, "failures_in_window": unit.policy.failures(now)}
        if unit.backoff:
            summary["next_delay_s"] = unit.backoff[0]
        return summary

    # ===========================================================================================================
    # Killing (hang, startup timeout) and stopping

    def startup_timeout(self, unit: ComfyUnit) -> None:
        proc = unit.proc
        if proc is not None and proc.answered_at is None:
            log.error("comfyui.startup_timeout", seconds=self.settings.startup_timeout, pid=proc.child.pid,
                      message="ComfyUI is alive but never answered GET /system_stats; restarting it")
            self.kill(unit, exits.STARTUP_TIMEOUT)

    def kill(self, unit: ComfyUnit, why: str) -> None:
        """TERM the group now, KILL it after SHUTDOWN_GRACE if it is still there."""
        if not unit.kill_reason(why):
            return
        child = unit.proc.child  # type: ignore[union-attr]
        log.warning("comfyui.killing", reason=why, pid=child.pid, grace_s=self.settings.shutdown_grace)
        self.rt.init.signal(child, signal.SIGTERM)
        self.rt.set_timer(unit.timer("kill"), self.settings.shutdown_grace,
                          lambda: self.rt.init.signal(child, signal.SIGKILL))

    def processes(self) -> list[Incarnation]:
        """The units' current ComfyUI processes (one that exited is gone once its exit is handled)."""
        return [u.proc for u in self.units if u.proc is not None]

    # ===========================================================================================================
    # What the workers found

    def on_line(self, unit: ComfyUnit, line: str) -> None:
        what = unit.on_line(line)
        proc = unit.proc
        if what is None or proc is None:
            return
        if what == "ready":
            proc.prober.poke.set()
        elif what == "prompt_oom":
            seen = set(filter(None, [(unit.last_oom or {}).get("prompt_id")]))
            workers.start(lambda: workers.find_prompt_oom(proc.launch.url, proc.generation, self.rt.post, proc.stop,
                                                          seen=seen), f"prompt-oom-{proc.generation}")
        elif what == "legacy_reboot":
            log.info("comfyui.restarting_in_place", pid=proc.child.pid,
                     why="ComfyUI-Manager restarts ComfyUI in place (os.execv)")
            proc.restart_in_place(self.prober(proc.launch.url, proc.generation))
            self.rt.set_timer(unit.timer("startup"), self.settings.startup_timeout, lambda: self.startup_timeout(unit))

    def on_message(self, unit: ComfyUnit, m: workers.Message, files_in_place: bool) -> None:
        proc = unit.proc
        assert proc is not None
        if m.kind == "answering":
            seconds = unit.on_answering(m.data)
            self.rt.cancel_timer(unit.timer("startup"))
            log.info("comfyui.answering", generation=proc.generation, pid=proc.child.pid, seconds=seconds,
                     comfyui_version=proc.version)
            self.start_checks(unit, files_in_place)
        elif m.kind == "liveness":
            failures, hung = unit.on_liveness(m.data)
            if failures < 0:
                log.info("comfyui.liveness_recovered", after_failures=-failures)
            elif failures:
                log.warning("comfyui.liveness_failed", failures=failures, limit=self.settings.health_failures,
                            error=m.data.get("error"), seconds=m.data.get("seconds"))
            if hung:
                self.kill(unit, exits.HANG)
            elif unit.step_down_pending and proc.queue == 0 and not proc.killed_for:
                self.step_down_in_place(unit)
        elif m.kind == "prompt_oom":
            self.on_prompt_oom(unit, m.data)
        elif m.kind == "retry_queued":
            log.info("comfyui.prompt_retry_queued", original=m.data.get("original"), prompt_id=m.data.get("prompt_id"),
                     rung=unit.rung())
        elif m.kind == "retried":
            (log.info if m.data.get("ok") else log.warning)(
                "comfyui.prompt_retried", ok=m.data.get("ok"), original=m.data.get("original"),
                prompt_id=m.data.get("prompt_id"), message=m.data.get("message"), seconds=m.data.get("seconds"),
                rung=unit.rung())
        elif m.kind == "checked":
            unit.on_checked(m.data)
            self.rt.status.set(workflows={"checked": True, "ok": not proc.problems, "problems": proc.problems,
                                          "blocks_ready": self.settings.check_blocks_ready})
        elif m.kind == "warmed":
            unit.on_warmed(m.data)
            if proc.warmup_error is None:
                log.info("supervise.warmup_done", seconds=proc.warmup_s, workflow=str(self.settings.warmup_workflow))
            else:
                log.error("supervise.warmup_failed", seconds=proc.warmup_s, error=proc.warmup_error,
                          workflow=str(self.settings.warmup_workflow))
            self.rt.status.set(warmup={"ok": proc.warmup_error is None, "seconds": proc.warmup_s,
                                       "error": proc.warmup_error})
        elif m.kind == "readiness_done":
            proc.checks_done = time.monotonic()

    def start_checks(self, unit: ComfyUnit, files_in_place: bool) -> None:
        """Workflow check + warmup, once ComfyUI answers and the files are in place (both are needed)."""
        proc = unit.proc
        if proc is None or proc.answered_at is None or proc.checks_started is not None or self.rt.stopping:
            return
        if not files_in_place:
            return
        proc.checks_started = time.monotonic()
        check = _workflow_checker(self.settings)
        workers.start(lambda: workers.readiness(proc.launch.url, proc.generation, self.rt.post, proc.stop,
                                                plan=proc.plan, settings=self.settings, check=check),
                      f"readiness-{proc.generation}")

    def on_ready(self, unit: ComfyUnit) -> None:
        """This unit's ComfyUI is ready: queue the prompt that ran out of memory again (OOM_RETRY_PROMPT)."""
        self.start_prewarm(unit.plan)
        proc, retry = unit.proc, unit.retry
        if proc is None or retry is None:
            return
        unit.retry = None
        workers.start(lambda: workers.resubmit(proc.launch.url, proc.generation, self.rt.post, proc.stop,
                                               graph=retry["graph"], extra=retry["extra"], original=retry["original"],
                                               deadline=max(600.0, self.settings.startup_timeout)),
                      f"retry-{proc.generation}")

    def start_prewarm(self, plan: Any) -> None:
        if not self.settings.prewarm or plan is None or self.prewarmed_plan is plan:
            return
        self.prewarmed_plan = plan
        self.prewarm_stop.set()
        self.prewarm_stop = threading.Event()
        stop = self.prewarm_stop
        log.info("prewarm.started", files=len(plan.downloads))
        self.rt.status.set(prewarm={"state": "running"})
        workers.start(lambda: workers.prewarm(0, self.rt.post, stop, plan=plan,
                                              models_dir=Path(self.settings.models_dir)), "prewarm")

    def on_prewarmed(self, data: dict[str, Any]) -> None:
        if data.get("error"):
            log.warning("prewarm.failed", error=data["error"])
            self.rt.status.set(prewarm={"state": "failed", "error": data["error"]})
            return
        result = data["result"]
        log.info("prewarm.done", **result.to_dict())
        self.rt.status.set(prewarm={"state": "stopped" if result.stopped else "done", **result.to_dict()})


def _workflow_checker(settings: Any) -> Callable[..., list] | None:
    if not settings.check_workflows:
        return None
    try:
        from ..workflows import check_live
    except (ImportError, AttributeError):
        return None
    return check_live
