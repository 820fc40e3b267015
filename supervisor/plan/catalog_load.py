"""`config/catalog.toml` (plus the user's `SUPERVISOR_CATALOG` files) -> a validated `Catalog` (catalog.py).

A user file is merged over the shipped one table by table: a key it names replaces or extends that entry,
everything else stays. Every bad entry is reported at once, named by its file and table.
"""

from __future__ import annotations

import posixpath
import re
from pathlib import Path
from typing import Any, Iterable

from ..errors import ConfigError, Problem
from .catalog import (FILE_KINDS, REPO_ID, REVISION, SHA256, Catalog, DynamicFiles, Feature, FileSpec, PlannerConstants,
                      Runtime, Variant, config_dir)
from .packs import Pack, load_packs

try:  # Python 3.11+
    import tomllib
except ModuleNotFoundError:  # pragma: no cover - Python 3.10
    import tomli as tomllib  # type: ignore[no-redef]


def load_catalog(extra: Iterable[Path] = (), base: Path | None = None) -> Catalog:
    """Load the shipped catalogue and merge the user's files over it; raise ConfigError naming each bad entry."""
    base = base or config_dir() / "catalog.toml"
    paths = [base, *extra]
    merged: dict[str, Any] = {}
    origin: dict[tuple[str, str], Path] = {}
    problems: list[Problem] = []
    for path in paths:
        try:
            data = tomllib.loads(Path(path).read_text(encoding="utf-8"))
        except FileNotFoundError:
            problems.append(Problem(str(path), "catalogue file not found", "check SUPERVISOR_CATALOG"))
            continue
        except (OSError, tomllib.TOMLDecodeError) as exc:
            problems.append(Problem(str(path), f"cannot read TOML: {exc}"))
            continue
        for table in ("files", "features"):
            for key in data.get(table, {}) or {}:
                origin[(table, key)] = Path(path)
        _deep_merge(merged, data)
    if problems:
        raise ConfigError(problems, title="catalogue error")
    packs = load_packs(Path(base).parent / "packs.toml", problems)
    catalog = _build(merged, origin, problems, tuple(Path(p) for p in paths), packs)
    if problems:
        raise ConfigError(problems, title="catalogue error")
    return catalog


def _deep_merge(into: dict[str, Any], new: dict[str, Any]) -> None:
    for key, value in new.items():
        if isinstance(value, dict) and isinstance(into.get(key), dict):
            _deep_merge(into[key], value)
        else:
            into[key] = value


class _Entry:
    """Reads fields of one TOML table, recording a Problem for each missing, unknown or mistyped field."""

    def __init__(self, where: str, data: Any, problems: list[Problem]):
        self.where, self.problems = where, problems
        if not isinstance(data, dict):
            problems.append(Problem(where, "must be a table"))
            data = {}
        self.data, self.used = data, set()

    def get(self, name: str, kind: type | tuple[type, ...], default: Any = None, required: bool = False) -> Any:
        self.used.add(name)
        if name not in self.data:
            if required:
                self.problems.append(Problem(self.where, f"missing field '{name}'"))
            return default
        value = self.data[name]
        if kind is float and isinstance(value, int) and not isinstance(value, bool):
            value = float(value)
        if not isinstance(value, kind) or (isinstance(value, bool) and kind in (int, float)):
            expected = kind.__name__ if isinstance(kind, type) else "/".join(k.__name__ for k in kind)
            self.problems.append(Problem(self.where, f"field '{name}' must be {expected}, got {value!r}"))
            return default
        return value

    def strings(self, name: str) -> tuple[str, ...]:
        value = self.get(name, list, [])
        if not all(isinstance(v, str) for v in value):
            self.problems.append(Problem(self.where, f"field '{name}' must be a list of strings"))
            return ()
        return tuple(value)

    def finish(self) -> None:
        unknown = sorted(set(self.data) - self.used)
        if unknown:
            self.problems.append(Problem(self.where, f"unknown field(s) {', '.join(unknown)}", "check the spelling"))


