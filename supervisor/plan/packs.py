"""The node packs the image installs: `config/packs.toml` -> validated `Pack`s (repository, pinned commit, folder).

The catalogue's features name the packs whose nodes load their files; `catalog.load_catalog` checks those names
against this file, and `supervisor plan` shows each enabled feature's packs with their pins. The image build
(docker/install_packs.py) reads the same file, so what the plan promises is what the image has.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from ..errors import Problem

try:  # Python 3.11+
    import tomllib
except ModuleNotFoundError:  # pragma: no cover - Python 3.10
    import tomli as tomllib  # type: ignore[no-redef]

COMMIT = re.compile(r"^[0-9a-f]{40}$")
CORE = "comfyui"  # ComfyUI itself: the `[comfyui]` table, named by features whose nodes are core nodes
_FIELDS = {"repo", "commit", "folder", "requirements", "pip", "note", "base"}


@dataclass(frozen=True)
class Pack:
    id: str
    repo: str
    commit: str
    folder: str = ""  # under ComfyUI/custom_nodes/ ("" for ComfyUI itself)
    requirements: tuple[str, ...] = ()
    pip: tuple[str, ...] = ()
    note: str = ""
    base: bool = False

    @property
    def name(self) -> str:
        """What a person recognises: the repository's name (`ComfyUI-GGUF`)."""
        return self.repo.rstrip("/").rsplit("/", 1)[-1].removesuffix(".git")

    @property
    def label(self) -> str:
        """`ComfyUI-GGUF@be2a0833`: the pack and its pin, for plan output and the README."""
        return f"{self.name}@{self.commit[:8]}"


def load_packs(path: Path, problems: list[Problem]) -> dict[str, Pack]:
    """Every pack of `path` (ComfyUI itself under the id `comfyui`); each bad entry is a Problem naming it."""
    try:
        data = tomllib.loads(Path(path).read_text(encoding="utf-8"))
    except FileNotFoundError:
        problems.append(Problem(str(path), "node pack list not found", "it ships beside config/catalog.toml"))
        return {}
    except (OSError, tomllib.TOMLDecodeError) as exc:
        problems.append(Problem(str(path), f"cannot read TOML: {exc}"))
        return {}
    packs: dict[str, Pack] = {}
    tables: list[tuple[str, Any]] = [(CORE, data.get(CORE, {}))] + list((data.get("packs") or {}).items())
    for pack_id, raw in tables:
        where = f"[{CORE}]" if pack_id == CORE else f"[packs.{pack_id}] in {path}"
        pack = _pack(pack_id, raw, where, problems, core=pack_id == CORE)
        if pack:
            packs[pack_id] = pack
    folders = [p.folder for p in packs.values() if p.folder]
    for folder in sorted({f for f in folders if folders.count(f) > 1}):
        problems.append(Problem(str(path), f"two packs install into custom_nodes/{folder}"))
    return packs


def _pack(pack_id: str, raw: Any, where: str, problems: list[Problem], core: bool) -> Pack | None:
    if not isinstance(raw, dict):
        problems.append(Problem(where, "must be a table"))
        return None
    before = len(problems)
    unknown = sorted(set(raw) - _FIELDS)
    if unknown:
        problems.append(Problem(where, f"unknown field(s) {', '.join(unknown)}", "check the spelling"))
    repo, commit, folder = raw.get("repo", ""), raw.get("commit", ""), raw.get("folder", "")
    if not isinstance(repo, str) or not repo.startswith("https://"):
        problems.append(Problem(where, f"repo {repo!r} must be an https:// git URL"))
    if not isinstance(commit, str) or not COMMIT.match(commit):
        problems.append(Problem(where, f"commit {commit!r} must be a full 40-digit commit id (a pin, not a branch)"))
    if not core and (not isinstance(folder, str) or not re.fullmatch(r"[A-Za-z0-9][A-Za-z0-9._-]*", folder)):
        problems.append(Problem(where, f"folder {folder!r} must be one directory name under custom_nodes/"))
    lists = {}
    for name in ("requirements", "pip"):
        value = raw.get(name, [])
        if not isinstance(value, list) or not all(isinstance(v, str) for v in value):
            problems.append(Problem(where, f"field '{name}' must be a list of strings"))
            value = []
        lists[name] = tuple(value)
    if len(problems) > before:
        return None
    return Pack(id=pack_id, repo=repo, commit=commit, folder=folder if not core else "",
                requirements=lists["requirements"], pip=lists["pip"], note=str(raw.get("note", "")),
                base=bool(raw.get("base", False)))
