"""`supervisor fetch`: the plan's files, fetched and verified, from the command line."""

from __future__ import annotations

import argparse
import signal
import sys
import threading
from typing import TYPE_CHECKING, Any

from ._log import log
from .engine import fetch_plan
from .report import render_dry_run

if TYPE_CHECKING:
    from ..plan.context import Context



def command(ctx: "Context", args: argparse.Namespace) -> int:
    """Exit codes: 0 all present and verified (or the dry run listed everything); 1 a download failed, the disk is
    full, or files are missing offline; 2 access or catalogue problems only (gated, missing repo/file, pinned
    sha256 differs: fixed by HF_TOKEN or the catalogue); 128+N when stopped by signal N (partials kept)."""
    from ..plan.instances import pod_files

    plan = pod_files(ctx.all_plans())  # every instance's files, each once
    for error in plan.errors:
        log.warning("fetch.plan_error", message=error)
    dry_run = bool(getattr(args, "dry_run", False)) or ctx.settings.dry_run
    verify = bool(getattr(args, "verify", False)) or ctx.settings.verify_downloads
    stop = threading.Event()
    caught: list[int] = []

    def on_signal(signum: int, _frame: Any) -> None:
        caught.append(signum)
        stop.set()

    previous = {}
    if threading.current_thread() is threading.main_thread():
        for signum in (signal.SIGINT, signal.SIGTERM):
            previous[signum] = signal.signal(signum, on_signal)
    try:
        report = fetch_plan(plan, ctx.settings, stop=stop, verify=verify, dry_run=dry_run)
    finally:
        for signum, handler in previous.items():
            signal.signal(signum, handler)
    if report.dry_run:
        sys.stdout.write(render_dry_run(report))
        sys.stdout.flush()
        return 1 if report.failed else 0
    if report.interrupted:
        return 128 + (caught[0] if caught else signal.SIGTERM)
    return 0 if report.ok else 1
