"""Checking workflows against ComfyUI's node definitions: the live check after ComfyUI answers (`check_live`) and
the `supervisor check` command. The rules themselves are in validate.py."""

from __future__ import annotations

import argparse
import json
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, Mapping, Sequence

from ..plan.settings import Settings
from ..plan.types import Plan
from .resolve import _log, load_shipped, resolve_shipped
from .ui import UiFormatError, is_ui_format, ui_to_api
from .validate import CheckProblem, DescribeFile, errors, notices, validate

if TYPE_CHECKING:
    from ..plan.catalog import Catalog
    from ..plan.context import Context


def file_describer(catalog: "Catalog | None" = None, plan: Plan | None = None) -> DescribeFile:
    """For a missing file name: which feature (and variant) brings it, and how to get it."""
    by_name: dict[str, list[Any]] = {}
    if catalog is not None:
        for spec in catalog.files.values():
            by_name.setdefault(spec.name, []).append(spec)
    downloads = {d.dest: d for d in plan.downloads} if plan is not None else {}

    def describe(value: str) -> str | None:
        specs = by_name.get(value, [])
        dests = [s.dest for s in specs] or [d for d in downloads if d.split("/", 1)[-1] == value]
        if not dests:
            return None
        dest = dests[0]
        providers: list[str] = []
        if catalog is not None:
            keys = {s.key for s in specs}
            for feature in catalog.features.values():
                variants = [v.name for v in feature.variants.values() if keys & set(v.files)]
                if keys & set(feature.files):
                    providers.append(f"feature '{feature.name}' ({feature.switch}=true)")
                elif variants:
                    providers.append(f"feature '{feature.name}' ({feature.switch}=true, "
                                     f"{feature.variant_env}={variants[0]})")
        elif dest in downloads:
            providers = [f"feature '{f}'" for f in downloads[dest].features]
        who = " or ".join(providers) if providers else "the catalogue"
        planned = dest in downloads
        how = ("this pod's plan downloads it: let `supervisor fetch` (or the pod's start) finish"
               if planned else "turn that on and run `supervisor fetch`")
        return (f"models/{dest} comes from {who}; {how}, and make sure MODELS_DIR is the models folder ComfyUI "
                "reads")

    return describe


def _catalog_for(settings: Settings) -> "Catalog | None":
    from ..plan.catalog_load import load_catalog
    from ..errors import ConfigError

    try:
        return load_catalog(settings.supervisor_catalog)
    except (ConfigError, OSError):
        return None


def check_live(object_info: Mapping[str, Any], plan: Plan, settings: Settings) -> list[CheckProblem]:
    """Validate the workflows resolved against this pod's plan with a running ComfyUI's /object_info. Returns the
    errors (each a useful str); notices (missing input files) are only logged."""
    try:
        resolutions = resolve_shipped(plan, settings)
    except LookupError as exc:
        _log().info("workflows.check_skipped", reason=str(exc))
        return []
    describe = file_describer(_catalog_for(settings), plan)
    found: list[CheckProblem] = []
    for res in resolutions:
        found += validate(res.api, object_info, workflow=res.name, describe_file=describe)
    problems, notes = errors(found), notices(found)
    if notes:
        _log().info("workflows.check_notes", notes=[str(n) for n in notes])
    if problems:
        _log().error("workflows.check_failed", count=len(problems), problems=[str(p) for p in problems])
    else:
        _log().info("workflows.check_ok", workflows=[r.name for r in resolutions])
    return problems


TEMPLATE = "template"


class _BadArguments(Exception):
    """Reported with exit status 2."""


def fetch_object_info(url: str, timeout: float = 30.0) -> dict[str, Any]:
    import httpx

    target = url.rstrip("/") + "/object_info"
    try:
        response = httpx.get(target, timeout=timeout)
    except httpx.HTTPError as exc:
        raise _BadArguments(f"cannot reach ComfyUI at {target}: {exc}; start it, or pass --object-info FILE") from None
    if response.status_code != 200:
        raise _BadArguments(f"{target} answered HTTP {response.status_code}; is this a ComfyUI server?")
    try:
        data = response.json()
    except ValueError:
        raise _BadArguments(f"{target} did not answer JSON; is this a ComfyUI server?") from None
    return _object_info_shape(data, target)


def _object_info_shape(data: Any, source: str) -> dict[str, Any]:
    if not isinstance(data, dict) or not data or not all(isinstance(v, dict) and "input" in v for v in data.values()):
        raise _BadArguments(f"{source} is not a GET /object_info answer (an object of node types, each with "
                            "'input')")
    return data


def _read_json(path: Path, what: str) -> Any:
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except OSError as exc:
        raise _BadArguments(f"cannot read {what} {path}: {exc.strerror or exc}") from None
    except ValueError as exc:
        raise _BadArguments(f"{what} {path} is not valid JSON: {exc}") from None


@dataclass
class _Checked:
    name: str
    problems: list[CheckProblem]
    nodes: int
    note: str = ""


