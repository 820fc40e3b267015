#!/usr/bin/env python3
"""Install ComfyUI and its node packs at the commits pinned in config/packs.toml (run by docker/Dockerfile).

    install_packs.py clone CONFIG [--sources DIR] [--allow-source-gaps] [--manifest FILE]
    install_packs.py requirements CONFIG --constraints FILE [--constraints FILE ...] [--extra REQUIREMENT ...]
    install_packs.py labels CONFIG

clone: each pack is cloned from its repository URL, or from DIR/<folder name> when that exists (an air-gapped or
mirrored build: any git repository, bare or not, that holds the pinned commit; `origin` is then pointed back at
the real URL). The pinned commit is checked out on the default branch, HEAD must be exactly it, and each declared
large file must be present, at least 4 MiB and identical to the commit's blob. A local source that lacks some of
the commit's blobs (mirrors that drop files over a size limit) fails the build, unless --allow-source-gaps: then
those files are left out by a sparse checkout and listed, in the log and in the manifest, as known gaps.
requirements: one pip resolution for every pack's requirement files, its `pip` requirements and the extras, with
the constraint files (docker/requirements.lock: the resolved set), then `pip check`.
labels: the image labels that record the commits, one `key=value` per line.

Standard library only (Python 3.11+): it runs before anything is installed.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import subprocess
import sys
import tomllib
from dataclasses import dataclass, field
from pathlib import Path, PurePosixPath

LARGE_FILE_MIN_BYTES = 4 * 1024 * 1024
_COMMIT = re.compile(r"^[0-9a-f]{40}$")
_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]*$")
_KEYS = {"repo", "commit", "folder", "requirements", "pip", "large_files", "note"}


class PackError(Exception):
    """A problem a person fixes in config/packs.toml, the sources or the network; the message says which."""


@dataclass(frozen=True)
class Pack:
    name: str  # the table name = the folder's name = the local source's folder name
    repo: str
    commit: str
    folder: PurePosixPath
    requirements: tuple[str, ...] = ()
    large_files: tuple[str, ...] = ()
    pip: tuple[str, ...] = ()  # requirements the pack needs but does not list

    def label(self, root: PurePosixPath) -> str:
        """io.comfyui.commit for ComfyUI itself, io.comfyui.<pack>.commit for a node pack."""
        if self.folder == root:
            return "io.comfyui.commit"
        short = self.name.lower().replace("_", "-").removeprefix("comfyui-")
        return f"io.comfyui.{short}.commit"


@dataclass
class Installed:
    pack: Pack
    source: str  # "repository" or the local source folder
    gaps: list[str] = field(default_factory=list)


# ---------------------------------------------------------------------------------------------------------------
# The configuration


def _strings(where: str, key: str, value: object) -> tuple[str, ...]:
    if not isinstance(value, list) or not all(isinstance(v, str) and v for v in value):
        raise PackError(f"{where}: {key} must be a list of relative paths, got {value!r}")
    for item in value:
        path = PurePosixPath(item)
        if path.is_absolute() or ".." in path.parts:
            raise PackError(f"{where}: {key} entry {item!r} must be a path inside the pack's folder")
    return tuple(value)


def load_packs(path: Path) -> list[Pack]:
    """The packs of a packs.toml, parents before the packs installed inside them (ComfyUI first)."""
    try:
        data = tomllib.loads(path.read_text())
    except (OSError, tomllib.TOMLDecodeError) as error:
        raise PackError(f"{path}: {error}") from None
    tables = data.get("packs")
    if not isinstance(tables, dict) or not tables:
        raise PackError(f"{path}: no [packs.<name>] tables")
    packs = []
    for name, table in tables.items():
        where = f"{path.name} [packs.{name}]"
        if not _NAME.match(name) or not isinstance(table, dict):
            raise PackError(f"{where}: a pack is a table named like its folder (letters, digits, . _ -)")
        unknown, missing = set(table) - _KEYS, {"repo", "commit", "folder"} - set(table)
        if unknown or missing:
            raise PackError(f"{where}: unknown keys {sorted(unknown)}, missing keys {sorted(missing)}")
        commit, folder = str(table["commit"]), PurePosixPath(str(table["folder"]))
        if not _COMMIT.match(commit):
            raise PackError(f"{where}: commit must be the full 40-character lower-case id, got {commit!r}")
        if not folder.is_absolute() or folder.name != name:
            raise PackError(f"{where}: folder must be an absolute path ending in /{name}, got {str(folder)!r}")
        pip = table.get("pip", [])
        if not isinstance(pip, list) or not all(isinstance(r, str) and r.strip() for r in pip):
            raise PackError(f"{where}: pip must be a list of requirement strings, got {pip!r}")
        packs.append(Pack(name, str(table["repo"]), commit, folder,
                          _strings(where, "requirements", table.get("requirements", [])),
                          _strings(where, "large_files", table.get("large_files", [])), tuple(pip)))
    packs.sort(key=lambda p: len(p.folder.parts))
    root = packs[0].folder
    for pack in packs[1:]:
        if root not in pack.folder.parents:
            raise PackError(f"{path.name} [packs.{pack.name}]: folder {pack.folder} is not inside {root}, "
                            f"the folder of the one top-level pack ({packs[0].name})")
    for pack, other in zip(packs, packs[1:]):
        if pack.folder == other.folder:
            raise PackError(f"{path.name}: [packs.{pack.name}] and [packs.{other.name}] share {pack.folder}")
    return packs


# ---------------------------------------------------------------------------------------------------------------
# clone


def git(*args: str, cwd: Path | None = None) -> str:
    # safe.directory: a bind-mounted local source belongs to whoever made it, not to the build's user.
    result = subprocess.run(["git", "-c", "safe.directory=*", *args], cwd=cwd, capture_output=True, text=True)
    if result.returncode != 0:
        raise PackError(f"git {' '.join(args)} failed: {result.stderr.strip() or result.stdout.strip()}")
    return result.stdout.strip()


def missing_blobs(checkout: Path, commit: str) -> list[str]:
    """Paths of the commit's files whose content the repository does not hold."""
    listing = git("ls-tree", "-r", "-z", "--full-tree", commit, cwd=checkout)
    blobs = {}
    for entry in filter(None, listing.split("\0")):
        meta, path = entry.split("\t", 1)
        _, kind, sha = meta.split()
        if kind == "blob":
            blobs.setdefault(sha, []).append(path)
    if not blobs:
        return []
    check = subprocess.run(["git", "-c", "safe.directory=*", "cat-file", "--batch-check"], cwd=checkout,
                           input="\n".join(blobs) + "\n", capture_output=True, text=True, check=True)
    absent = [line.split()[0] for line in check.stdout.splitlines() if line.endswith(" missing")]
    return sorted(path for sha in absent for path in blobs[sha])


