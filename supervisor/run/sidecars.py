"""The pod's side processes under the loop: the services (sshd, JupyterLab, or on a serverless worker the RunPod
handler; services.py says what each is) and the `git pull` of every custom node (UPDATE_NODES_ON_START) that
ComfyUI waits for, at most NODE_UPDATE_DEADLINE.
"""

from __future__ import annotations

import signal
from pathlib import Path
from typing import Any, Callable

import structlog

from ..plan.context import Context
from . import launch as comfyui, services
from .init import Child
from .output import LogFile
from .runtime import Runtime

log = structlog.get_logger("supervise")  # lazy: uses the configuration at each call


class Sidecars:
    def __init__(self, rt: Runtime, ctx: Context, nodes_updated: Callable[[], None]):
        self.rt, self.ctx, self.settings = rt, ctx, ctx.settings
        self.nodes_updated = nodes_updated  # the loop launches ComfyUI then
        self.services: list[services.Service] = []
        self.pulls: dict[Child, Path] = {}
        self.waiting_for_nodes = False
        self.git_log: LogFile | None = None

    def env(self) -> dict[str, str]:
        return comfyui.child_env(self.settings, self.rt.environ, self.ctx.catalog)

    # -- services -------------------------------------------------------------------------------------------------

    def start_services(self) -> None:
        env = self.env()
        hidden = comfyui.secret_names(self.settings, self.ctx.catalog, self.rt.environ)
        session_env = {k: v for k, v in self.rt.environ.items() if k not in hidden}  # even with PASS_SECRETS
        makers = (services.sshd, services.jupyter)
        if self.settings.serverless:
            log.info("services.serverless", message="SERVERLESS=true: the RunPod worker takes jobs once the pod is "
                     "ready; sshd and JupyterLab are not started")
            makers = (services.serverless_worker,)
        for make in makers:
            try:
                service = (services.sshd(self.settings, self.rt.environ, env, session_env) if make is services.sshd
                           else make(self.settings, self.rt.environ, env))
            except OSError as exc:
                log.warning("services.setup_failed", service=make.__name__, error=str(exc))
                continue
            if service is not None:
                self.services.append(service)
                self.start(service)

    def start(self, service: services.Service) -> None:
        if self.rt.stopping:
            return
        argv, is_pre = service.next_command()
        child, _ = self.rt.spawn_logged(argv, name=service.name, source=service.name, env=service.env,
                                        cwd=service.cwd, log_name=service.name)
        service.child = child
        service.state = "preparing" if is_pre else "running"
        log.info("services.started", service=service.name, pid=child.pid, argv=list(argv),
                 step="prepare" if is_pre else "run")

    def describe(self) -> dict[str, Any]:
        return {s.name: s.to_dict() for s in self.services}

    # -- node updates -----------------------------------------------------------------------------------------------

    def update_nodes(self) -> bool:
        """`git pull` in every custom node (UPDATE_NODES_ON_START). True if ComfyUI must wait for it: updating
        files under a running import could load half-updated code; the wait is bounded and overlaps the fetch."""
        if not self.settings.update_nodes_on_start:
            return False
        git = services.which("git", self.rt.environ)
        repos = services.node_repos(self.settings.comfyui_dir)
        if not git or not repos:
            log.warning("services.node_update_skipped", git=bool(git), repos=len(repos),
                        message="no git" if not git
                        else f"no git checkouts in {self.settings.comfyui_dir}/custom_nodes")
            return False
        env = {**self.env(), "GIT_TERMINAL_PROMPT": "0"}
        log.info("services.node_update_started", repos=[r.name for r in repos])
        self.git_log = LogFile(Path(self.settings.log_dir) / "git.log")  # one file for every pull (README)
        for repo in repos:
            child, _ = self.rt.spawn_logged(services.git_pull_argv(git, repo), name=f"git:{repo.name}", source="git",
                                            env=env, repo=repo.name, log_file=self.git_log)
            self.pulls[child] = repo
        self.waiting_for_nodes = True
        self.rt.set_timer("node_update", services.NODE_UPDATE_DEADLINE, self.node_update_deadline)
        return True

    def node_update_deadline(self) -> None:
        log.warning("services.node_update_timeout", repos=[repo.name for repo in self.pulls.values()],
                    seconds=services.NODE_UPDATE_DEADLINE, message="ComfyUI starts now; these pulls are stopped")
        for child in list(self.pulls):
            self.rt.init.signal(child, signal.SIGKILL)
        self.nodes_done()

    def nodes_done(self) -> None:
        if self.waiting_for_nodes:
            self.waiting_for_nodes = False
            self.rt.cancel_timer("node_update")
            self.nodes_updated()

    # -- exits and stopping -------------------------------------------------------------------------------------------

    def on_exit(self, child: Child, lines: list[str]) -> None:
        """A side process exited (its output already drained); `lines` are its last lines."""
        if child in self.pulls:
            repo = self.pulls.pop(child)
            result = services.pull_result(child, lines)
            (log.warning if result == "failed" else log.info)(
                "services.node_updated", repo=repo.name, result=result, returncode=child.returncode,
                last_line=lines[-1] if lines else None)
            if not self.pulls:
                if self.git_log is not None:
                    self.git_log.close()
                self.nodes_done()
            return
        for service in self.services:
            if service.child is child:
                delay = service.on_exit(child, self.rt.stopping)
                if delay is not None:
                    self.rt.set_timer(f"service:{service.name}", delay, lambda: self.start(service))
                return

    def stop(self) -> None:
        for service in self.services:
            self.rt.cancel_timer(f"service:{service.name}")
            if service.child is not None:
                self.rt.init.signal(service.child, signal.SIGTERM)
        for child in self.pulls:
            self.rt.init.signal(child, signal.SIGTERM)

    def busy(self) -> bool:
        return any(s.child is not None for s in self.services) or bool(self.pulls)
