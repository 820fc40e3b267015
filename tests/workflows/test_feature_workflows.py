"""Each feature's minimal workflow, resolved against its plan, is valid for the node definitions a real ComfyUI
v0.3.64 with the pinned packs reported (tests/data/workflows/features-object-info.json, saved by
`bench/features_check.py --save-node-defs`), and uses only nodes of the packs its feature declares."""

import json
from pathlib import Path

import pytest

from supervisor.plan import hardware as hw
from supervisor.plan.catalog_load import load_catalog
from supervisor.plan.planner import make_plan
from supervisor.plan.environment import load_settings
from supervisor.workflows import errors, validate, workflows_dir
from supervisor.workflows.features import WorkflowError, load_template, placeholders, resolve

CATALOG = load_catalog()
ROOT = workflows_dir()
NODE_DEFS = json.loads((Path(__file__).resolve().parents[1] / "data" / "workflows" /
                        "features-object-info.json").read_text())
ALL_OFF = {f.switch: "false" for f in CATALOG.features.values()}
GIB = 2**30


def runs():
    for feature in CATALOG.features.values():
        if not feature.workflow.startswith("features/") or feature.refused:
            continue
        for variant in [None] if not feature.variants else list(feature.variants):
            if variant and feature.variants[variant].refused:
                continue
            yield pytest.param(feature.name, variant, id=f"{feature.name}-{variant or 'default'}")


def planned(feature, variant):
    env = {**ALL_OFF, feature.switch: "true"}
    for required in feature.requires:
        env[CATALOG.features[required].switch] = "true"
    if variant:
        env[feature.variant_env] = variant
    settings = load_settings(env, CATALOG)
    base = hw.Hardware(gpus=(), ram_total=256 * GIB, ram_available=256 * GIB, disk_free=10**13, disk_path="/")
    plan = make_plan(settings, CATALOG, hw.simulate(base, gpu="h100"))
    selection = settings.features[feature.name]
    choices = selection.choices if feature.multi_choice else ((selection.variant,) if selection.variant else ())
    return plan, choices


@pytest.mark.parametrize("name, variant", list(runs()))
def test_resolved_workflow_is_valid_for_the_pinned_comfyui(name, variant):
    feature = CATALOG.features[name]
    plan, choices = planned(feature, variant)
    api = resolve(load_template(feature, ROOT), feature, CATALOG, choices)
    assert not placeholders(api)
    problems = errors(validate(api, NODE_DEFS, workflow=feature.workflow))
    assert problems == [], [p.message for p in problems]
    # Every model file the workflow names is one the plan downloads.
    planned_names = {d.dest.split("/", 1)[1] for d in plan.downloads} | {d.dest.rsplit("/", 1)[1] for d in plan.downloads}
    template = json.dumps(load_template(feature, ROOT))
    for kind, ref in placeholders(json.loads(template)):
        key = ref if kind != "variant" else CATALOG.features[name].variants[choices[0]].files[int(ref)]
        assert CATALOG.files[key].dest in {d.dest for d in plan.downloads}, (name, key)
    assert planned_names


@pytest.mark.parametrize("name, variant", list(runs()))
def test_workflow_uses_only_nodes_of_its_declared_packs(name, variant):
    feature = CATALOG.features[name]
    folders = {CATALOG.packs[p].custom_node for p in feature.packs} - {""}
    core = "ComfyUI" in feature.packs
    for node in load_template(feature, ROOT).values():
        module = NODE_DEFS[node["class_type"]]["python_module"]
        if module.startswith("custom_nodes."):
            assert module.split(".", 1)[1] in folders, (name, node["class_type"], module)
        else:
            assert core, (name, node["class_type"], "is a core node but the feature does not list comfyui")


def test_the_validation_catches_a_file_the_plan_does_not_have():
    feature = CATALOG.features["qwen_edit"]
    _, choices = planned(feature, "Q4_K_M")
    api = resolve(load_template(feature, ROOT), feature, CATALOG, choices)
    loader = next(n for n in api.values() if n["class_type"] == "UnetLoaderGGUF")
    loader["inputs"]["unet_name"] = "qwen-image-edit-2511-IQ1_S.gguf"  # a quant no plan downloads
    (problem,) = errors(validate(api, NODE_DEFS, workflow="qwen_edit"))
    assert (problem.input, problem.kind) == ("unet_name", "value_not_in_list") and "IQ1_S" in problem.message


def test_a_placeholder_may_only_name_the_features_own_files():
    feature = CATALOG.features["wan_480p"]
    with pytest.raises(WorkflowError, match="not one of WAN_480P's files"):
        resolve({"1": {"class_type": "UNETLoader", "inputs": {"unet_name": "{file:steadydancer_fp16}"}}},
                feature, CATALOG)
    with pytest.raises(WorkflowError, match=r"\{variant:0\} but the plan chose no variant"):
        resolve({"1": {"class_type": "UNETLoader", "inputs": {"unet_name": "{variant:0}"}}}, feature, CATALOG)
    embeddings = CATALOG.features["illustrious_embeddings"]  # may name the checkpoint of the feature it requires
    resolved = resolve(load_template(embeddings, ROOT), embeddings, CATALOG)
    texts = [n["inputs"].get("text", "") for n in resolved.values()]
    assert "embedding:Stable_Yogis_Illustrious_Positives, 1girl, portrait" in texts
