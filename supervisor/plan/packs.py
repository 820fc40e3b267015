"""The node packs the image installs: `config/packs.toml` -> validated `Pack`s (repository, pinned commit, folder).
The same file drives the image build (docker/install_packs.py); this side only reads what the plan needs.

The catalogue's features name the packs whose nodes load their files; `catalog_load.load_catalog` checks those names
against this file, and `supervisor plan` shows each enabled feature's packs with their pins. The image build
(docker/install_packs.py) reads the same file, so what the plan promises is what the image has.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path, PurePosixPath
from typing import Any

from ..errors import Problem

try:  # Python 3.11+
    import tomllib
except ModuleNotFoundError:  # pragma: no cover - Python 3.10
    import tomli as tomllib  # type: ignore[no-redef]

COMMIT = re.compile(r"^[0-9a-f]{40}$")
CORE = "ComfyUI"  # ComfyUI itself, named by features whose nodes are core nodes
CUSTOM_NODES = PurePosixPath("/opt/ComfyUI/custom_nodes")
_FIELDS = {"repo", "commit", "folder", "requirements", "pip", "large_files", "note"}


@dataclass(frozen=True)
class Pack:
    id: str  # the table name = its folder's name under custom_nodes/ ("ComfyUI" for ComfyUI itself)
    repo: str
    commit: str
    folder: str  # where the image installs it
    requirements: tuple[str, ...] = ()
    pip: tuple[str, ...] = ()
    note: str = ""

    @property
    def custom_node(self) -> str:
        """Its folder under custom_nodes/ ("" for ComfyUI itself)."""
        return "" if self.id == CORE else self.id

    @property
    def label(self) -> str:
        """`ComfyUI-GGUF@be2a0833`: the pack and its pin, for plan output and the README."""
        return f"{'ComfyUI core' if self.id == CORE else self.id}@{self.commit[:8]}"


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
    for pack_id, raw in (data.get("packs") or {}).items():
        pack = _pack(pack_id, raw, f"[packs.{pack_id}] in {path}", problems)
        if pack:
            packs[pack_id] = pack
    if CORE not in packs:
        problems.append(Problem(str(path), f"no [packs.{CORE}] table (ComfyUI itself)"))
    return packs


def _pack(pack_id: str, raw: Any, where: str, problems: list[Problem]) -> Pack | None:
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
    expected = str(CUSTOM_NODES.parent) if pack_id == CORE else str(CUSTOM_NODES / pack_id)
    if folder != expected:
        problems.append(Problem(where, f"folder {folder!r} must be {expected!r}",
                                "a node pack is installed under custom_nodes/ in a folder named as its table"))
    lists = {}
    for name in ("requirements", "pip", "large_files"):
        value = raw.get(name, [])
        if not isinstance(value, list) or not all(isinstance(v, str) for v in value):
            problems.append(Problem(where, f"field '{name}' must be a list of strings"))
            value = []
        lists[name] = tuple(value)
    if len(problems) > before:
        return None
    return Pack(id=pack_id, repo=repo, commit=commit, folder=folder, requirements=lists["requirements"],
                pip=lists["pip"], note=str(raw.get("note", "")))
