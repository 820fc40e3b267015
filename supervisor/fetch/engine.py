"""fetch_plan: every file of the plan present and verified under MODELS_DIR.

Phases, each cheaper than the next, so a warm boot stops after the first:
1. `scan`: one stat and one marker read per destination; verified files are done (no network, no hashing; with
   `verify` they are re-hashed instead). HF_HUB_OFFLINE stops here too: success, or a list of what is missing.
2. `lookup` (network, metadata only): snapshot folders become their files; each file gets its URL, size and sha256.
3. `download`: the disk check, then the downloads, each under a lock, each with a marker at the end.
4. here: snapshot markers, the summary event, and FetchError for what needs the user.
The state they share (the report, the bookkeeping of each file) is `state.FetchState`.
"""

from __future__ import annotations

import threading
from typing import Any, Callable

from .. import logs
from ..plan import volume
from ..plan.types import Plan
from ..plan.settings import Settings
from ._log import log
from .download import disk_full_error, download_all
from .dryrun import plan_only
from .errors import FetchError
from .lookup import resolve_all
from .preflight import check_disk, check_models_dir
from .progress import Progress
from .report import FetchReport
from .scan import offline, scan
from .state import FetchState, Job
from .store import clean_hf_orphans
from .tuning import Tuning


def fetch_plan(plan: Plan, settings: Settings, *, stop: threading.Event | None = None, verify: bool = False,
               dry_run: bool = False, on_progress: Callable[[dict[str, Any]], None] | None = None,
               tuning: Tuning | None = None) -> FetchReport:
    """Bring every file of `plan` to MODELS_DIR, verified. Blocking; safe in a thread. When `stop` is set it returns
    within about a second with `interrupted=True`, partial files kept for the next start. Raises FetchError when the
    user must act (disk full, offline with files missing, gated or missing files); its `.report` says what got done."""
    for secret in settings.secrets():
        logs.register_secret(secret)
    state = FetchState(plan, settings, stop or threading.Event(), verify or settings.verify_downloads,
                       dry_run or settings.dry_run, on_progress, tuning)
    todo = scan(state)
    if not todo:
        state.summary()  # warm boot: no network, no hashing
        return state.report
    if not state.dry_run:
        check_models_dir(state.models_dir)
    if settings.hf_hub_offline:
        if state.dry_run:
            plan_only(state, todo, None, note="offline")
        else:
            offline(state, todo)
        state.summary()
        return state.report
    return _online(state, todo)


def _online(state: FetchState, todo: list[Job]) -> FetchReport:
    from .net import make_client
    from .transfer import Run, Sockets

    settings = state.settings
    clean_hf_orphans(state.models_dir, {j.dest.split("/", 1)[0] for j in todo})
    connections = settings.download_connections * settings.download_concurrency
    progress = Progress(interval=state.tuning.progress_interval, on_progress=state.on_progress)
    jobs: list[Job] = []
    with make_client(connections, settings.download_stall_timeout) as client:
        state.run = Run(client=client, halt=state.halt, progress=progress, sockets=Sockets(),
                        connections=settings.download_connections, retries=settings.download_retries,
                        deadline_s=settings.download_timeout, tuning=state.tuning)
        progress.start()  # on_progress ticks from here on, resolving included
        try:
            jobs = resolve_all(state, todo)
            if state.stop.is_set():
                state.report.interrupted = True
            elif state.dry_run and state.unreachable:
                # The list still helps: every file from the catalogue, its size marked as unconfirmed.
                for dest in state.unreachable_dests:
                    state.report.failed.pop(dest, None)
                plan_only(state, todo, None, note="catalogue size, unconfirmed: the Hub could not be reached")
            elif state.dry_run:
                plan_only(state, todo, jobs)
            else:
                check_disk(state, jobs)
                download_all(state, jobs)
                finish_snapshots(state)
                if state.stop.is_set() and state.disk_full is None:
                    state.report.interrupted = True
        finally:
            progress.stop()
    state.summary()
    if state.report.interrupted:
        log.warning("fetch.interrupted", message="stopped; partial files are kept and resume at the next start")
    if state.disk_full is not None:
        raise disk_full_error(state, jobs)
    # Access and catalogue problems need the user (a token, a licence, a fix in the catalogue): raised. Failures that
    # another start may overcome (retries ran out, bytes stayed corrupt, DOWNLOAD_TIMEOUT) stay in report.failed.
    access = [p for p, is_access in state.problems if is_access]
    if access and not state.dry_run:
        raise FetchError(access, f"{len(access)} file{'s' if len(access) != 1 else ''} cannot be downloaded "
                                 "without a change to the environment or the catalogue", report=state.report,
                         config=True)
    return state.report


def finish_snapshots(state: FetchState) -> None:
    """Phase 4: a snapshot is verified when each of its files has a marker of the listed size."""
    for dest, snap in state.snapshots.items():
        if dest in state.report.failed:
            continue
        sizes = []
        for rel, size in snap.files:
            marker = volume.read_marker(state.models_dir, f"{dest}/{rel}")
            if marker is None or marker.size != size:
                break
            sizes.append((rel, size))
        else:
            volume.write_marker(state.models_dir, dest, volume.Marker(
                size=sum(s for _, s in sizes), mtime_ns=0, etag=snap.commit,
                source=volume.identity(snap.download), files=tuple(sizes)))
            with state.lock:
                (state.report.downloaded if snap.touched else state.report.verified).append(dest)
            log.info("fetch.verified", dest=dest, how="snapshot", files=len(sizes), commit=snap.commit)
