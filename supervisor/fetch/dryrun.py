"""The dry run: what a fetch would download, with exact sizes where the files were resolved and the catalogue's
estimates where they were not (offline, or the Hub unreachable)."""

from __future__ import annotations

from ._log import log
from .report import PlannedFile
from .state import FetchState, Job


def plan_only(state: FetchState, todo: list[Job], jobs: list[Job] | None, note: str = "") -> None:
    """List what would be fetched: exact sizes if `jobs` were resolved, else the catalogue's estimates (each with
    `note` saying why they are unconfirmed)."""
    planned: list[PlannedFile] = []
    if jobs is None:
        for job in todo:
            planned.append(PlannedFile(job.dest, job.download.source, job.size_hint or None, False, job.state,
                                       job.download.features, note))
    else:
        by_snapshot: dict[str, list[Job]] = {}
        for job in jobs:
            if job.snapshot:
                by_snapshot.setdefault(job.snapshot, []).append(job)
                continue
            planned.append(PlannedFile(job.dest, job.download.source, state.needed(job),
                                       job.remote is not None and job.remote.size is not None, job.state,
                                       job.download.features))
        for dest, members in by_snapshot.items():
            snap = state.snapshots[dest]
            planned.append(PlannedFile(dest, snap.download.source, sum(state.needed(j) or 0 for j in members),
                                       True, "incomplete" if snap.existed else "missing",
                                       snap.download.features, f"{len(members)} of {len(snap.files)} files"))
        for dest, snap in state.snapshots.items():
            if not snap.jobs and dest not in state.report.failed:
                state.report.verified.append(dest)
        listed = {p.dest for p in planned} | {j.snapshot for j in jobs if j.snapshot}
        for job in todo:  # could not be resolved: the catalogue's estimate, and the reason below the list
            if job.dest not in listed and job.dest not in state.report.verified:
                planned.append(PlannedFile(job.dest, job.download.source, job.size_hint or None, False, job.state,
                                           job.download.features, "not resolved, see the problem below"))
    state.report.planned = planned
    state.report.bytes_planned = sum(p.size or 0 for p in planned)
    for p in planned:
        log.info("fetch.dry_run", dest=p.dest, source=p.source, size=p.size, exact=p.exact, state=p.state)
