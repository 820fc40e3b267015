"""`supervisor run`, the container's PID 1: plan -> fetch while ComfyUI starts -> supervise -> shut down.

Read it like gunicorn's arbiter. `run` sets up and enters `loop`. The loop sleeps in `Init.pump` until something
happens and hands each thing to one small handler:

    on_signal        TERM/INT/QUIT: shut down (a second TERM/INT kills at once); HUP/USR1/USR2: forward to ComfyUI
    on_child_exit    a ComfyUI: classify, then restart (a rung lower after out of memory) or give up;
                     a side service: restart it; a `git pull`: note it, launch ComfyUI when the last one is done
    on_message       results of the worker threads: prober, readiness checks, fetch, drain, prewarm
    run_timers       restart backoff, startup timeout, kill escalation, drain and grace deadlines

The `Supervisor` owns every part: the ComfyUI units (units.py, each a unit.py `ComfyUnit` with its plan, process,
readiness and restarts), the fetch job (fetchjob.py), the side processes (sidecars.py) and the shutdown
(shutdown.py). The parts share what the loop lends them (runtime.py: Init, timers, inbox, status), never the loop
itself; they change only when the loop calls them, and worker threads only post messages (workers.py). After
every round `update_status` recomputes readiness and publishes the state in one place. Only `Init.reap` calls
waitpid.
"""

from __future__ import annotations

import os
import signal
import sys
import threading
import time
from pathlib import Path
from typing import Any, Mapping

import structlog

from .. import logs
from ..plan.context import Context
from ..plan.instances import pod_files
from . import activity, exits, workers
from .access import Access, bind_address
from .fetchjob import FetchJob
from .init import STOP_SIGNALS, Child, limit_malloc_arenas, release_free_memory, signal_name
from .runtime import Runtime
from .shutdown import Shutdown
from .sidecars import Sidecars
from .status import plan_summary, start_server
from .unit import ComfyUnit
from .units import Units

log = structlog.get_logger("supervise")  # lazy: uses the configuration at each call


def run(ctx: Context, args: Any = None, environ: Mapping[str, str] | None = None) -> int:
    """Entry point of `supervisor run`: exits the process with ComfyUI's code (or 128+N when signal N ended it).

    The exit skips the interpreter's teardown (about 70 ms with these modules loaded, measured): everything that
    matters is done by then (children reaped, fetch stopped, log files closed) and the streams are flushed here,
    so `docker stop` waits for ComfyUI, not for module garbage collection."""
    limit_malloc_arenas()
    code = Supervisor(ctx, os.environ if environ is None else environ).run()
    for stream in (sys.stdout, sys.stderr):
        try:
            stream.flush()
        except (OSError, ValueError):
            pass
    os._exit(code)


