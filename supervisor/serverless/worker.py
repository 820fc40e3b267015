"""`supervisor worker`: the RunPod handler process, a side service of `supervisor run` when SERVERLESS=true.

It runs apart from PID 1 so that the runpod SDK (about 60 MB and 1.5 s of imports) stays out of the supervisor,
and a crash of the handler is restarted without touching ComfyUI. It waits until the pod is ready (the
supervisor's /readyz) before it calls `runpod.serverless.start`, so no job is taken while the weights download.

How the SDK is told what to do (runpod-python `serverless/__init__.py`, `worker.py`): `start()` parses
`sys.argv` with its own argparse (`--rp_serve_api`, `--rp_api_host`, `--rp_api_port`, `--rp_log_level`, ...; the
rest is left in sys.argv). With `--rp_serve_api` it serves its local test API (FastAPI: POST /run, /runsync,
/status/{id}, /stream/{id}); without it, it takes jobs from RunPod's queue when RUNPOD_WEBHOOK_GET_JOB is set (RunPod
sets it on a serverless worker), else it runs one local test job from test_input.json and exits. So the worker
builds the SDK's argv from SERVERLESS_API_ADDR itself, and refuses to start when neither is there.
"""

from __future__ import annotations

import sys
from typing import Any, Mapping, Sequence

import structlog

from .. import logs
from ..errors import ConfigError, Problem
from ..plan.settings import Settings, declared_variables
from ..plan.environment import load_settings
from .handler import Worker
from .pod import Pod, status_url

log = structlog.get_logger("serverless")
SDK_LOG_LEVELS = {"debug": "DEBUG", "info": "INFO", "warning": "WARN", "error": "ERROR"}


def problems(settings: Settings, environ: Mapping[str, str]) -> list[Problem]:
    """Why a worker cannot take jobs here (empty when it can). Also used by PID 1 before starting it."""
    found = []
    if settings.serverless_api_addr is None and not environ.get("RUNPOD_WEBHOOK_GET_JOB"):
        found.append(Problem("SERVERLESS", "true, but this is not a RunPod Serverless worker (RUNPOD_WEBHOOK_GET_JOB "
                             "is not set) and SERVERLESS_API_ADDR is empty, so no job can arrive",
                             "run it as a RunPod Serverless endpoint, or set SERVERLESS_API_ADDR=127.0.0.1:8000 to "
                             "try it through the SDK's local API"))
    if settings.serverless_output == "s3" and not str(settings.r2_bucket).strip():
        found.append(Problem("SERVERLESS_OUTPUT", "s3, but R2_BUCKET is empty",
                             "set R2_BUCKET (and R2_ENDPOINT, R2_ACCESS_KEY_ID, R2_SECRET_ACCESS_KEY)"))
    return found


def sdk_argv(settings: Settings, extra: Sequence[str] = ()) -> list[str]:
    argv = ["supervisor-worker", "--rp_log_level", SDK_LOG_LEVELS.get(settings.log_level, "INFO")]
    if settings.serverless_api_addr is not None:
        host, port = settings.serverless_api_addr
        argv += ["--rp_serve_api", "--rp_api_host", host, "--rp_api_port", str(port)]
    return argv + list(extra)


def make_store(settings: Settings) -> Any:
    if settings.serverless_output == "base64":
        return None
    from ..outputs import Store, StoreConfig

    config = StoreConfig.from_settings(settings)
    return Store(config) if config is not None else None


def resolved_dir(settings: Settings):
    from ..workflows.resolve import user_dir

    return user_dir(settings) / "workflows_api"


def comfy_url(settings: Settings) -> str:
    from ..run.launch import probe_url

    return probe_url(settings.comfyui_listen, settings.comfyui_port, settings.comfyui_args)


def main(extra_args: Sequence[str], environ: Mapping[str, str]) -> int:
    for variable in declared_variables():
        if variable["secret"]:
            logs.register_secret(environ.get(variable["env"]))
    try:
        settings = load_settings(environ)
    except ConfigError as exc:
        print(logs.scrub(exc.render()), file=sys.stderr)
        return exc.exit_code
    logs.configure(settings.log_level, settings.log_format, stream=sys.stdout)
    found = problems(settings, environ)
    if found:
        error = ConfigError(found, title="the serverless worker cannot start")
        log.error("serverless.cannot_start", problems=[str(p) for p in found])
        print(logs.scrub(error.render()), file=sys.stderr)
        return error.exit_code
    try:
        import runpod  # noqa: F401 - checked before the wait, so a missing SDK is said at once
        import runpod.serverless
    except ImportError as exc:
        log.error("serverless.no_sdk", error=str(exc),
                  message="the runpod SDK is not installed: pip install 'comfyui-pod-supervisor[serverless]'")
        return 2
    store = make_store(settings)
    pod = Pod(status_url(settings.status_addr), comfy_url(settings))
    log.info("serverless.waiting_for_ready", status=pod.url, output="s3" if store is not None else "base64",
             local_api=":".join(map(str, settings.serverless_api_addr)) if settings.serverless_api_addr else None)
    url = pod.wait_until_ready(lambda reasons: log.info("serverless.not_ready_yet", not_ready=reasons))
    worker = Worker(pod=pod, resolved_dir=resolved_dir(settings), store=store,
                    job_timeout=settings.serverless_job_timeout, ready_timeout=settings.serverless_ready_timeout)
    log.info("serverless.taking_jobs", comfyui=url, sdk=getattr(runpod, "__version__", "?"))

    # Progress goes to RunPod's job-output URL; the local API has none (the SDK would log an error per update).
    sends_progress = bool(environ.get("RUNPOD_WEBHOOK_POST_OUTPUT"))

    async def handler(job: dict[str, Any]) -> dict[str, Any]:
        return await worker.run(str(job.get("id")), job.get("input"),
                                lambda payload: sends_progress and runpod.serverless.progress_update(job, payload))

    sys.argv = sdk_argv(settings, extra_args)
    runpod.serverless.start({"handler": handler})
    return 0
