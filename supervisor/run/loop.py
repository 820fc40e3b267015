"""`supervisor run`, the container's PID 1: plan -> fetch while ComfyUI starts -> supervise -> shut down.

ComfyUI needs no weights to start (it only lists files), so it is launched while the fetch runs, and the pod is
ready when both are done: a cold start costs the longer of the two, not their sum.

Read it like gunicorn's arbiter. `run` sets up and enters `loop`. The loop sleeps in `Init.pump` until something
happens and hands each thing to one small handler:

    on_signal        TERM/INT/QUIT: shut down (a second TERM/INT kills at once); HUP/USR1/USR2: forward to ComfyUI
    on_child_exit    ComfyUI: classify, then restart (on a lighter plan after out of memory) or give up;
                     a side service: restart it; a `git pull`: note it, launch ComfyUI when the last one is done
    on_message       results of the worker threads: prober, readiness checks, fetch, drain, prewarm
    run_timers       restart backoff, startup timeout, kill escalation, drain and grace deadlines

After every handler, `update_status` recomputes the phase and readiness from the state, in one place
(readiness.py); stopping (a hung ComfyUI, or everything at shutdown) is in shutdown.py. Both are mixins of
`Supervisor`, so the state has one owner. Only the loop changes state; worker threads post messages (workers.py).
Only `Init.reap` calls waitpid.
"""

from __future__ import annotations

import argparse
import os
import queue
import signal
import sys
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Mapping

import structlog

from . import comfyui, exits, services, workers
from .comfyui import Launch
from .context import Context
from .errors import Problem
from .init import Child, Init, limit_malloc_arenas, release_free_memory, signal_name
from .output import LineReader, LogFile
from .plan import Plan
from .readiness import Readiness, model_brief, plan_summary
from .report import log_plan
from .restart import RestartPolicy
from .shutdown import STOP_SIGNALS, Shutdown
from .status import Status, start_server

log = structlog.get_logger("supervise")  # lazy: uses the configuration at each call
MAX_SLEEP = 1.0  # the loop reaps at least this often even if a SIGCHLD were lost
HELP_TIMEOUT = 60.0


def run(ctx: Context, args: argparse.Namespace | None = None, environ: Mapping[str, str] | None = None) -> int:
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


@dataclass(eq=False)
class Incarnation:
    """One ComfyUI process and what is known about it."""

    generation: int
    child: Child
    reader: LineReader
    launch: Launch
    plan: Plan
    prober: workers.Prober
    oom_kills: int
    answered_at: float | None = None
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


@dataclass
class FetchJob:
    number: int
    plan: Plan
    stop: threading.Event
    thread: threading.Thread | None
    started: float
    state: str = "running"  # running | done | failed | dry_run | unavailable | interrupted
    seconds: float | None = None
    failed: dict[str, str] = field(default_factory=dict)
    message: str = ""