def check_large_files(pack: Pack, checkout: Path, gaps: list[str]) -> None:
    for name in pack.large_files:
        if name in gaps:
            print(f"GAP {pack.name}/{name}: absent from the local source; this image lacks it", flush=True)
            continue
        file = checkout / name
        size = file.stat().st_size if file.is_file() else 0
        if size < LARGE_FILE_MIN_BYTES or git("hash-object", name, cwd=checkout) != \
                git("rev-parse", f"{pack.commit}:{name}", cwd=checkout):
            raise PackError(f"{pack.name}/{name} is missing, truncated ({size} bytes) or not the committed file")
        print(f"ok {pack.name}/{name} {size} bytes", flush=True)


def clone(pack: Pack, sources: Path | None, allow_gaps: bool) -> Installed:
    local = sources / pack.name if sources else None
    from_local = local is not None and local.exists()
    dest = Path(pack.folder)
    git("clone", "--quiet", "--no-checkout", *(["--no-hardlinks", str(local)] if from_local else [pack.repo]),
        str(dest))
    installed = Installed(pack, str(local) if from_local else "repository")
    if from_local:
        git("remote", "set-url", "origin", pack.repo, cwd=dest)
    try:
        git("cat-file", "-e", f"{pack.commit}^{{commit}}", cwd=dest)
    except PackError:
        raise PackError(f"{pack.name}: commit {pack.commit} is not in {installed.source} ({pack.repo})") from None
    default = git("symbolic-ref", "--short", "HEAD", cwd=dest)
    try:
        git("merge-base", "--is-ancestor", pack.commit, default, cwd=dest)
    except PackError:
        raise PackError(f"{pack.name}: commit {pack.commit} is not on the default branch {default}, so "
                        "UPDATE_NODES_ON_START could not fast-forward from it") from None
    if from_local:
        installed.gaps = missing_blobs(dest, pack.commit)
    if installed.gaps and not allow_gaps:
        raise PackError(f"{pack.name}: the local source {local} lacks {len(installed.gaps)} file(s) of commit "
                        f"{pack.commit}: {', '.join(installed.gaps)}. Use a complete clone, or pass "
                        "--build-arg ALLOW_SOURCE_GAPS=true to build a test image without them")
    if installed.gaps:
        git("sparse-checkout", "set", "--no-cone", "/*", *(f"!/{path}" for path in installed.gaps), cwd=dest)
        for path in installed.gaps:
            print(f"GAP {pack.name}/{path}: absent from the local source, left out", flush=True)
    git("reset", "--quiet", "--hard", pack.commit, cwd=dest)
    head = git("rev-parse", "HEAD", cwd=dest)
    if head != pack.commit:
        raise PackError(f"{pack.name}: HEAD is {head}, not the pinned {pack.commit}")
    check_large_files(pack, dest, installed.gaps)
    print(f"{pack.name} {pack.commit} from {installed.source} -> {dest}", flush=True)
    return installed


