"""Command line: parse arguments, run one step, turn errors into exit codes.

Exit codes: 0 ok; 1 runtime failure; 2 configuration error (environment, catalogue, arguments); 3 a valid
configuration that cannot run on this hardware. `run` exits with ComfyUI's own code (128+N for signal N).
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from pathlib import Path
from typing import Mapping, Sequence

from . import __version__, logs
from .plan import Context, HardwareOptions, load_context, log_plan, render
from .plan.report import render_instances
from .errors import ConfigError, SupervisorError

COMMANDS = ("run", "plan", "probe", "fetch", "check", "health", "worker")


def _hardware_options(parser: argparse.ArgumentParser) -> None:
    group = parser.add_argument_group("hardware simulation (ask what a pod would do on other hardware)")
    group.add_argument("--hardware", type=Path, metavar="FILE", help="read the hardware from `supervisor probe` output")
    group.add_argument("--gpu", metavar="NAME", help="simulate a known GPU, e.g. 'A100 40GB', 'RTX 4090', h100")
    group.add_argument("--vram", metavar="SIZE", help="simulate a GPU of this size: 24GiB, 24GB, 24576MiB, 24")
    group.add_argument("--gpu-count", type=int, metavar="N", help="number of simulated GPUs (default 1)")
    group.add_argument("--ram", metavar="SIZE", help="simulate this much host RAM")
    group.add_argument("--disk", metavar="SIZE", help="simulate this much free disk on the models volume")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="supervisor", description="PID-1 supervisor for ComfyUI pods: plan, fetch, launch, supervise.")
    parser.add_argument("--version", action="version", version=f"%(prog)s {__version__}")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")

    run = sub.add_parser("run", help="plan, fetch, launch and supervise ComfyUI (the container's entrypoint)")
    _hardware_options(run)

    plan = sub.add_parser("plan", help="print what would be downloaded and launched, and why; starts nothing")
    plan.add_argument("--json", action="store_true", help="print the plan as JSON")
    plan.add_argument("--reset-oom", action="store_true",
                      help="forget the out-of-memory step downs remembered from earlier runs, then plan")
    _hardware_options(plan)

    probe = sub.add_parser("probe", help="print the hardware as JSON (GPUs from NVML, RAM, free disk)")
    _hardware_options(probe)

    fetch = sub.add_parser("fetch", help="download and verify every file of the plan")
    fetch.add_argument("--dry-run", action="store_true", help="list what would be downloaded and the total size")
    fetch.add_argument("--verify", action="store_true", help="re-hash every present file")
    _hardware_options(fetch)

    check = sub.add_parser("check", help="validate workflows against ComfyUI's node definitions")
    check.add_argument("workflows", nargs="*", type=Path, help="API-format workflow files (default: the shipped ones)")
    source = check.add_mutually_exclusive_group()
    source.add_argument("--object-info", type=Path, metavar="FILE", help="saved GET /object_info JSON")
    source.add_argument("--url", metavar="URL", help="a running ComfyUI (default http://127.0.0.1:COMFYUI_PORT)")
    check.add_argument("--json", action="store_true", help="print the problems as JSON")
    check.add_argument("--resolved", action="store_true",
                       help="check the workflows resolved against this pod's plan, as `run` writes them")
    _hardware_options(check)

    health = sub.add_parser("health", help="exit 0 if the supervisor reports ready, 1 otherwise (HEALTHCHECK)")
    health.add_argument("--addr", metavar="HOST:PORT", help="status endpoint (default STATUS_ADDR)")
    health.add_argument("--live", action="store_true", help="check liveness (/healthz) instead of readiness")
    health.add_argument("--instance", metavar="NAME",
                        help="with COMFYUI_PER_GPU: the readiness of one ComfyUI (comfyui-1, or 1)")
    health.add_argument("--timeout", type=float, default=3.0, help="seconds to wait for an answer")

    sub.add_parser("worker", help="the RunPod Serverless handler (SERVERLESS=true: `run` starts it); other "
                   "arguments go to the runpod SDK")
    return parser


def _options(args: argparse.Namespace) -> HardwareOptions:
    return HardwareOptions(hardware_file=getattr(args, "hardware", None), gpu=getattr(args, "gpu", None),
                           vram=getattr(args, "vram", None), gpu_count=getattr(args, "gpu_count", None),
                           ram=getattr(args, "ram", None), disk=getattr(args, "disk", None))


def main(argv: Sequence[str] | None = None, environ: Mapping[str, str] | None = None) -> int:
    environ = os.environ if environ is None else environ
    argv = list(sys.argv[1:] if argv is None else argv)
    if not argv or argv[0] not in COMMANDS and argv[0].startswith("-") and argv[0] not in ("-h", "--help", "--version"):
        argv.insert(0, "run")  # `supervisor` alone, or with only options, is `supervisor run`
    parser = build_parser()
    args, sdk_args = parser.parse_known_args(argv) if argv[:1] == ["worker"] else (parser.parse_args(argv), [])
    command = args.command or "run"
    # Logs go to stdout for the daemon (the container log) and to stderr for commands whose stdout is data.
    stream = sys.stdout if command == "run" else sys.stderr
    logs.configure(environ.get("LOG_LEVEL", "info").strip().lower() or "info",
                   environ.get("LOG_FORMAT", "auto").strip().lower() or "auto", stream=stream)
    log = logs.get_logger()
    try:
        if command == "worker":
            from .serverless import main as worker_main
            return worker_main(sdk_args, environ)
        if command == "health":
            from .run.health import command as health_command
            return health_command(args, environ)
        if command == "probe":
            return _probe(args, environ)
        ctx = load_context(environ, _options(args))
        logs.configure(ctx.settings.log_level, ctx.settings.log_format, stream=stream)
        for warning in ctx.settings.warnings:
            log.warning("settings.warning", message=warning)
        if command == "plan":
            return _plan(ctx, args)
        if command == "fetch":
            from .fetch import command as fetch_command
            return fetch_command(ctx, args)
        if command == "check":
            from .workflows import check_command
            return check_command(ctx, args)
        from .run import run as run_supervisor
        return run_supervisor(ctx, args)
    except ConfigError as exc:
        log.error("config.error", message=exc.title, problems=[str(p) for p in exc.problems])
        if logs.human_output():  # with LOG_FORMAT=json every line is one JSON object: the event says it all
            print(logs.scrub(exc.render()), file=sys.stderr)
        return exc.exit_code
    except SupervisorError as exc:
        log.error("error", message=str(exc))
        if logs.human_output():
            print(logs.scrub(str(exc)), file=sys.stderr)
        return exc.exit_code


def _probe(args: argparse.Namespace, environ: Mapping[str, str]) -> int:
    """The hardware as JSON. Reads only what the probe needs (MODELS_DIR for the disk, the GPU visibility
    variables): an unrelated bad variable is no reason to refuse to describe the machine."""
    from .plan.context import resolve_hardware
    from .plan.environment import read_variable

    models_dir = read_variable(environ, "MODELS_DIR")
    hardware = resolve_hardware(models_dir, _options(args), environ)
    print(json.dumps(hardware.to_dict(), indent=1))
    return 0


def _plan(ctx: Context, args: argparse.Namespace) -> int:
    if args.reset_oom:
        from .plan import memory

        file = memory.path(ctx.settings)
        forgotten = memory.forget(file)
        logs.get_logger().info("plan.reset_oom", file=str(file), forgotten=forgotten)
    plans = ctx.all_plans()
    for plan in plans:
        log_plan(plan)
    if args.json:
        data = plans[0].to_dict()
        if len(plans) > 1:
            data["instances"] = [{**i.to_dict(), "plan": p.to_dict()} for i, p in zip(ctx.instances, plans)]
        print(json.dumps(data, indent=1, default=str))
    elif len(plans) > 1:
        print(render_instances(list(ctx.instances), plans), end="")
    else:
        print(render(plans[0]), end="")
    return 0 if all(plan.runnable for plan in plans) else 3
