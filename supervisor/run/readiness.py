"""Readiness and the status page, recomputed from the supervisor's state after every event (a mixin of
`Supervisor`, kept apart so supervise.py reads as the loop and its handlers).

Ready means: ComfyUI answers, the plan's files are in place (fetch done), the workflow check ran, the warmup
prompt (if any) succeeded, the queue is under READY_MAX_QUEUE, the plan has no errors and no shutdown is under
way. Every unmet condition is a reason in `/readyz` and `/status`. The first time an incarnation of ComfyUI is
ready, one `supervise.ready` event gives the time of each phase, and prewarming starts (PREWARM=true).
"""

from __future__ import annotations

import os
import threading
import time
from pathlib import Path
from typing import TYPE_CHECKING, Any, Mapping

import structlog

from . import workers
from .plan import Plan

if TYPE_CHECKING:
    from .supervise import Incarnation, Supervisor

log = structlog.get_logger("supervise")  # lazy: uses the configuration at each call


class Readiness:
    """Mixin of Supervisor: readiness reasons, the phase, the status page, the ready event, prewarming."""

    def not_ready_reasons(self: Supervisor) -> list[str]:
        reasons: list[str] = []
        if self.stopping:
            return ["shutting down"]
        if self.plan is not None and self.plan.errors:
            reasons.append("plan has errors: " + "; ".join(self.plan.errors))
        job = self.fetch
        if job is None or job.state == "running":
            reasons.append("downloading the plan's files" + _progress_text(self.status.get("fetch", {})))
        elif job.state == "dry_run" and job.plan.missing():
            reasons.append(f"DRY_RUN=true: {len(job.plan.missing())} files not downloaded")
        elif job.state in ("failed", "unavailable", "interrupted"):
            reasons.append(f"download {job.state}: {job.message}" if job.message else f"download {job.state}")
        comfy = self.comfy
        if comfy is None:
            reasons.append("ComfyUI is not running" + (" (restart pending)" if "restart" in self.timers else ""))
            return reasons
        if comfy.answered_at is None:
            reasons.append("ComfyUI is starting")
            return reasons
        if comfy.liveness_failures:
            reasons.append(f"ComfyUI failed {comfy.liveness_failures} liveness checks in a row")
        if comfy.checks_done is None:
            if comfy.checks_started is not None:
                reasons.append("warmup running" if comfy.checked_s is not None or not self.settings.check_workflows
                               else "checking workflows")
            return reasons
        if comfy.warmup_error:
            reasons.append(f"warmup failed: {comfy.warmup_error}")
        if comfy.problems and self.settings.check_blocks_ready:
            reasons.append(f"workflow check failed ({len(comfy.problems)} problems)")
        if self.settings.ready_max_queue and comfy.queue is not None and comfy.queue > self.settings.ready_max_queue:
            reasons.append(f"{comfy.queue} prompts queued (READY_MAX_QUEUE={self.settings.ready_max_queue})")
        return reasons

    def phase(self: Supervisor, ready: bool) -> str:
        comfy = self.comfy
        if self.gave_up is not None:
            return "failed"
        if self.stopping:
            return "stopping"
        if ready:
            return "ready"
        if comfy is None:
            if self.waiting_for_nodes:
                return "updating_nodes"
            return "backoff" if "restart" in self.timers else "launching"
        if comfy.answered_at is None:
            return "starting"
        if self.fetch is not None and self.fetch.state == "running":
            return "fetching"
        if comfy.checks_done is None and comfy.checks_started is not None:
            return "checking"
        return "not_ready"

    def update_status(self: Supervisor) -> None:
        reasons = self.not_ready_reasons()
        ready = not reasons
        comfy = self.comfy
        if ready and comfy is not None and comfy.ready_at is None:
            comfy.ready_at = time.monotonic()
            self.on_ready(comfy)
        if ready != self.was_ready:
            if not ready and self.was_ready and not self.stopping:
                log.warning("supervise.not_ready", reasons=reasons)
            self.was_ready = ready
        self.status.set(phase=self.phase(ready), ready=ready, not_ready=reasons,
                        live=not (comfy and comfy.liveness_failures >= self.settings.health_failures),
                        services={s.name: s.to_dict() for s in self.services},
                        supervisor={"pid": os.getpid(), "pid1": self.init.pid1, "subreaper": self.init.subreaper,
                                    "orphans_reaped": self.init.orphans_reaped, "gave_up": self.gave_up,
                                    "restarts": self.restarts})
        if comfy is not None:
            state = "ready" if ready else ("answering" if comfy.answered_at else "starting")
            self.status.merge("comfyui", state=state)

    def on_ready(self: Supervisor, comfy: Incarnation) -> None:
        assert comfy.ready_at is not None
        job = self.fetch
        phases = {
            "plan_s": round(self.plan_seconds, 3),
            "fetch_s": job.seconds if job else None,
            "comfyui_start_s": round((comfy.answered_at or comfy.ready_at) - comfy.child.started, 3),
            "check_s": comfy.checked_s,
            "warmup_s": comfy.warmup_s,
            "since_supervisor_start_s": round(comfy.ready_at - self.started, 3),
            "since_process_start_s": _since_process_start(),
        }
        log.info("supervise.ready", generation=comfy.generation, pid=comfy.child.pid, restarts=self.restarts,
                 url=comfy.launch.url, phases=phases)
        self.status.set(phases=phases)
        self.status.merge("comfyui", ready_at=time.time())
        self.start_prewarm()

    def start_prewarm(self: Supervisor) -> None:
        if not self.settings.prewarm or self.plan is None or self.prewarmed_plan is self.plan:
            return
        self.prewarmed_plan = self.plan
        self.prewarm_stop.set()
        self.prewarm_stop = threading.Event()
        stop, plan = self.prewarm_stop, self.plan
        log.info("prewarm.started", files=len(plan.downloads))
        self.status.set(prewarm={"state": "running"})
        workers.start(lambda: workers.prewarm(0, self.post, stop, plan=plan, models_dir=Path(self.settings.models_dir)),
                      "prewarm")


def plan_summary(plan: Plan) -> dict[str, Any]:
    return {
        "gpu": plan.gpu.name if plan.gpu else None,
        "vram_class": plan.vram_class,
        "gpu_tier": plan.gpu_tier,
        "models": [{**model_brief(m), "reason": m.reason,
                    "ladder": [f"{s.variant}/{s.offload}/{s.blocks_to_swap}" for s in m.ladder]} for m in plan.models],
        "comfyui_args": list(plan.comfyui_args),
        "downloads": {"files": len(plan.downloads), "missing": len(plan.missing()),
                      "missing_bytes": sum(d.size for d in plan.missing())},
        "degrade": dict(plan.degrade),
        "warnings": list(plan.warnings),
        "errors": list(plan.errors),
    }


def model_brief(model: Any) -> dict[str, Any]:
    if model is None:
        return {}
    return {"feature": model.feature, "variant": model.variant, "offload": model.offload,
            "blocks_to_swap": model.knobs.blocks_to_swap if model.knobs else None}


def _progress_text(fetch: Mapping[str, Any]) -> str:
    total = (fetch.get("progress") or {}).get("total") or {}
    if not total.get("size"):
        return ""
    eta = f", about {total['eta_s']:.0f} s left" if total.get("eta_s") is not None else ""
    return f": {total.get('bytes', 0) / 1e9:.1f} of {total['size'] / 1e9:.1f} GB ({total.get('percent', 0)}%){eta}"


def _since_process_start() -> float | None:
    try:
        import psutil

        return round(time.time() - psutil.Process().create_time(), 3)
    except Exception:
        return None