def _where(origin: dict[tuple[str, str], Path], table: str, key: str) -> str:
    path = origin.get((table, key))
    return f"[{table}.{key}]" + (f" in {path}" if path else "")


def _build(data: dict[str, Any], origin: dict[tuple[str, str], Path], problems: list[Problem],
           sources: tuple[Path, ...], packs: dict[str, Pack]) -> Catalog:
    folders_entry = _Entry("[catalog]", data.get("catalog", {}), problems)
    folders = folders_entry.strings("folders")
    folders_entry.finish()
    planner = _planner(data.get("planner", {}), problems)

    files: dict[str, FileSpec] = {}
    for key, raw in (data.get("files") or {}).items():
        spec = _file(key, raw, folders, _where(origin, "files", key), problems)
        if spec:
            files[key] = spec
    _check_unique_destinations(files, origin, problems)

    features: dict[str, Feature] = {}
    for name, raw in (data.get("features") or {}).items():
        feature = _feature(name, raw, files, folders, _where(origin, "features", name), problems)
        for pack in feature.packs if feature else ():
            if pack not in packs:
                problems.append(Problem(_where(origin, "features", name), f"names unknown node pack '{pack}'",
                                        f"use one of {', '.join(packs) or '(none)'} (config/packs.toml)"))
        if feature:
            features[name] = feature
    _check_switches(features, origin, problems)
    for feature in features.values():
        for required in feature.requires:
            if required not in features:
                problems.append(Problem(_where(origin, "features", feature.name),
                                        f"requires unknown feature '{required}'"))
    return Catalog(files=files, features=features, folders=folders, planner=planner, sources=sources, packs=packs)


def _planner(raw: Any, problems: list[Problem]) -> PlannerConstants:
    entry = _Entry("[planner]", raw, problems)
    values = {}
    for name, default in PlannerConstants.__dataclass_fields__.items():
        kind = int if isinstance(default.default, int) else float
        value = entry.get(name, kind)
        if value is not None:
            if value < 0:
                problems.append(Problem("[planner]", f"field '{name}' must not be negative"))
            values[name] = value
    entry.finish()
    return PlannerConstants(**values)


def _file(key: str, raw: Any, folders: tuple[str, ...], where: str, problems: list[Problem]) -> FileSpec | None:
    entry = _Entry(where, raw, problems)
    before = len(problems)
    kind = entry.get("kind", str, "file")
    dest = entry.get("dest", str, "", required=True)
    size = entry.get("size", int, None, required=True)
    repo = entry.get("repo", str, "")
    path = entry.get("path", str, "")
    revision = entry.get("revision", str, "main")
    sha256 = entry.get("sha256", str, None)
    url = entry.get("url", str, "")
    auth_env = entry.get("auth_env", str, "HF_TOKEN" if kind != "url" else "")
    allow = entry.strings("allow")
    note = entry.get("note", str, "")
    entry.finish()
    if kind not in FILE_KINDS:
        problems.append(Problem(where, f"kind {kind!r} is not one of {', '.join(FILE_KINDS)}"))
    if size is not None and size < 0:
        problems.append(Problem(where, f"size {size} must be a byte count of 0 or more"))
    if sha256 is not None and not SHA256.match(sha256):
        problems.append(Problem(where, f"sha256 {sha256!r} must be 64 lowercase hex digits"))
    if not REVISION.match(revision):
        problems.append(Problem(where, f"revision {revision!r} is not a branch, tag or commit"))
    if kind in ("file", "snapshot") and not REPO_ID.match(repo):
        problems.append(Problem(where, f"repo {repo!r} must look like owner/name"))
    if kind == "file" and not path:
        problems.append(Problem(where, "missing field 'path' (the file's path in the repo)"))
    if kind == "url" and not url.startswith("https://"):
        problems.append(Problem(where, "a url file needs an https:// 'url'"))
    problems.extend(_check_dest(dest, folders, where, directory=kind == "snapshot"))
    if len(problems) > before:
        return None
    return FileSpec(key=key, dest=dest, size=size or 0, kind=kind, repo=repo, path=path, revision=revision,
                    sha256=sha256, url=url, auth_env=auth_env, allow=allow, note=note)


