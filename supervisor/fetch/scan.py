"""Phase 1 of a fetch: what is on disk already. One stat and one marker read per destination, no network.

Files whose marker still matches are done (with `verify` they are re-hashed instead). With HF_HUB_OFFLINE the fetch
stops after this phase: success, or a list of what is missing (`offline`).
"""

from __future__ import annotations

from ..plan import volume
from ..errors import Problem
from ..plan.types import Download
from ._log import log
from .errors import FetchError
from .hashing import hash_file
from .report import human
from .state import FetchState, Job


def scan(state: FetchState) -> list[Job]:
    """The plan's destinations that are not verified on disk, as jobs; verified ones go into the report."""
    todo: list[Job] = []
    seen: set[str] = set()
    for download in state.plan.downloads:
        if download.dest in seen:
            continue
        seen.add(download.dest)
        file_state = volume.file_state(state.models_dir, download)
        if file_state == volume.VERIFIED and state.verify and not state.dry_run:
            file_state = _rehash(state, download)
        if file_state == volume.VERIFIED:
            state.report.verified.append(download.dest)
            log.debug("fetch.verified", dest=download.dest, how="marker")
            continue
        todo.append(Job(download=download, dest=download.dest, kind=download.kind, path=download.path,
                        revision=download.revision, size_hint=download.size, pin_sha256=download.sha256 or "",
                        source_id=volume.identity(download), state=file_state,
                        known_bad=download.dest in state.rehash_failed))
    return todo


def _rehash(state: FetchState, download: Download) -> str:
    """`verify`: hash a marker-verified file (or each file of a snapshot) against its marker."""
    if download.kind == "snapshot":
        marker = volume.read_marker(state.models_dir, download.dest)
        bad = [rel for rel, _ in (marker.files if marker else ())
               if not _rehash_one(state, f"{download.dest}/{rel}", "")]
        if bad:
            volume.remove_marker(state.models_dir, download.dest)
            state.report.repaired.append(download.dest)
            return volume.WRONG_SIZE
        log.info("fetch.verified", dest=download.dest, how="rehashed")
        return volume.VERIFIED
    if _rehash_one(state, download.dest, download.sha256 or ""):
        log.info("fetch.verified", dest=download.dest, how="rehashed")
        return volume.VERIFIED
    state.rehash_failed.add(download.dest)
    state.report.repaired.append(download.dest)
    return volume.WRONG_SIZE


def _rehash_one(state: FetchState, dest: str, pin: str) -> bool:
    marker = volume.read_marker(state.models_dir, dest)
    expected = pin or (marker.sha256 if marker else "")
    try:
        digests = hash_file(state.models_dir / dest, stop=state.stop)
    except OSError as exc:
        log.warning("fetch.repaired", dest=dest, reason=f"unreadable: {exc}")
        volume.remove_marker(state.models_dir, dest)
        return False
    if expected and digests.sha256 == expected:
        return True
    log.warning("fetch.repaired", dest=dest, reason="sha256 differs from its marker", found=digests.sha256,
                expected=expected or None)
    volume.remove_marker(state.models_dir, dest)
    return False


def offline(state: FetchState, todo: list[Job]) -> None:
    """HF_HUB_OFFLINE: adopt what can be checked without the network; raise FetchError listing what is missing."""
    missing: list[Problem] = []
    for job in todo:
        if job.state == volume.UNVERIFIED and job.kind != "snapshot" and job.pin_sha256:
            if hash_file(state.models_dir / job.dest, stop=state.stop).sha256 == job.pin_sha256:
                state.mark_file(job, job.pin_sha256, "")
                state.report.verified.append(job.dest)
                log.info("fetch.verified", dest=job.dest, how="hashed_offline")
                continue
        elif job.state == volume.UNVERIFIED:
            state.report.verified.append(job.dest)
            log.warning("fetch.unverified_offline", dest=job.dest,
                        message="present with the catalogue's size but never verified; trusted because "
                                "HF_HUB_OFFLINE is set (it is hashed at the next online start)")
            continue
        size = human(job.size_hint) if job.size_hint else "size unknown"
        missing.append(Problem(job.dest, f"{job.state.replace('_', ' ')} ({job.download.source}, {size}, "
                                         f"for {', '.join(job.download.features) or 'the catalogue'})",
                               f"unset HF_HUB_OFFLINE, or put the file at {state.models_dir / job.dest}"))
    for problem in missing:
        state.report.failed[problem.where] = f"{problem.what}; {problem.fix}"
    if missing:
        state.summary()
        raise FetchError(missing, f"HF_HUB_OFFLINE is set and {len(missing)} file"
                                  f"{'s are' if len(missing) != 1 else ' is'} missing under {state.models_dir}",
                         report=state.report)