class Supervisor:
    def __init__(self, ctx: Context, environ: Mapping[str, str]):
        self.ctx, self.settings = ctx, ctx.settings
        self.rt = Runtime(self.settings, environ)
        self.status = self.rt.status
        self.started = time.monotonic()
        self.units = Units(self.rt, ctx, give_up=self.give_up, bad_command=self.give_up_config,
                           new_plan=self.on_new_plan, on_signal=self.on_signal)
        self.sidecars = Sidecars(self.rt, ctx, nodes_updated=self.launch_all)
        self.fetch: FetchJob | None = None
        self.fetch_count = 0
        self.refetch = False
        self.outputs = _output_sync(self.settings, environ, self.rt.post)  # ENABLE_R2_SYNC, else None
        self.shutdown = Shutdown(self.rt, self.units, self.sidecars, fetch=lambda: self.fetch, forward=self.forward,
                                 uploads=self.outputs)
        self.gave_up: dict[str, Any] | None = None
        self.was_ready = False
        self.server = None
        self.activity = activity.Activity(self.status)
        self.watch_stop = threading.Event()  # the activity watcher (queue, prompts, GPU memory)

    @property
    def plan(self):
        """What the pod fetches: every unit's files, each once (plan/instances.py)."""
        return pod_files([unit.plan for unit in self.units])

    # ===========================================================================================================
    # Lifecycle

    def run(self) -> int:
        self.rt.init.install()
        address = bind_address(self.settings)
        self.server = start_server(address, self.status, Access.from_settings(self.settings))
        log.info("supervise.start", pid=os.getpid(), pid1=self.rt.init.pid1, subreaper=self.rt.init.subreaper,
                 status_addr=f"{address[0]}:{address[1]}")
        try:
            for unit in self.units:
                self.units.make_plan(unit)
            self.sidecars.start_services()
            if self.outputs is not None:
                self.outputs.start()
            workers.start(lambda: activity.watch(lambda: activity.answering_urls(self.status), self.rt.post,
                                                 self.watch_stop,
                                                 min(activity.POLL_INTERVAL, self.settings.health_interval)),
                          "activity")
            self.start_fetch()
            if not self.sidecars.update_nodes():
                self.launch_all()
            code = self.loop()
        except BaseException as exc:  # a bug must not leave ComfyUI running without a supervisor
            log.exception("supervise.crashed", error=f"{type(exc).__name__}: {exc}")
            self.shutdown.emergency_stop()
            code = 70  # EX_SOFTWARE
        log.info("supervise.exit", code=code, restarts=self.restarts(), orphans_reaped=self.rt.init.orphans_reaped,
                 uptime_s=round(time.monotonic() - self.started, 3))
        self.close()
        return code

    def loop(self) -> int:
        rt = self.rt
        while self.shutdown.exit_code is None:
            self.update_status()
            rt.init.pump(rt.sleep_time())
            self.status.beat()
            for sig in rt.init.take_signals():
                self.on_signal(sig)
            for child in rt.init.take_exited():
                self.on_child_exit(child)
            for message in rt.messages():
                self.on_message(message)
            rt.run_timers()
            self.shutdown.maybe_finish()
        return self.shutdown.exit_code

    def close(self) -> None:
        self.watch_stop.set()
        if self.server is not None:
            self.server.server_close()
        self.rt.close()
        for log_file in self.units.log_files.values():
            log_file.close()

    def launch_all(self) -> None:
        for unit in self.units:
            self.units.launch(unit)

    def output_dir(self, url: Any) -> Path | None:
        """The output folder of the ComfyUI at `url` (its last --output-directory; one per GPU with instances)."""
        for proc in self.units.processes():
            argv = list(proc.launch.argv)
            if proc.launch.url == url and "--output-directory" in argv:
                return Path(argv[len(argv) - 1 - argv[::-1].index("--output-directory") + 1])
        return None

    def restarts(self) -> int:
        return sum(unit.restarts for unit in self.units)

    # ===========================================================================================================
    # Fetch

    def start_fetch(self) -> None:
        """Fetch the current plan's files in a thread; one fetch at a time (a new plan waits for the old fetch)."""
        if self.fetch is not None and self.fetch.running:
            self.refetch = True
            self.fetch.stop.set()
            return
        self.refetch = False
        self.fetch_count += 1
        self.fetch = FetchJob(number=self.fetch_count, plan=self.plan)
        self.fetch.start(self.settings, self.rt.post, self.status.fetch_progress)
        self.status.merge("fetch", started_at=time.time(), progress=None, **self.fetch.status())

    def on_fetched(self, m: workers.Message) -> None:
        job = self.fetch
        if job is None or m.generation != job.number:
            return
        job.finish(m.data, self.settings.dry_run)
        self.status.merge("fetch", **job.status())
        release_free_memory()  # the download's buffers are free now; keep PID 1 small for the pod's life
        if self.refetch and not self.rt.stopping:
            self.start_fetch()
            return
        for unit in self.units:
            self.units.start_checks(unit, job.files_in_place)

    def on_new_plan(self, unit: ComfyUnit, old: Any) -> None:
        """A unit stepped down: its next start needs the new plan's files (the restart also retries a failed
        fetch)."""
        if unit.plan is not None and (unit.plan.missing() or old.missing()):
            self.start_fetch()

    # ===========================================================================================================
    # Signals, children, messages

    def on_signal(self, sig: int) -> None:
        if sig in STOP_SIGNALS:
            self.shutdown.begin(sig, gave_up=self.gave_up is not None)
        else:
            self.forward(sig)

    def forward(self, sig: int) -> None:
        running = [proc for proc in self.units.processes() if proc.running]
        if not running:
            log.info("supervise.signal_ignored", signal=signal_name(sig), message="ComfyUI is not running")
        for proc in running:
            proc.forwarded.add(sig)
            self.rt.init.signal(proc.child, sig)
            log.info("supervise.forwarded", signal=signal_name(sig), pid=proc.child.pid)

    def on_child_exit(self, child: Child) -> None:
        reader = self.rt.finish_output(child)
        unit = self.units.owner(child)
        if unit is None:
            self.sidecars.on_exit(child, list(reader.last_lines) if reader else [])
            return
        info = self.units.on_exit(unit)
        if self.rt.stopping and self.shutdown.final_code is None:
            self.shutdown.final_code = info.returncode
        elif not self.rt.stopping and self.fetch is not None and not self.fetch.running \
                and not self.fetch.files_in_place:
            self.start_fetch()  # a restart also retries a fetch that failed

    def on_message(self, m: workers.Message) -> None:
        if m.kind == "fetched":
            self.on_fetched(m)
        elif m.kind == "prewarmed":
            self.units.on_prewarmed(m.data)
        elif m.kind == "drained":
            self.shutdown.on_drained(m.generation, m.data)
        elif m.kind == "activity":
            for prompt in self.activity.on_message(m.data):
                if self.outputs is not None and prompt["outputs"]:
                    self.outputs.add(prompt["prompt_id"], prompt["outputs"], self.output_dir(m.data.get("url")))
        elif m.kind == "outputs":
            self.status.set(outputs=m.data)
        else:
            unit = self.units.by_generation(m.generation)
            if unit is not None:  # else: about a ComfyUI that is gone
                self.units.on_message(unit, m, self.fetch is not None and self.fetch.files_in_place)

    # ===========================================================================================================
    # Readiness and the status page: recomputed from the state after every round

    def pod_reasons(self) -> list[str]:
        """Why no ComfyUI of the pod can be ready: a shutdown, plan errors, the files, the node updates."""
        if self.rt.stopping:
            return ["shutting down"]
        reasons: list[str] = []
        errors = list(dict.fromkeys(e for unit in self.units if unit.plan for e in unit.plan.errors))
        if errors:
            reasons.append("plan has errors: " + "; ".join(errors))
        if self.fetch is None:
            reasons.append("downloading the plan's files")
        else:
            reason = self.fetch.not_ready_reason(_progress_text(self.status.get("fetch", {})))
            if reason:
                reasons.append(reason)
        if self.sidecars.waiting_for_nodes:
            reasons.append("updating the custom nodes before ComfyUI starts")
        return reasons

    def not_ready_reasons(self, shared: list[str], own: dict[str, list[str]]) -> list[str]:
        """Why the pod is not ready (empty: it is), from the pod-wide reasons and each unit's own. With several
        units, READY_WHEN=any needs only one of them."""
        if self.rt.stopping or self.sidecars.waiting_for_nodes:
            return shared  # the units' own reasons would only repeat it
        if len(own) == 1:
            return shared + next(iter(own.values()))
        if self.settings.ready_when == "any" and any(not reasons for reasons in own.values()):
            return shared
        return shared + [f"{name}: {reason}" for name, reasons in own.items() for reason in reasons]

    def phase(self, ready: bool) -> str:
        if self.gave_up is not None:
            return "failed"
        if self.rt.stopping:
            return "stopping"
        if ready:
            return "ready"
        if self.sidecars.waiting_for_nodes:
            return "updating_nodes"
        phases = [unit.phase() for unit in self.units]
        early = [p for p in phases if p in ("backoff", "launching", "starting")]
        if early:
            return early[0]
        if self.fetch is not None and self.fetch.running:
            return "fetching"
        return "checking" if "checking" in phases else "not_ready"

    def update_status(self) -> None:
        shared = self.pod_reasons()
        own = {unit.name: unit.not_ready_reasons() for unit in self.units}
        reasons = self.not_ready_reasons(shared, own)
        ready = not reasons
        for unit in self.units:
            if not shared and not own[unit.name] and unit.proc is not None and unit.proc.ready_at is None:
                self.on_ready(unit)
        if ready != self.was_ready:
            if not ready and self.was_ready and not self.rt.stopping:
                log.warning("supervise.not_ready", reasons=reasons)
            self.was_ready = ready
        first = self.units.units[0]
        init = self.rt.init
        self.status.set(phase=self.phase(ready), ready=ready, not_ready=reasons,
                        live=all(unit.live() for unit in self.units), comfyui=first.describe(ready),
                        plan=plan_summary(first.plan), restarts=self.units.restart_summary(first),
                        services=self.sidecars.describe(), oom=first.oom_status(),
                        instances=[self.describe_unit(unit, shared if self.rt.stopping else shared + own[unit.name])
                                   for unit in self.units],
                        supervisor={"pid": os.getpid(), "pid1": init.pid1, "subreaper": init.subreaper,
                                    "orphans_reaped": init.orphans_reaped, "gave_up": self.gave_up,
                                    "restarts": self.restarts()})

    def describe_unit(self, unit: ComfyUnit, reasons: list[str]) -> dict[str, Any]:
        """One instance for /status (and /readyz/<name>): ready when the pod-wide reasons and its own are gone."""
        return {**unit.instance.to_dict(), **unit.describe(not reasons), "ready": not reasons, "not_ready": reasons,
                "plan": plan_summary(unit.plan), "restarts": self.units.restart_summary(unit), "oom": unit.oom_status()}

    def on_ready(self, unit: ComfyUnit) -> None:
        proc = unit.proc
        assert proc is not None
        proc.ready_at = time.monotonic()
        phases = {
            "plan_s": round(self.units.plan_seconds, 3),
            "fetch_s": self.fetch.seconds if self.fetch else None,
            "comfyui_start_s": round((proc.answered_at or proc.ready_at) - proc.child.started, 3),
            "check_s": proc.checked_s,
            "warmup_s": proc.warmup_s,
            "since_supervisor_start_s": round(proc.ready_at - self.started, 3),
            "since_process_start_s": _since_process_start(),
        }
        log.info("supervise.ready", generation=proc.generation, pid=proc.child.pid, restarts=self.restarts(),
                 url=proc.launch.url, phases=phases, instance=unit.name)
        self.status.set(phases=phases)
        self.units.on_ready(unit)

    # ===========================================================================================================
    # Giving up

    def give_up(self, info: exits.ExitInfo, reason: str) -> None:
        code = info.returncode or 1
        self.gave_up = {"reason": reason, "exit": info.to_dict(), "code": code}
        log.error("supervise.gave_up", reason=reason, exit_class=info.klass, message=info.message,
                  advice=info.advice or None, flag=info.flag, restarts=self.restarts(), code=code)
        self.shutdown.final_code = code
        self.shutdown.begin(signal.SIGTERM, why=f"gave up: {reason}", gave_up=True)

    def give_up_config(self, problems: list[Any]) -> None:
        text = [str(p) for p in problems]
        self.gave_up = {"reason": "ComfyUI cannot be launched", "problems": text, "code": 2}
        log.error("comfyui.bad_command", problems=text, message="ComfyUI is not started; restarting cannot help")
        if logs.human_output():  # with JSON lines, the event above is the whole story
            print("ComfyUI cannot be launched:\n" + "\n".join(f"  - {t}" for t in text), file=sys.stderr, flush=True)
        self.shutdown.final_code = 2
        self.shutdown.begin(signal.SIGTERM, why="bad ComfyUI command line", gave_up=True)


def _output_sync(settings: Any, environ: Mapping[str, str], post: Any) -> Any:
    """ENABLE_R2_SYNC: the worker that uploads finished outputs (supervisor/outputs/sync.py), or None."""
    if not settings.enable_r2_sync:
        return None
    from ..outputs.sync import OutputSync

    return OutputSync(settings, environ, post)


def _progress_text(fetch: Mapping[str, Any]) -> str:
    total = (fetch.get("progress") or {}).get("total") or {}
    if not total.get("size"):
        return ""
    eta = f", about {total['eta_s']:.0f} s left" if total.get("eta_s") is not None else ""
    from ..plan.hardware import format_size  # binary units with enough digits: never "0.0 of 0.0 GB (13.5%)"

    return f": {format_size(total.get('bytes', 0))} of {format_size(total['size'])} ({total.get('percent', 0)}%){eta}"


def _since_process_start() -> float | None:
    try:
        import psutil

        return round(time.time() - psutil.Process().create_time(), 3)
    except Exception:
        return None