def _check_dest(dest: str, folders: tuple[str, ...], where: str, directory: bool = False) -> list[Problem]:
    """A destination is a relative path inside one known model folder; nothing may climb out of MODELS_DIR."""
    if not dest:
        return []
    normal = posixpath.normpath(dest)
    if dest.startswith("/") or "\\" in dest or normal != dest or normal.startswith("..") or "/../" in f"/{dest}/":
        return [Problem(where, f"dest {dest!r} escapes models/ or is not a clean relative path",
                        "use folder/name with forward slashes, no '..'")]
    folder, _, rest = dest.partition("/")
    if folder not in folders:
        return [Problem(where, f"dest {dest!r} is in unknown folder {folder!r}",
                        f"use one of {', '.join(folders)} or add it to [catalog] folders")]
    if not rest and not directory:
        return [Problem(where, f"dest {dest!r} names a folder, not a file")]
    return []


def _check_unique_destinations(files: dict[str, FileSpec], origin: dict[tuple[str, str], Path],
                               problems: list[Problem]) -> None:
    by_dest: dict[str, FileSpec] = {}
    for spec in files.values():
        other = by_dest.get(spec.dest)
        if other and other.source != spec.source:
            problems.append(Problem(
                _where(origin, "files", spec.key),
                f"dest {spec.dest!r} also comes from [files.{other.key}] ({other.source}); two sources for one file",
                "give one of them another dest, or remove one"))
        by_dest.setdefault(spec.dest, spec)


def _check_switches(features: dict[str, Feature], origin: dict[tuple[str, str], Path], problems: list[Problem]) -> None:
    seen: dict[str, str] = {}
    for feature in features.values():
        if feature.switch in seen:
            problems.append(Problem(_where(origin, "features", feature.name),
                                    f"switch {feature.switch} is also used by feature '{seen[feature.switch]}'"))
        seen[feature.switch] = feature.name


def _file_refs(keys: Iterable[str], files: dict[str, FileSpec], where: str, problems: list[Problem]) -> tuple[str, ...]:
    refs = tuple(keys)
    for key in refs:
        if key not in files:
            problems.append(Problem(where, f"refers to unknown file '{key}'", "declare it under [files]"))
    return refs


def _roles(entry: _Entry, feature_files: tuple[str, ...], where: str, problems: list[Problem]) -> dict[str, str]:
    roles = entry.get("roles", dict, {}) or {}
    for role, key in roles.items():
        if not isinstance(key, str) or key not in feature_files:
            problems.append(Problem(where, f"role '{role}' must name one of the feature's files, got {key!r}"))
    return {role: key for role, key in roles.items() if isinstance(key, str)}


