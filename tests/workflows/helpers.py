"""Shared pieces of the workflow tests: plans of the three pod classes and /object_info answers that match them."""

from __future__ import annotations

from typing import Iterable, Mapping

from supervisor.plan import hardware as hw
from supervisor.plan.catalog_load import load_catalog
from supervisor.plan.types import Plan
from supervisor.plan.planner import make_plan
from supervisor.plan.settings import Settings
from supervisor.plan.environment import load_settings
from supervisor.workflows.resolve import DEFAULT_INPUTS

from .object_info_fixture import build_object_info, folder_lists

GIB = 2**30
CATALOG = load_catalog()


def machine(gpu: str | None, ram: int = 256 * GIB) -> hw.Hardware:
    base = hw.Hardware(gpus=(), ram_total=ram, ram_available=ram, disk_free=2000 * 10**9, disk_path="/workspace")
    return hw.simulate(base, gpu=gpu) if gpu else base


def settings(**env: object) -> Settings:
    return load_settings({k: str(v) for k, v in env.items()}, CATALOG)


# The three plan classes of the issue: an 80 GB card with full-precision weights, a 24 GB card with fp8 weights and
# block swap (its first out-of-memory fallback: fp8 fully resident is the first choice there), a 12 GB card with GGUF.
PLAN_CLASSES = {
    "80GB-fp16": dict(gpu="H100", env={"STEADYDANCER_VARIANT": "fp16"}, degrade=None),
    "24GB-fp8-blockswap": dict(gpu="RTX 4090", env={}, degrade={"steadydancer": 1}),
    "12GB-gguf": dict(gpu="RTX 3060", env={}, degrade=None),
}


def plan_for(kind: str, **env: object) -> tuple[Plan, Settings]:
    spec = PLAN_CLASSES[kind]
    s = settings(**{**spec["env"], **env})
    return make_plan(s, CATALOG, machine(spec["gpu"]), frozenset(), spec["degrade"]), s


def plan_models(plan: Plan) -> dict[str, list[str]]:
    """Folder -> file names of every file the plan downloads (what a pod has once fetch is done)."""
    models: dict[str, list[str]] = {}
    for download in plan.downloads:
        folder, _, name = download.dest.partition("/")
        models.setdefault(folder, []).append(name)
    return models


def object_info_for(models: Mapping[str, Iterable[str]], inputs: Iterable[str] = DEFAULT_INPUTS) -> dict:
    return build_object_info(folder_lists(models, inputs))


def all_steadydancer_models() -> dict[str, list[str]]:
    feature = CATALOG.features["steadydancer"]
    keys = set(feature.files) | {k for v in feature.variants.values() for k in v.files}
    models: dict[str, list[str]] = {}
    for key in sorted(keys):
        spec = CATALOG.files[key]
        models.setdefault(spec.folder, []).append(spec.name)
    return models


def node(api: Mapping, title: str) -> dict:
    """The node of `api` with this _meta.title."""
    found = [n for n in api.values() if (n.get("_meta") or {}).get("title") == title]
    assert len(found) == 1, f"{len(found)} nodes titled {title!r}"
    return found[0]


def node_id(api: Mapping, title: str) -> str:
    found = [k for k, n in api.items() if (n.get("_meta") or {}).get("title") == title]
    assert len(found) == 1, f"{len(found)} nodes titled {title!r}"
    return found[0]
