"""What is already on the models volume, judged without reading file contents.

A file that the fetcher verified gets a marker (`<MODELS_DIR>/.supervisor/verified/<dest>.json`) recording its size,
mtime, sha256/etag and where it came from. A file is *verified* while its size and mtime still match its marker,
which costs one stat and one small read per file: a volume of tens of GB is checked in milliseconds on every boot.
A file without a marker whose size equals the catalogue's is *unverified* (the fetcher hashes it once); any other
size needs repair. A marker written for another source (the catalogue now names another repo, revision, URL or
`allow` list for this destination) makes the file *stale*: it is fetched again.

A snapshot's marker lists (relative path, size) of each file; the folder is verified while every one of them
still has that size.
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Iterable, Protocol

STATE_DIR = ".supervisor"
MARKERS = "verified"

VERIFIED = "verified"
UNVERIFIED = "unverified"  # right size, no marker (e.g. left by the old template)
WRONG_SIZE = "wrong_size"
STALE = "stale"  # verified once, but for another source than the catalogue names now
MISSING = "missing"


class Spec(Protocol):
    """What the volume needs to know of a file: `catalog.FileSpec` and `plan.Download` both fit."""

    dest: str
    kind: str
    size: int
    sha256: str | None
    repo: str
    path: str
    revision: str
    url: str
    allow: tuple[str, ...]


@dataclass(frozen=True)
class Marker:
    size: int
    mtime_ns: int
    sha256: str = ""
    etag: str = ""
    source: str = ""  # identity(spec) of what was fetched
    files: tuple[tuple[str, int], ...] = ()  # snapshot: (relative path, size) of each file

    def to_json(self) -> str:
        return json.dumps({"size": self.size, "mtime_ns": self.mtime_ns, "sha256": self.sha256, "etag": self.etag,
                           "source": self.source, "files": [list(f) for f in self.files]}, indent=1)


def identity(spec: Spec) -> str:
    """Where a destination's content comes from, as recorded in its marker."""
    if spec.kind == "url":
        return spec.url
    if spec.kind == "snapshot":
        return f"{spec.repo}@{spec.revision}:{','.join(spec.allow) or '*'}"
    return f"{spec.repo}@{spec.revision}:{spec.path}"


def marker_path(models_dir: Path, dest: str) -> Path:
    return Path(models_dir) / STATE_DIR / MARKERS / f"{dest}.json"


def read_marker(models_dir: Path, dest: str) -> Marker | None:
    try:
        data = json.loads(marker_path(models_dir, dest).read_text())
        return Marker(size=int(data["size"]), mtime_ns=int(data["mtime_ns"]), sha256=data.get("sha256", ""),
                      etag=data.get("etag", ""), source=data.get("source", ""),
                      files=tuple((str(p), int(s)) for p, s in data.get("files", [])))
    except (OSError, ValueError, KeyError, TypeError):
        return None


def write_marker(models_dir: Path, dest: str, marker: Marker) -> None:
    """Record `dest` as verified. Written beside, then renamed, so a crash never leaves half a marker."""
    path = marker_path(models_dir, dest)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    tmp.write_text(marker.to_json())
    os.replace(tmp, path)


def remove_marker(models_dir: Path, dest: str) -> None:
    try:
        marker_path(models_dir, dest).unlink()
    except FileNotFoundError:
        pass


def file_marker(models_dir: Path, dest: str, source: str, sha256: str = "", etag: str = "") -> Marker:
    """Stat `dest` now and describe it as verified (call right after it was placed or hashed)."""
    stat = (Path(models_dir) / dest).stat()
    return Marker(size=stat.st_size, mtime_ns=stat.st_mtime_ns, sha256=sha256, etag=etag, source=source)


def file_state(models_dir: Path, spec: Spec) -> str:
    target = Path(models_dir) / spec.dest
    marker = read_marker(models_dir, spec.dest)
    if marker and marker.source and marker.source != identity(spec):
        return STALE if target.exists() else MISSING
    if spec.kind == "snapshot":
        if marker is None or not target.is_dir():
            return MISSING if not target.exists() else UNVERIFIED
        for rel, size in marker.files:
            try:
                if (target / rel).stat().st_size != size:
                    return WRONG_SIZE
            except OSError:
                return WRONG_SIZE
        return VERIFIED
    try:
        stat = target.stat()
    except OSError:
        return MISSING
    if marker and marker.size == stat.st_size and marker.mtime_ns == stat.st_mtime_ns:
        if spec.sha256 and marker.sha256 and marker.sha256 != spec.sha256:
            return STALE  # the catalogue now pins other content
        return VERIFIED
    if spec.size and stat.st_size == spec.size:
        return UNVERIFIED
    return WRONG_SIZE


def scan(models_dir: Path, specs: Iterable[Spec]) -> dict[str, str]:
    """dest -> state for each spec."""
    return {spec.dest: file_state(models_dir, spec) for spec in specs}


def present(models_dir: Path, specs: Iterable[Spec]) -> frozenset[str]:
    """Dests that need no download: verified by marker, or of the catalogue's exact size (hashed by fetch later)."""
    return frozenset(dest for dest, state in scan(models_dir, specs).items() if state in (VERIFIED, UNVERIFIED))