def _targets(ctx: "Context", args: argparse.Namespace, object_info: Mapping[str, Any]) -> list[tuple[str, Any, str]]:
    """(name, API workflow, note) for each workflow to check."""
    paths: Sequence[Path] = getattr(args, "workflows", None) or []
    if getattr(args, "resolved", False):
        if paths:
            raise _BadArguments("--resolved checks the shipped workflows as this pod resolves them; "
                                "leave out the file names")
        try:
            return [(f"{r.name} (resolved)", r.api, "") for r in resolve_shipped(ctx.plan(), ctx.settings)]
        except LookupError as exc:
            raise _BadArguments(f"--resolved: {exc}; check the shipped templates without --resolved") from None
    if not paths:
        return [(f"{wf.name}.json", wf.api, TEMPLATE) for wf in load_shipped()]
    out = []
    for path in paths:
        data = _read_json(Path(path), "workflow")
        if is_ui_format(data):
            try:
                out.append((Path(path).name, ui_to_api(data, object_info), "browser format, converted"))
            except UiFormatError as exc:
                raise _BadArguments(f"{path}: {exc}") from None
            except (KeyError, TypeError, ValueError, IndexError) as exc:
                raise _BadArguments(f"{path}: not a browser-format workflow this command can convert "
                                    f"({type(exc).__name__}: {exc}); export it with Workflow > Export (API)") from None
        else:
            out.append((Path(path).name, data, ""))
    return out


def check_command(ctx: "Context", args: argparse.Namespace) -> int:
    """`supervisor check`: 0 clean, 1 problems found, 2 bad arguments or unreadable input."""
    try:
        if getattr(args, "object_info", None):
            source = str(args.object_info)
            object_info = _object_info_shape(_read_json(Path(args.object_info), "object info"), source)
        else:
            source = getattr(args, "url", None) or f"http://127.0.0.1:{ctx.settings.comfyui_port}"
            object_info = fetch_object_info(source)
        targets = _targets(ctx, args, object_info)
    except _BadArguments as exc:
        print(f"supervisor check: {exc}", file=sys.stderr)
        _log().error("workflows.check_error", message=str(exc))
        return 2
    try:
        plan: Plan | None = ctx.plan()  # only to say whether this pod's plan downloads a missing file
    except Exception:  # a plan problem is `supervisor plan`'s to report, not this command's
        plan = None
    describe = file_describer(ctx.catalog, plan)
    results = []
    for name, api, note in targets:
        problems = validate(api, object_info, workflow=name, describe_file=describe)
        results.append(_Checked(name, problems, len(api) if isinstance(api, dict) else 0, note))
    failed = [p for r in results for p in errors(r.problems)]
    if failed:
        _log().error("workflows.check_failed", count=len(failed), problems=[str(p) for p in failed])
    else:
        _log().info("workflows.check_ok", workflows=[r.name for r in results], source=source)
    if getattr(args, "json", False):
        print(json.dumps({"ok": not failed, "source": source,
                          "workflows": [{"workflow": r.name, "nodes": r.nodes, "note": r.note,
                                         "ok": not errors(r.problems),
                                         "problems": [p.to_dict() for p in r.problems]} for r in results]},
                         indent=1))
    else:
        print(render(results, source), end="")
    return 1 if failed else 0


def render(results: Sequence[_Checked], source: str) -> str:
    """A table per workflow: node id, class, input, what is wrong, how to fix it."""
    lines = [f"Checked against {source}", ""]
    total = 0
    for result in results:
        found, notes = errors(result.problems), notices(result.problems)
        total += len(found)
        status = "OK" if not found else f"{len(found)} problem{'s' if len(found) != 1 else ''}"
        extra = f", {result.note}" if result.note else ""
        lines.append(f"{result.name} ({result.nodes} nodes{extra}): {status}")
        if found:
            lines += _table(found)
        for note in notes:
            where = f"node {note.node_id} ({note.class_type})" + (f" input '{note.input}'" if note.input else "")
            lines.append(f"  note: {where}: {note.message}; {note.fix}")
        lines.append("")
    if any(r.note == TEMPLATE for r in results):
        lines.append("templates carry default values (the fp8 model, 20 blocks swapped); `supervisor check "
                     "--resolved` checks them as this pod's plan writes them")
    lines.append("no problems" if not total else f"{total} problem{'s' if total != 1 else ''}: fix them before "
                 "queueing these workflows")
    return "\n".join(lines) + "\n"


def _table(problems: Sequence[CheckProblem]) -> list[str]:
    rows = [(p.node_id or "-", p.class_type or "-", p.input or "-") for p in problems]
    widths = [max(len(h), *(len(r[i]) for r in rows)) for i, h in enumerate(("NODE", "CLASS", "INPUT"))]
    head = "  " + "  ".join(h.ljust(w) for h, w in zip(("NODE", "CLASS", "INPUT"), widths)) + "  PROBLEM / FIX"
    out = [head]
    indent = " " * (len(head) - len("PROBLEM / FIX"))
    for row, problem in zip(rows, problems):
        out.append("  " + "  ".join(c.ljust(w) for c, w in zip(row, widths)) + f"  {problem.message} "
                   f"[{problem.kind}]")
        out.append(f"{indent}fix: {problem.fix}")
    return out
