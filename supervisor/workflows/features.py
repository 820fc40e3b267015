"""Each feature's minimal API workflow (`workflows/features/<feature>.json`), resolved against the plan's files.

A workflow template names files by catalogue key, never by a literal file name, so the catalogue stays the one
place a file is named:

    {file:KEY}       the value a ComfyUI file input shows for file KEY (its path below the model folder)
    {basename:KEY}   the last part of that path (for packs that list bare names, e.g. comfyui_controlnet_aux)
    {stem:KEY}       the basename without extension (embedding names in a prompt)
    {variant:N}      the N-th file of the variant the plan chose (VIBEVOICE_MODEL, QWEN_EDIT_MODEL, the first of
                     CONTROLNET_MODELS)

A placeholder may only name the feature's own files (its chosen variant's, or a required feature's): a workflow cannot silently depend on
a file that enabling its switch does not download. `bench/features_check.py` POSTs every resolved workflow to a real
ComfyUI; the tests resolve each against its plan.
"""

from __future__ import annotations

import copy
import json
import posixpath
import re
from pathlib import Path
from typing import Any, Mapping, Sequence

from ..plan.catalog import Catalog, Feature

PLACEHOLDER = re.compile(r"\{(file|basename|stem|variant):([A-Za-z0-9_.:-]+)\}")


class WorkflowError(ValueError):
    """A template that names a file its feature does not have, or a variant the plan did not choose."""


def template_path(feature: Feature, root: Path) -> Path:
    return root / feature.workflow


def load_template(feature: Feature, root: Path) -> dict[str, Any]:
    return json.loads(template_path(feature, root).read_text(encoding="utf-8"))


def feature_keys(feature: Feature, catalog: Catalog, choices: Sequence[str] = ()) -> tuple[set[str], list[str]]:
    """(every file key a placeholder may name: the feature's and those of the features it requires; the chosen
    variant's files in order)."""
    allowed = set(feature.files)
    for required in feature.requires:
        allowed.update(catalog.features[required].files)
    for variant in feature.variants.values():
        allowed.update(variant.files)
    chosen: list[str] = []
    for name in choices[:1]:
        if name in feature.variants:
            chosen = list(feature.variants[name].files)
    return allowed, chosen


def resolve(api: Mapping[str, Any], feature: Feature, catalog: Catalog, choices: Sequence[str] = ()) -> dict[str, Any]:
    """A copy of `api` with every placeholder replaced by the planned file's name. `choices` is the plan's variant
    selection (one name, or the CONTROLNET_MODELS list)."""
    allowed, chosen = feature_keys(feature, catalog, choices)

    def file_key(kind: str, ref: str) -> str:
        if kind == "variant":
            if not ref.isdigit() or int(ref) >= len(chosen):
                raise WorkflowError(f"{feature.workflow}: {{variant:{ref}}} but the plan chose "
                                    f"{', '.join(choices) or 'no variant'} ({len(chosen)} file(s))")
            return chosen[int(ref)]
        if ref not in allowed:
            raise WorkflowError(f"{feature.workflow}: {{{kind}:{ref}}} is not one of {feature.switch}'s files")
        return ref

    def text(value: str) -> str:
        def one(match: re.Match[str]) -> str:
            kind, ref = match.group(1), match.group(2)
            name = catalog.files[file_key(kind, ref)].name
            if kind == "file" or kind == "variant":
                return name
            base = posixpath.basename(name)
            return base if kind == "basename" else posixpath.splitext(base)[0]
        return PLACEHOLDER.sub(one, value)

    def walk(value: Any) -> Any:
        if isinstance(value, str):
            return text(value)
        if isinstance(value, list):
            return [walk(v) for v in value]
        if isinstance(value, dict):
            return {k: walk(v) for k, v in value.items()}
        return value

    return walk(copy.deepcopy(dict(api)))


def placeholders(api: Mapping[str, Any]) -> list[tuple[str, str]]:
    """Every (kind, reference) placeholder in a template, in order."""
    return PLACEHOLDER.findall(json.dumps(api))