class Supervisor(Readiness, Shutdown):
    def __init__(self, ctx: Context, environ: Mapping[str, str]):
        self.ctx, self.settings, self.environ = ctx, ctx.settings, environ
        self.init = Init()
        self.status = Status()
        self.policy = RestartPolicy.from_settings(self.settings)
        self.inbox: queue.SimpleQueue[workers.Message] = queue.SimpleQueue()
        self.timers: dict[str, tuple[float, Callable[[], None]]] = {}
        self.started = time.monotonic()
        self.plan: Plan | None = None
        self.plan_seconds = 0.0
        self.degrade: dict[str, int] = {}
        self.comfy: Incarnation | None = None
        self.generation = 0
        self.restarts = 0
        self.fetch: FetchJob | None = None
        self.fetch_count = 0
        self.refetch = False
        self.services: list[services.Service] = []
        self.service_readers: dict[int, LineReader] = {}
        self.pulls: dict[Child, tuple[Path, LineReader]] = {}
        self.waiting_for_nodes = False
        self.known_flags: set[str] | None = None
        self.flags_checked = False
        self.stopping = False
        self.stop_signal: int | None = None
        self.stop_began = 0.0
        self.killing = False
        self.gave_up: dict[str, Any] | None = None
        self.final_code: int | None = None
        self.exit_code: int | None = None
        self.prewarmed_plan: Plan | None = None
        self.prewarm_stop = threading.Event()
        self.was_ready = False
        self.log_dir = Path(self.settings.log_dir)
        self.comfy_log = LogFile(self.log_dir / "comfyui.log")
        self.server = None

    # ===========================================================================================================
    # Lifecycle

    def run(self) -> int:
        self.init.install()
        self.server = start_server(self.settings.status_addr, self.status)
        log.info("supervise.start", pid=os.getpid(), pid1=self.init.pid1, subreaper=self.init.subreaper,
                 status_addr=f"{self.settings.status_addr[0]}:{self.settings.status_addr[1]}")
        try:
            self.make_plan()
            self.start_services()
            self.start_fetch()
            if not self.update_nodes():
                self.launch()
            code = self.loop()
        except BaseException as exc:  # a bug must not leave ComfyUI running without a supervisor
            log.exception("supervise.crashed", error=f"{type(exc).__name__}: {exc}")
            self.emergency_stop()
            code = 70  # EX_SOFTWARE
        log.info("supervise.exit", code=code, restarts=self.restarts, orphans_reaped=self.init.orphans_reaped,
                 uptime_s=round(time.monotonic() - self.started, 3))
        self.close()
        return code

    def loop(self) -> int:
        while self.exit_code is None:
            self.update_status()
            self.init.pump(self.sleep_time())
            self.status.beat()
            for sig in self.init.take_signals():
                self.on_signal(sig)
            for child in self.init.take_exited():
                self.on_child_exit(child)
            self.read_inbox()
            self.run_timers()
            self.maybe_finish()
        return self.exit_code

    def close(self) -> None:
        if self.server is not None:
            self.server.server_close()
        self.comfy_log.close()
        for reader in list(self.service_readers.values()):
            reader.close()
        self.init.close()

    def emergency_stop(self) -> None:
        for child in list(self.init.children.values()):
            self.init.signal(child, signal.SIGTERM)
        deadline = time.monotonic() + min(self.settings.shutdown_grace, 2.0)
        while self.init.children and time.monotonic() < deadline:
            time.sleep(0.05)
            self.init.reap()
        for child in list(self.init.children.values()):
            self.init.signal(child, signal.SIGKILL)
        self.init.signal_rest(signal.SIGKILL)

    # ===========================================================================================================
    # Plan, fetch, launch

    def make_plan(self) -> None:
        started = time.monotonic()
        self.plan = self.ctx.plan(degrade=self.degrade or None)
        self.plan_seconds = time.monotonic() - started
        log_plan(self.plan)
        self.status.set(plan=plan_summary(self.plan))

    def start_fetch(self) -> None:
        """Fetch the current plan's files in a thread; one fetch at a time (a new plan waits for the old fetch)."""
        assert self.plan is not None
        if self.fetch is not None and self.fetch.state == "running":
            self.refetch = True
            self.fetch.stop.set()
            return
        self.refetch = False
        self.fetch_count += 1
        plan = self.plan
        job = FetchJob(number=self.fetch_count, plan=plan, stop=threading.Event(), thread=None,
                       started=time.monotonic())
        self.fetch = job
        fetch_plan = _fetch_function()
        if fetch_plan is None:
            self.fetch_unavailable(job)
            return
        log.info("fetch.started", job=job.number, files=len(plan.downloads), missing=len(plan.missing()),
                 missing_bytes=sum(d.size for d in plan.missing()), dry_run=self.settings.dry_run)
        job.thread = workers.start(
            lambda: workers.fetch(fetch_plan, job.number, self.post, job.stop, plan=plan, settings=self.settings,
                                  on_progress=self.status.fetch_progress), f"fetch-{job.number}")
        self.status.merge("fetch", state="running", job=job.number, started_at=time.time(), failed={},
                          missing=len(plan.missing()), missing_bytes=sum(d.size for d in plan.missing()))

    def fetch_unavailable(self, job: FetchJob) -> None:
        """Before the fetch module exists (or without it): fine if nothing is missing."""
        missing = job.plan.missing()
        job.seconds = 0.0
        if not missing:
            job.state = "done"
            log.info("fetch.nothing_to_do", files=len(job.plan.downloads))
        elif self.settings.dry_run:
            job.state = "dry_run"
            log.info("fetch.dry_run", missing=[{"dest": d.dest, "size": d.size, "source": d.source} for d in missing],
                     missing_bytes=sum(d.size for d in missing))
        else:
            job.state = "unavailable"
            job.message = f"{len(missing)} files missing and this build has no downloader (supervisor.fetch)"
            log.error("fetch.unavailable", missing=[d.dest for d in missing], message=job.message)
        self.status.merge("fetch", state=job.state, job=job.number, seconds=0.0, message=job.message,
                          missing=len(missing))

    def update_nodes(self) -> bool:
        """`git pull` in every custom node (UPDATE_NODES_ON_START). True if ComfyUI must wait for it: updating
        files under a running import could load half-updated code; the wait is bounded and overlaps the fetch."""
        if not self.settings.update_nodes_on_start:
            return False
        git = services.which("git", self.environ)
        repos = services.node_repos(self.settings.comfyui_dir)
        if not git or not repos:
            log.warning("services.node_update_skipped", git=bool(git), repos=len(repos),
                        message="no git" if not git
                        else f"no git checkouts in {self.settings.comfyui_dir}/custom_nodes")
            return False
        env = {**comfyui.child_env(self.settings, self.environ, self.ctx.catalog), "GIT_TERMINAL_PROMPT": "0"}
        log.info("services.node_update_started", repos=[r.name for r in repos])
        for repo in repos:
            child, reader = self.spawn_logged(services.git_pull_argv(git, repo), name=f"git:{repo.name}",
                                              source="git", env=env, repo=repo.name)
            self.pulls[child] = (repo, reader)
        self.waiting_for_nodes = True
        self.set_timer("node_update", services.NODE_UPDATE_DEADLINE, self.node_update_deadline)
        return True

    def node_update_deadline(self) -> None:
        names = [repo.name for repo, _ in self.pulls.values()]
        log.warning("services.node_update_timeout", repos=names, seconds=services.NODE_UPDATE_DEADLINE,
                    message="ComfyUI starts now; these pulls are stopped")
        for child in list(self.pulls):
            self.init.signal(child, signal.SIGKILL)
        self.nodes_done()

    def nodes_done(self) -> None:
        if self.waiting_for_nodes:
            self.waiting_for_nodes = False
            self.cancel_timer("node_update")
            self.launch()

    def launch(self) -> None:
        """Start ComfyUI on the current plan."""
        if self.stopping or self.comfy is not None:
            return
        assert self.plan is not None
        if self.fetch is not None and self.fetch.state in ("failed", "unavailable", "interrupted") \
                and self.fetch.plan is self.plan and self.generation > 0:
            self.start_fetch()  # a restart also retries a fetch that failed
        self.prepare_workflows()
        if not self.settings.comfyui_command and not (Path(self.settings.comfyui_dir) / "main.py").is_file():
            self.give_up_config([Problem("COMFYUI_DIR", f"{self.settings.comfyui_dir} has no main.py",
                                         "point COMFYUI_DIR at the ComfyUI checkout, or set COMFYUI_COMMAND")])
            return
        known = self.comfy_flags()
        if self.stopping:
            return  # a signal came while --help ran
        try:
            launch = comfyui.build_launch(self.plan, self.settings, self.ctx.catalog, known, self.environ)
        except OSError as exc:
            self.give_up_config([Problem("COMFYUI_DATA_DIR", f"cannot prepare ComfyUI's folders: {exc}",
                                         "make COMFYUI_DATA_DIR writable")])
            return
        if known is not None and not launch.custom:
            problems = comfyui.check_flags(launch.argv[2:], known, self.settings.comfyui_args)
            if problems:
                self.give_up_config(problems)
                return
        try:
            launch.reboot_marker.unlink()
        except FileNotFoundError:
            pass
        self.spawn_comfyui(launch)

    def spawn_comfyui(self, launch: Launch) -> None:
        assert self.plan is not None
        self.generation += 1
        generation = self.generation
        oom_kills = exits.oom_kill_count()
        child = self.init.spawn(launch.argv, name="comfyui", cwd=launch.cwd, env=launch.env)
        reader = LineReader(child.output, "comfyui", log_file=self.comfy_log, on_line=self.on_comfy_line,
                            generation=generation) if child.output is not None else None
        prober = workers.Prober(launch.url, generation, self.post, interval=self.settings.health_interval,
                                timeout=self.settings.health_timeout, check_queue=True)
        self.comfy = Incarnation(generation=generation, child=child, reader=reader, launch=launch, plan=self.plan,
                                 prober=prober, oom_kills=oom_kills)  # type: ignore[arg-type]
        if reader is not None:
            self.init.watch(reader.fd, lambda: self.on_output(reader))
        log.info("comfyui.spawned", generation=generation, pid=child.pid, argv=list(launch.argv),
                 cwd=str(launch.cwd), url=launch.url, restart=self.restarts, custom_command=launch.custom)
        self.set_timer("startup", self.settings.startup_timeout, self.startup_timeout)
        self.status.set(comfyui={"state": "starting", "pid": child.pid, "generation": generation,
                                 "url": launch.url, "argv": list(launch.argv), "started_at": time.time(),
                                 "liveness_failures": 0})

    def comfy_flags(self) -> set[str] | None:
        """The installed ComfyUI's flags, from its --help (once per supervisor run)."""
        if self.flags_checked or self.settings.comfyui_command:
            return self.known_flags
        self.flags_checked = True
        argv, cwd = comfyui.help_argv(self.settings)
        started = time.monotonic()
        code, lines = self.run_helper(argv, cwd, comfyui.child_env(self.settings, self.environ, self.ctx.catalog))
        if code == 0:
            self.known_flags = comfyui.parse_help("\n".join(lines))
            log.info("comfyui.flags_read", flags=len(self.known_flags), seconds=round(time.monotonic() - started, 3))
        elif not self.stopping:
            log.warning("comfyui.flags_unchecked", returncode=code, last_lines=lines[-5:],
                        message="`main.py --help` failed, so the flags are not checked before launch")
        return self.known_flags

    def run_helper(self, argv: list[str], cwd: Path, env: Mapping[str, str]) -> tuple[int | None, list[str]]:
        """Run a short command to completion from the main thread, still reaping and noticing stop signals."""
        child = self.init.spawn(argv, name="helper", cwd=cwd, env=env)
        reader = LineReader(child.output if child.output is not None else -1, "helper", keep=5000, emit=False)
        if child.output is not None:
            self.init.watch(reader.fd, reader.on_readable)
        else:
            reader.closed = True
        deadline = time.monotonic() + HELP_TIMEOUT
        while child.running and time.monotonic() < deadline and not self.stop_requested():
            self.init.pump(min(MAX_SLEEP, max(0.0, deadline - time.monotonic())))
        if child.running:
            self.init.signal(child, signal.SIGKILL)
        if not reader.closed:
            reader.drain()
            self.init.unwatch(reader.fd)
            reader.close()
        if self.stop_requested():
            for sig in self.init.take_signals():
                self.on_signal(sig)
        return child.returncode, list(reader.last_lines)

    def stop_requested(self) -> bool:
        return any(sig in STOP_SIGNALS for sig in self.init.peek_signals())

    def prepare_workflows(self) -> None:
        try:
            from .workflows import prepare
        except (ImportError, AttributeError):
            return
        try:
            for warning in prepare(self.plan, self.settings) or []:
                log.warning("workflows.warning", message=str(warning))
        except Exception as exc:  # their module: report loudly, ComfyUI still starts
            log.error("workflows.prepare_failed", error=f"{type(exc).__name__}: {exc}")

    # ===========================================================================================================
    # Signals

    def on_signal(self, sig: int) -> None:
        if sig in STOP_SIGNALS:
            self.begin_shutdown(sig)
        else:
            self.forward(sig)

    def forward(self, sig: int) -> None:
        comfy = self.comfy
        if comfy is None or not comfy.running:
            log.info("supervise.signal_ignored", signal=signal_name(sig), message="ComfyUI is not running")
            return
        comfy.forwarded.add(sig)
        self.init.signal(comfy.child, sig)
        log.info("supervise.forwarded", signal=signal_name(sig), pid=comfy.child.pid)

    # ===========================================================================================================
    # Children

    def on_child_exit(self, child: Child) -> None:
        if self.comfy is not None and child is self.comfy.child:
            self.on_comfy_exit(self.comfy)
        elif child in self.pulls:
            self.on_pull_exit(child)
        else:
            for service in self.services:
                if service.child is child:
                    self.on_service_exit(service, child)
                    return

    def on_comfy_exit(self, comfy: Incarnation) -> None:
        self.close_reader(comfy.reader)
        comfy.prober.stop.set()
        comfy.stop.set()
        self.cancel_timer("startup")
        self.cancel_timer("kill")
        self.comfy = None
        child = comfy.child
        info = exits.classify(code=child.code, sig=child.signal, returncode=child.returncode or 0,
                              lines=comfy.reader.last_lines if comfy.reader else [], uptime=child.uptime,
                              killed_for=comfy.killed_for or (exits.SHUTDOWN if self.stopping else None),
                              forwarded=comfy.forwarded,
                              reboot_requested=comfy.launch.reboot_marker.exists(),
                              oom_kills=max(0, exits.oom_kill_count() - comfy.oom_kills))
        record = {**info.to_dict(), "generation": comfy.generation, "pid": child.pid, "at": time.time()}
        self.status.append_exit(record)
        level = log.info if self.stopping or info.klass in ("reboot", "signal") else log.error
        level("comfyui.exited", **record)
        if self.stopping:
            if self.final_code is None:
                self.final_code = info.returncode
            return
        decision = self.policy.decide(info, time.monotonic())
        if info.klass == exits.OOM and decision.restart and self.settings.oom_downgrade:
            self.downgrade(info)
        if not decision.restart:
            self.give_up(info, decision.reason)
            return
        self.restarts += 1
        log.info("supervise.restart_scheduled", delay_s=decision.delay, exit_class=info.klass,
                 failures=decision.failures, failure=decision.failure, reason=decision.reason)
        self.status.set(restarts={"count": self.restarts, "failures_in_window": decision.failures,
                                  "next_delay_s": decision.delay})
        self.status.set(comfyui={"state": "backoff", "restart_in_s": decision.delay})
        self.set_timer("restart", decision.delay, self.launch)

    def downgrade(self, info: exits.ExitInfo) -> None:
        """After an out-of-memory exit: one step down the ladder of every model that has one left."""
        assert self.plan is not None
        steps = {m.feature: m for m in self.plan.models if m.ladder}
        if not steps:
            log.warning("supervise.no_downgrade", message="out of memory, but the plan has no lighter step left")
            return
        old = self.plan
        for feature in steps:
            self.degrade[feature] = self.degrade.get(feature, 0) + 1
        self.make_plan()
        for feature, before in steps.items():
            after = self.plan.model(feature) if self.plan else None
            log.warning("supervise.downgrade", feature=feature, step=self.degrade[feature],
                        before=model_brief(before), after=model_brief(after),
                        why=f"ComfyUI exited out of memory: {info.message}",
                        new_downloads=[d.dest for d in (self.plan.missing() if self.plan else [])])
        if self.plan is not None and (self.plan.missing() or old.missing()):
            self.start_fetch()

    def give_up(self, info: exits.ExitInfo, reason: str) -> None:
        code = info.returncode or 1
        self.gave_up = {"reason": reason, "exit": info.to_dict(), "code": code}
        log.error("supervise.gave_up", reason=reason, exit_class=info.klass, message=info.message,
                  advice=info.advice or None, flag=info.flag, restarts=self.restarts, code=code)
        self.final_code = code
        self.begin_shutdown(signal.SIGTERM, why=f"gave up: {reason}")

    def give_up_config(self, problems: list[Problem]) -> None:
        text = [str(p) for p in problems]
        self.gave_up = {"reason": "ComfyUI cannot be launched", "problems": text, "code": 2}
        log.error("comfyui.bad_command", problems=text, message="ComfyUI is not started; restarting cannot help")
        print("ComfyUI cannot be launched:\n" + "\n".join(f"  - {t}" for t in text), file=sys.stderr, flush=True)
        self.final_code = 2
        self.begin_shutdown(signal.SIGTERM, why="bad ComfyUI command line")

    def on_pull_exit(self, child: Child) -> None:
        repo, reader = self.pulls.pop(child)
        self.close_reader(reader)
        result = services.pull_result(child, list(reader.last_lines))
        (log.warning if result == "failed" else log.info)(
            "services.node_updated", repo=repo.name, result=result, returncode=child.returncode,
            last_line=reader.last_lines[-1] if reader.last_lines else None)
        if not self.pulls:
            self.nodes_done()

    # ===========================================================================================================
    # Side services

    def start_services(self) -> None:
        env = comfyui.child_env(self.settings, self.environ, self.ctx.catalog)
        for make in (services.sshd, services.jupyter):
            try:
                service = make(self.settings, self.environ, env)
            except OSError as exc:
                log.warning("services.setup_failed", service=make.__name__, error=str(exc))
                continue
            if service is not None:
                self.services.append(service)
                self.start_service(service)

    def start_service(self, service: services.Service) -> None:
        if self.stopping:
            return
        argv, is_pre = service.next_command()
        child, _ = self.spawn_logged(argv, name=service.name, source=service.name, env=service.env,
                                     cwd=service.cwd, log_name=service.name)
        service.child = child
        service.state = "preparing" if is_pre else "running"
        log.info("services.started", service=service.name, pid=child.pid, argv=list(argv), step="prepare" if is_pre
                 else "run")

    def on_service_exit(self, service: services.Service, child: Child) -> None:
        reader = self.service_readers.pop(child.pid, None)
        if reader is not None:
            self.close_reader(reader)
        delay = service.on_exit(child, self.stopping)
        if delay is not None:
            self.set_timer(f"service:{service.name}", delay, lambda: self.start_service(service))

    def spawn_logged(self, argv: Any, *, name: str, source: str, env: Mapping[str, str],
                     cwd: str | os.PathLike | None = None, log_name: str | None = None,
                     **bind: Any) -> tuple[Child, LineReader]:
        child = self.init.spawn(argv, name=name, cwd=cwd, env=env)
        log_file = LogFile(self.log_dir / f"{log_name}.log") if log_name else None
        reader = LineReader(child.output if child.output is not None else -1, source, log_file=log_file, **bind)
        if child.output is not None:
            self.service_readers[child.pid] = reader
            self.init.watch(child.output, lambda: self.on_output(reader))
        else:
            reader.closed = True
        return child, reader

    # ===========================================================================================================
    # Output

    def on_output(self, reader: LineReader) -> None:
        if not reader.on_readable():
            self.close_reader(reader)

    def close_reader(self, reader: LineReader | None) -> None:
        if reader is None or reader.closed:
            return
        reader.drain()
        self.init.unwatch(reader.fd)
        reader.close()
        if reader.log_file is not None and reader.log_file is not self.comfy_log:
            reader.log_file.close()

    def on_comfy_line(self, line: str) -> None:
        comfy = self.comfy
        if comfy is None:
            return
        if comfyui.READY_LINE in line:
            comfy.prober.poke.set()
        elif comfyui.LEGACY_REBOOT_LINE in line:
            self.reprobe(comfy, "ComfyUI-Manager restarts ComfyUI in place (os.execv)")

    def reprobe(self, comfy: Incarnation, why: str) -> None:
        """Same process, new start (an in-place reboot): readiness starts over."""
        log.info("comfyui.restarting_in_place", pid=comfy.child.pid, why=why)
        comfy.prober.stop.set()
        comfy.stop.set()
        comfy.answered_at = comfy.checks_started = comfy.checks_done = comfy.ready_at = None
        comfy.stop = threading.Event()
        comfy.prober = workers.Prober(comfy.launch.url, comfy.generation, self.post,
                                      interval=self.settings.health_interval, timeout=self.settings.health_timeout,
                                      check_queue=True)
        self.set_timer("startup", self.settings.startup_timeout, self.startup_timeout)

    # ===========================================================================================================
    # Messages from the workers

    def post(self, kind: str, generation: int, **data: Any) -> None:
        """Thread-safe: called by workers."""
        self.inbox.put(workers.Message(kind, generation, data))
        self.init.wake()

    def read_inbox(self) -> None:
        while True:
            try:
                message = self.inbox.get_nowait()
            except queue.Empty:
                return
            self.on_message(message)

    def on_message(self, m: workers.Message) -> None:
        if m.kind == "fetched":
            self.on_fetched(m)
        elif m.kind == "prewarmed":
            self.on_prewarmed(m)
        elif self.comfy is None or m.generation != self.comfy.generation:
            return  # about a ComfyUI that is gone
        elif m.kind == "answering":
            self.on_answering(self.comfy, m.data)
        elif m.kind == "liveness":
            self.on_liveness(self.comfy, m.data)
        elif m.kind == "checked":
            self.on_checked(self.comfy, m.data)
        elif m.kind == "warmed":
            self.on_warmed(self.comfy, m.data)
        elif m.kind == "readiness_done":
            self.comfy.checks_done = time.monotonic()
        elif m.kind == "drained":
            self.on_drained(m.data)

    def on_answering(self, comfy: Incarnation, data: dict[str, Any]) -> None:
        comfy.answered_at = time.monotonic()
        self.cancel_timer("startup")
        seconds = round(comfy.answered_at - comfy.child.started, 3)
        system = (data.get("stats") or {}).get("system", {})
        log.info("comfyui.answering", generation=comfy.generation, pid=comfy.child.pid, seconds=seconds,
                 comfyui_version=system.get("comfyui_version"))
        self.status.merge("comfyui", state="answering", answered_after_s=seconds,
                          version=system.get("comfyui_version"))
        self.start_checks()

    def start_checks(self) -> None:
        """Workflow check + warmup, once ComfyUI answers and the files are in place (both are needed)."""
        comfy = self.comfy
        if comfy is None or comfy.answered_at is None or comfy.checks_started is not None or self.stopping:
            return
        if self.fetch is None or self.fetch.state not in ("done", "dry_run"):
            return
        comfy.checks_started = time.monotonic()
        workers.start(lambda: workers.readiness(comfy.launch.url, comfy.generation, self.post, comfy.stop,
                                                plan=comfy.plan, settings=self.settings,
                                                check=_workflow_checker(self.settings)),
                      f"readiness-{comfy.generation}")

    def on_liveness(self, comfy: Incarnation, data: dict[str, Any]) -> None:
        if data.get("ok"):
            if comfy.liveness_failures:
                log.info("comfyui.liveness_recovered", after_failures=comfy.liveness_failures)
            comfy.liveness_failures = 0
            comfy.queue = data.get("queue")
            self.status.merge("comfyui", liveness_failures=0, queue_remaining=comfy.queue)
            return
        comfy.liveness_failures += 1
        log.warning("comfyui.liveness_failed", failures=comfy.liveness_failures, limit=self.settings.health_failures,
                    error=data.get("error"), seconds=data.get("seconds"))
        self.status.merge("comfyui", liveness_failures=comfy.liveness_failures)
        if comfy.liveness_failures >= self.settings.health_failures:
            self.kill_comfy(comfy, exits.HANG)

    def on_checked(self, comfy: Incarnation, data: dict[str, Any]) -> None:
        comfy.problems = list(data.get("problems") or [])
        comfy.checked_s = data.get("seconds")
        if comfy.problems:
            log.error("workflows.check_failed", problems=comfy.problems, blocks_ready=self.settings.check_blocks_ready)
        else:
            log.info("workflows.check_ok", seconds=comfy.checked_s)
        self.status.set(workflows={"checked": True, "ok": not comfy.problems, "problems": comfy.problems,
                                   "blocks_ready": self.settings.check_blocks_ready})

    def on_warmed(self, comfy: Incarnation, data: dict[str, Any]) -> None:
        comfy.warmup_s = data.get("seconds")
        if data.get("ok"):
            comfy.warmup_error = None
            log.info("supervise.warmup_done", seconds=comfy.warmup_s, workflow=str(self.settings.warmup_workflow))
        else:
            comfy.warmup_error = str(data.get("message"))
            log.error("supervise.warmup_failed", seconds=comfy.warmup_s, error=comfy.warmup_error,
                      workflow=str(self.settings.warmup_workflow))
        self.status.set(warmup={"ok": bool(data.get("ok")), "seconds": comfy.warmup_s, "error": comfy.warmup_error})

    def on_fetched(self, m: workers.Message) -> None:
        job = self.fetch
        if job is None or m.generation != job.number:
            return
        job.seconds = m.data.get("seconds")
        report = m.data.get("report")
        if m.data.get("error"):
            job.state, job.message = "failed", str(m.data["error"])
            job.failed = {str(k): str(v) for k, v in (getattr(report, "failed", {}) or {}).items()}
            log.error("fetch.failed", job=job.number, error=job.message, failed=job.failed or None,
                      seconds=job.seconds,
                      message="ComfyUI keeps running; the pod is not ready until the files are in place")
        elif getattr(report, "interrupted", False):
            job.state = "interrupted"
            log.info("fetch.interrupted", job=job.number, seconds=job.seconds, message="partial files kept for resume")
        elif self.settings.dry_run:
            job.state = "dry_run"
            log.info("fetch.dry_run_done", job=job.number)
        elif getattr(report, "ok", False):
            job.state = "done"
            log.info("fetch.done", job=job.number, seconds=job.seconds,
                     downloaded=len(getattr(report, "downloaded", []) or []),
                     bytes=getattr(report, "bytes_downloaded", None))
        else:
            job.failed = {str(k): str(v) for k, v in (getattr(report, "failed", {}) or {}).items()}
            job.state, job.message = "failed", f"{len(job.failed)} files failed"
            log.error("fetch.failed", job=job.number, failed=job.failed, seconds=job.seconds,
                      message="ComfyUI keeps running; the pod is not ready until the files are in place")
        self.status.merge("fetch", state=job.state, seconds=job.seconds, failed=job.failed, message=job.message,
                          bytes_downloaded=getattr(report, "bytes_downloaded", None))
        release_free_memory()  # the download's buffers are free now; keep PID 1 small for the pod's life
        if self.refetch and not self.stopping:
            self.start_fetch()
            return
        self.start_checks()

    def on_drained(self, data: dict[str, Any]) -> None:
        if self.stopping and not self.killing and self.timers.get("drain"):
            log.info("supervise.drained", unfinished=data.get("unfinished"))
            self.cancel_timer("drain")
            self.stop_children()

    def on_prewarmed(self, m: workers.Message) -> None:
        if m.data.get("error"):
            log.warning("prewarm.failed", error=m.data["error"])
            self.status.set(prewarm={"state": "failed", "error": m.data["error"]})
            return
        result = m.data["result"]
        (log.info if not result.stopped else log.info)("prewarm.done", **result.to_dict())
        self.status.set(prewarm={"state": "stopped" if result.stopped else "done", **result.to_dict()})

    # ===========================================================================================================
    # Timers

    def set_timer(self, name: str, delay: float, callback: Callable[[], None]) -> None:
        self.timers[name] = (time.monotonic() + max(0.0, delay), callback)
        self.init.wake()

    def cancel_timer(self, name: str) -> None:
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


# ---------------------------------------------------------------------------------------------------------------


def _fetch_function() -> Callable[..., Any] | None:
    try:
        from .fetch import fetch_plan
    except (ImportError, AttributeError):
        return None
    return fetch_plan


def _workflow_checker(settings) -> Callable[..., list] | None:
    if not settings.check_workflows:
        return None
    try:
        from .workflows import check_live
    except (ImportError, AttributeError):
        return None
    return check_live