def clone_all(packs: list[Pack], sources: Path | None, allow_gaps: bool, manifest: Path | None) -> None:
    installed = [clone(pack, sources, allow_gaps) for pack in packs]
    if manifest:
        records = [{"name": i.pack.name, "repo": i.pack.repo, "commit": i.pack.commit, "folder": str(i.pack.folder),
                    "source": "local" if i.source != "repository" else "repository", "gaps": i.gaps}
                   for i in installed]
        manifest.write_text(json.dumps(records, indent=2) + "\n")


# ---------------------------------------------------------------------------------------------------------------
# requirements


def requirement_args(packs: list[Pack]) -> list[str]:
    args = []
    for pack in packs:
        for name in pack.requirements:
            file = Path(pack.folder) / name
            if not file.is_file():
                raise PackError(f"{pack.name}: requirement file {file} does not exist at {pack.commit}")
            args += ["-r", str(file)]
        args += pack.pip
    return args


def install_requirements(packs: list[Pack], constraints: list[Path], extras: list[str]) -> None:
    pip = [sys.executable, "-m", "pip"]
    command = [*pip, "install", "--no-cache-dir", *(a for c in constraints for a in ("-c", str(c))),
               *requirement_args(packs), *extras]
    print("+ " + " ".join(command), flush=True)
    if subprocess.run(command).returncode != 0:
        raise PackError("pip could not install the packs' requirements in one resolution (see above)")
    if subprocess.run([*pip, "check"]).returncode != 0:
        raise PackError("pip check found inconsistent requirements (see above)")


# ---------------------------------------------------------------------------------------------------------------


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="install_packs.py", description=__doc__.split("\n\n")[0])
    commands = parser.add_subparsers(dest="command", required=True)
    clone_cmd = commands.add_parser("clone", help="clone every pack at its pin and verify it")
    clone_cmd.add_argument("config", type=Path)
    clone_cmd.add_argument("--sources", type=Path, help="folder of local git repositories, one per pack")
    clone_cmd.add_argument("--allow-source-gaps", action="store_true",
                           help="leave out files a local source lacks (a test build), instead of failing")
    clone_cmd.add_argument("--manifest", type=Path, help="write what was installed, from where, as JSON")
    req_cmd = commands.add_parser("requirements", help="install every pack's requirements in one resolution")
    req_cmd.add_argument("config", type=Path)
    req_cmd.add_argument("--constraints", type=Path, action="append", required=True,
                         help="a constraints file (repeatable)")
    req_cmd.add_argument("--extra", action="append", default=[], dest="extras", metavar="REQUIREMENT",
                         help="one more requirement for the same resolution (repeatable)")
    labels_cmd = commands.add_parser("labels", help="print the image labels that record the commits")
    labels_cmd.add_argument("config", type=Path)
    args = parser.parse_args(argv)
    try:
        packs = load_packs(args.config)
        if args.command == "clone":
            sources = args.sources if args.sources and any(args.sources.iterdir()) else None
            clone_all(packs, sources, args.allow_source_gaps, args.manifest)
        elif args.command == "requirements":
            install_requirements(packs, args.constraints, args.extras)
        else:
            for pack in packs:
                print(f"{pack.label(packs[0].folder)}={pack.commit}")
    except PackError as error:
        print(f"install_packs.py: error: {error}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
