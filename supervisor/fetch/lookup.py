"""Phase 2 of a fetch (network, metadata only): snapshot folders become their files (tree API); each file gets its
URL, size and sha256 (one HEAD). Access problems (gated, missing) surface here, before any byte is written.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any, Callable

from ..plan import volume
from ._log import log
from .errors import FetchFailure, Interrupted, Permanent
from .state import FetchState, Job, Snapshot, parallel

if TYPE_CHECKING:
    from .resolve import Remote


def resolve_all(state: FetchState, todo: list[Job]) -> list[Job]:
    """The jobs to download, each with its `remote`; failures are recorded in the state and left out."""
    jobs: list[Job] = []
    snapshots = [j for j in todo if j.kind == "snapshot"]
    jobs += [j for j in todo if j.kind != "snapshot"]
    parallel(snapshots, lambda job: _expand(state, job), 8, state)
    for snap in state.snapshots.values():
        jobs += snap.jobs
    parallel(jobs, lambda job: _resolve(state, job), 8, state)
    return [j for j in jobs if j.remote is not None]


def _expand(state: FetchState, job: Job) -> None:
    from .resolve import list_snapshot

    d = job.download
    try:
        commit, files = state.retrying(lambda: list_snapshot(
            endpoint=state.settings.hf_endpoint, repo=d.repo, revision=d.revision, allow=d.allow,
            token=state.token(d.auth_env), timeout=state.settings.download_stall_timeout, features=d.features),
            f"list {d.repo}")
    except Interrupted:
        return
    except FetchFailure as exc:
        state.fail(job.dest, exc)
        return
    snap = Snapshot(download=d, commit=commit, files=[(f.path, f.size) for f in files],
                    existed=job.state != volume.MISSING)
    for f in files:
        dest = f"{d.dest}/{f.path}"
        if _member_ok(state, dest, f.size, f.sha256, f.etag):
            continue
        target = state.models_dir / dest
        member_state = volume.MISSING if not target.exists() else volume.WRONG_SIZE
        snap.jobs.append(Job(download=d, dest=dest, kind="file", path=f.path, revision=commit, size_hint=f.size,
                             pin_sha256=f.sha256, git_sha1="" if f.sha256 else f.etag,
                             source_id=f"{d.repo}@{d.revision}:{f.path}", state=member_state, snapshot=d.dest,
                             rel=f.path))
    with state.lock:
        state.snapshots[d.dest] = snap
    log.info("fetch.resolve", dest=d.dest, source=d.source, commit=commit, files=len(files),
             to_fetch=len(snap.jobs), size=sum(f.size for f in files))


def _member_ok(state: FetchState, dest: str, size: int, sha256: str, etag: str) -> bool:
    marker = volume.read_marker(state.models_dir, dest)
    if marker is None:
        return False
    try:
        stat = (state.models_dir / dest).stat()
    except OSError:
        return False
    if (stat.st_size, stat.st_mtime_ns) != (marker.size, marker.mtime_ns) or marker.size != size:
        return False
    return marker.sha256 == sha256 if sha256 else marker.etag == etag


def _resolver(state: FetchState, job: Job) -> Callable[[], "Remote"]:
    from .resolve import resolve_hub_file, resolve_url

    d = job.download
    token = state.token(d.auth_env)
    if job.kind == "url":
        assert state.run is not None
        client = state.run.client
        return lambda: resolve_url(client, d.url, token)
    return lambda: resolve_hub_file(endpoint=state.settings.hf_endpoint, repo=d.repo, path=job.path,
                                    revision=job.revision, token=token,
                                    timeout=state.settings.download_stall_timeout, features=d.features)


def _resolve(state: FetchState, job: Job) -> None:
    d = job.download
    try:
        remote = state.retrying(_resolver(state, job), f"resolve {job.dest}")
        if job.pin_sha256 and remote.sha256 and job.pin_sha256 != remote.sha256:
            what = "the catalogue pins" if not job.snapshot else "the file list says"
            raise Permanent(f"{what} sha256 {job.pin_sha256} but the server has {remote.sha256} for "
                            f"{d.source}@{job.revision}", "sha256_pin", access=True,
                            fix="update `sha256` in the catalogue, or pin `revision` to the commit it was taken from")
    except Interrupted:
        return
    except FetchFailure as exc:
        state.fail(job.dest if not job.snapshot else job.snapshot, exc, member=job.rel)
        return
    if job.size_hint and remote.size is not None and remote.size != job.size_hint and not job.snapshot:
        log.info("fetch.size_differs", dest=job.dest, catalogue=job.size_hint, server=remote.size)
    job.remote = remote
    log.info("fetch.resolve", dest=job.dest, size=remote.size, sha256=remote.sha256 or None,
             commit=remote.commit or None, ranges=remote.ranges)


def resolve_again(state: FetchState, job: Job) -> "Remote":
    """A fresh URL for a file being downloaded (its signed CDN URL expired), with the metadata retries."""
    resolver: Callable[[], Any] = _resolver(state, job)
    return state.retrying(resolver, f"resolve {job.dest}")