def _feature(name: str, raw: Any, files: dict[str, FileSpec], folders: tuple[str, ...], where: str,
             problems: list[Problem]) -> Feature | None:
    entry = _Entry(where, raw, problems)
    switch = entry.get("switch", str, "", required=True)
    if switch and not re.fullmatch(r"(ENABLE_|WAN_)[A-Z0-9_]+", switch):
        problems.append(Problem(where, f"switch {switch!r} must be an upper-case ENABLE_* (or WAN_*) name"))
    feature_files = _file_refs(entry.strings("files"), files, where, problems)
    variants: dict[str, Variant] = {}
    for vname, vraw in (entry.get("variants", dict, {}) or {}).items():
        vwhere = f"{where} variant '{vname}'"
        ventry = _Entry(vwhere, vraw, problems)
        vfiles = _file_refs(ventry.strings("files"), files, vwhere, problems)
        dit = ventry.get("dit", str, None)
        if dit is not None and dit not in vfiles:
            problems.append(Problem(vwhere, f"dit '{dit}' must be one of the variant's files"))
        variants[vname] = Variant(
            name=vname, family=ventry.get("family", str, vname.split(":")[0]), files=vfiles, dit=dit,
            precision=ventry.get("precision", str, "bf16"), quantization=ventry.get("quantization", str, "disabled"),
            description=ventry.get("description", str, ""), vram_gib=ventry.get("vram_gib", float, 0.0),
            refused=ventry.get("refused", str, ""), activation_gib=ventry.get("activation_gib", float))
        ventry.finish()
    runtime = None
    if "runtime" in entry.data:
        rentry = _Entry(f"{where} runtime", entry.get("runtime", dict, {}), problems)
        rvalues = {}
        for fname, fdef in Runtime.__dataclass_fields__.items():
            kind: Any = str if fname == "lora_file" else (int if isinstance(fdef.default, int) else float)
            value = rentry.get(fname, kind)
            if value is not None:
                rvalues[fname] = value
        rentry.finish()
        runtime = Runtime(**rvalues)
        if runtime.lora_file and runtime.lora_file not in files:
            problems.append(Problem(where, f"runtime lora_file '{runtime.lora_file}' is not a declared file"))
    dynamic = None
    if "dynamic" in entry.data:
        dentry = _Entry(f"{where} dynamic", entry.get("dynamic", dict, {}), problems)
        dynamic = DynamicFiles(env=dentry.get("env", str, "", required=True),
                               source=dentry.get("source", str, "civitai"),
                               folder=dentry.get("folder", str, "loras"))
        dentry.finish()
        if dynamic.folder not in folders:
            problems.append(Problem(where, f"dynamic folder {dynamic.folder!r} is not a known folder"))
    feature = Feature(
        name=name, switch=switch, description=entry.get("description", str, ""),
        default_enabled=entry.get("default", bool, False), files=feature_files, variants=variants,
        variant_env=entry.get("variant_env", str, ""), variant_default=entry.get("variant_default", str, ""),
        auto=entry.get("auto", bool, False), multi_choice=entry.get("multi_choice", bool, False),
        requires_gpu=entry.get("requires_gpu", bool, False), vram_gib=entry.get("vram_gib", float, 0.0),
        runtime=runtime, requires=entry.strings("requires"), min_tier=entry.get("min_tier", str, ""),
        dynamic=dynamic, roles=_roles(entry, feature_files, where, problems), notes=entry.strings("notes"),
        packs=entry.strings("packs"), workflow=entry.get("workflow", str, ""),
        workflow_note=entry.get("workflow_note", str, ""), refused=entry.get("refused", str, ""),
        resident=entry.get("resident", bool, False))
    entry.used.add("runtime")
    entry.used.add("dynamic")
    entry.finish()
    if variants and not feature.variant_env:
        problems.append(Problem(where, "has variants but no 'variant_env' to choose them"))
    if feature.variant_env and variants:
        try:
            if feature.multi_choice:
                feature.parse_choices(feature.variant_default)
            else:
                feature.parse_variant(feature.variant_default)
        except ValueError as exc:
            problems.append(Problem(where, f"variant_default {feature.variant_default!r}: {exc}"))
    if feature.auto and any(v.dit is None for v in variants.values()):
        problems.append(Problem(where, "auto variants need a 'dit' file each, to size them"))
    if feature.workflow and (not feature.workflow.endswith(".json") or ".." in feature.workflow
                             or feature.workflow.startswith("/")):
        problems.append(Problem(where, f"workflow {feature.workflow!r} must be a .json path under workflows/"))
    if feature.min_tier and feature.min_tier not in ("consumer", "prosumer", "datacenter"):
        problems.append(Problem(where, f"min_tier {feature.min_tier!r} is not consumer/prosumer/datacenter"))
    return feature
