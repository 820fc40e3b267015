"""The shipped workflows: real nodes only, the presets the issue asks for, valid against the saved node definitions,
and browser copies that load and convert back to the same graph."""

from __future__ import annotations

import json

import pytest

from supervisor.workflows import resolve as workflows
from supervisor.workflows.validate import validate
from supervisor.workflows.ui import api_to_ui, is_ui_format, ui_to_api

from .helpers import all_steadydancer_models, node, node_id, object_info_for
from .object_info_fixture import build_object_info, node_defs

SHIPPED = {wf.name: wf for wf in workflows.load_shipped()}
NODE_DEFS = workflows.load_node_defs()


@pytest.fixture(scope="module")
def object_info():
    return object_info_for(all_steadydancer_models())


@pytest.mark.parametrize("name", list(SHIPPED))
def test_shipped_workflow_passes_check(name, object_info):
    problems = validate(SHIPPED[name].api, object_info, workflow=name)
    assert problems == [], [str(p) for p in problems]  # not even a notice: every node leads to an output


@pytest.mark.parametrize("name", list(SHIPPED))
def test_without_input_files_only_notices(name):
    problems = validate(SHIPPED[name].api, object_info_for(all_steadydancer_models(), inputs=()), workflow=name)
    assert problems and {p.kind for p in problems} == {"user_input_missing"}
    assert all(p.severity == "notice" for p in problems)
    assert {p.input for p in problems} == {"image", "video"}
    assert any("COMFYUI_DATA_DIR/input/steadydancer_driving.mp4" in p.fix for p in problems)


def test_no_invented_nodes():
    invented = {"Wan_LoadDiffusionModel", "Wan_LoadVAE", "Wan_LoadTurbo", "Wan_ReferenceAttention",
                "Wan_CrossFrameAttention", "Wan_KSampler", "Wan_GlobalAveragePooling", "Wan_DreamPanel"}
    reference = build_object_info()
    for wf in SHIPPED.values():
        classes = {n["class_type"] for n in wf.api.values()}
        assert not classes & invented
        assert classes <= set(reference)


def test_quality_preset_is_the_original_settings():
    api = SHIPPED["steadydancer_quality"].api
    sampler = node(api, "Sampler")["inputs"]
    assert (sampler["steps"], sampler["cfg"], sampler["seed"], sampler["scheduler"]) == (40, 5.0, 106060, "unipc")
    assert sampler["shift"] == 3.0  # generate_dancer.py: shift 3.0 at 480*832
    embeds = node(api, "SteadyDancer pose conditioning")["inputs"]
    # cfg > 1 needs the negative pose latents; the positive ones make the uncond pass the original's null-text pass.
    assert embeds["pose_latents_negative"] == embeds["pose_latents_positive"] == [node_id(api, "Encode pose video"), 0]
    assert (embeds["start_percent"], embeds["end_percent"]) == (0.0, 1.0)
    assert not any(n["class_type"].startswith("WanVideoLora") for n in api.values())


def test_fast_preset_uses_lightx2v():
    api = SHIPPED["steadydancer_fast"].api
    sampler = node(api, "Sampler")["inputs"]
    assert (sampler["steps"], sampler["cfg"]) == (4, 1.0)
    lora = node(api, "Speed LoRA (lightx2v)")
    assert lora["class_type"] == "WanVideoLoraSelect"
    assert lora["inputs"]["lora"].startswith("lightx2v_I2V_14B_480p")
    assert (lora["inputs"]["strength"], lora["inputs"]["merge_loras"]) == (1.0, False)
    apply = node(api, "Apply speed LoRA")
    assert apply["class_type"] == "WanVideoSetLoRAs"
    assert apply["inputs"]["lora"] == [node_id(api, "Speed LoRA (lightx2v)"), 0]
    assert sampler["model"] == [node_id(api, "Apply speed LoRA"), 0]
    assert node(api, "SteadyDancer pose conditioning")["inputs"].get("pose_latents_negative")  # safe at cfg > 1 too


@pytest.mark.parametrize("name", list(SHIPPED))
def test_pose_comes_from_the_driving_video_in_4n_plus_1_frames(name):
    api = SHIPPED[name].api
    video = node(api, "Driving video")
    assert video["class_type"] == "VHS_LoadVideo"
    assert video["inputs"]["format"] == "Wan"  # VHS trims the loaded frames to 4n+1
    assert (video["inputs"]["frame_load_cap"] - 1) % 4 == 0
    assert node(api, "Detect pose")["inputs"]["images"] == [node_id(api, "Driving video"), 0]
    assert node(api, "Load pose models")["inputs"]["vitpose_model"].startswith("vitpose_h_wholebody")
    encode = [n for n in api.values() if n["class_type"] == "WanVideoImageToVideoEncode"]
    for n in encode:
        assert n["inputs"]["num_frames"] == [node_id(api, "Driving video"), 1]  # the loaded frame count


@pytest.mark.parametrize("name", list(SHIPPED))
def test_every_value_input_is_explicit(name):
    """The templates state every value, so a reader sees it and the browser copy round-trips exactly."""
    for nid, n in SHIPPED[name].api.items():
        definition = NODE_DEFS[n["class_type"]]
        for section in ("required", "optional"):
            for input_name, spec in (definition["input"].get(section) or {}).items():
                kind = spec[0]
                if isinstance(kind, list) or kind in ("INT", "FLOAT", "STRING", "BOOLEAN", "COMBO"):
                    assert input_name in n["inputs"], f"{name} node {nid} ({n['class_type']}) lacks {input_name}"


def test_titles_are_unique_and_bindings_all_land():
    used = {}
    for wf in SHIPPED.values():
        titles = workflows._titles(wf.api, wf.name)
        for binding in workflows.BINDINGS:
            if binding.title in titles and (not binding.presets or wf.preset in binding.presets):
                n = wf.api[titles[binding.title]]
                assert binding.input in NODE_DEFS[n["class_type"]]["input_order"].get("required", []) + \
                    NODE_DEFS[n["class_type"]]["input_order"].get("optional", []), (binding.title, binding.input)
                used[(binding.title, binding.input, binding.source)] = True
    assert len(used) == len(workflows.BINDINGS), "a binding matches no node of any shipped workflow"


# --- browser copies -------------------------------------------------------------------------------------------

def test_node_defs_are_current():
    classes = {n["class_type"] for wf in SHIPPED.values() for n in wf.api.values()}
    assert NODE_DEFS == node_defs(classes), "run: python -m tests.workflows.object_info_fixture --shipped"


@pytest.mark.parametrize("name", list(SHIPPED))
def test_ui_copy_is_current_and_round_trips(name):
    api = SHIPPED[name].api
    shipped_ui = json.loads((workflows.workflows_dir() / "ui" / f"{name}.json").read_text(encoding="utf-8"))
    assert shipped_ui == api_to_ui(api, NODE_DEFS, name), "run: python -m tests.workflows.object_info_fixture --shipped"
    assert is_ui_format(shipped_ui) and shipped_ui["version"] == 0.4
    assert ui_to_api(shipped_ui, NODE_DEFS) == api


@pytest.mark.parametrize("name", list(SHIPPED))
def test_ui_copy_is_a_consistent_graph(name):
    api = SHIPPED[name].api
    ui = api_to_ui(api, NODE_DEFS, name)
    nodes = {n["id"]: n for n in ui["nodes"]}
    assert set(nodes) == {int(k) for k in api}
    assert ui["last_node_id"] == max(nodes) and ui["last_link_id"] == len(ui["links"])
    links = {link[0]: link for link in ui["links"]}
    assert len(links) == len(ui["links"])
    for link_id, (_, source, source_slot, target, target_slot, link_type) in links.items():
        assert nodes[target]["inputs"][target_slot]["link"] == link_id
        output = nodes[source]["outputs"][source_slot]
        assert link_id in output["links"] and output["type"] == link_type
    referenced = [i["link"] for n in nodes.values() for i in n["inputs"] if i["link"] is not None]
    assert sorted(referenced) == sorted(links)
    assert sum(1 for n in api.values() for v in n["inputs"].values() if isinstance(v, list)) == len(links)
    for n in ui["nodes"]:
        assert n["type"] == api[str(n["id"])]["class_type"] and n["title"] == api[str(n["id"])]["_meta"]["title"]
        assert len(n["size"]) == 2 and n["size"][1] > 0 and len(n["pos"]) == 2
    assert sorted(n["order"] for n in ui["nodes"]) == list(range(len(nodes)))
    order = {n["id"]: n["order"] for n in ui["nodes"]}
    assert all(order[source] < order[target] for _, source, _, target, _, _ in ui["links"])


def test_ui_widget_order_follows_the_node_inputs():
    ui = api_to_ui(SHIPPED["steadydancer_fast"].api, NODE_DEFS, "fast")
    by_title = {n["title"]: n for n in ui["nodes"]}
    sampler = by_title["Sampler"]["widgets_values"]
    # steps, cfg, shift, seed + its "control after generate" value, force_offload, scheduler, ...
    assert sampler[:7] == [4, 1.0, 5.0, 106060, "fixed", True, "dpm++_sde"]
    assert by_title["Reference image"]["widgets_values"] == ["steadydancer_reference.png", "image"]
    video = by_title["Driving video"]["widgets_values"]
    assert isinstance(video, dict) and video["format"] == "Wan" and video["video"] == "steadydancer_driving.mp4"
    save = by_title["Save video"]["widgets_values"]
    assert save["pix_fmt"] == "yuv420p" and save["crf"] == 19  # format extras travel in the VHS dictionary
    loader = by_title["Load SteadyDancer model"]["widgets_values"]
    assert loader == ["Wan21_SteadyDancer_fp8_e4m3fn_scaled_KJ.safetensors", "bf16", "fp8_e4m3fn_scaled",
                      "offload_device", "sdpa", "default"]
    linked = [i for i in by_title["Encode reference (image to video)"]["inputs"] if "widget" in i]
    assert [i["name"] for i in linked] == ["width", "height", "num_frames"] and all(i["link"] for i in linked)


def test_ui_to_api_reads_newer_editor_habits():
    """Links stored as objects, notes, and every value input listed in `inputs` (unlinked) as newer editors save."""
    api = SHIPPED["steadydancer_pose"].api
    ui = api_to_ui(api, NODE_DEFS, "pose")
    ui["links"] = [{"id": l[0], "origin_id": l[1], "origin_slot": l[2], "target_id": l[3], "target_slot": l[4],
                    "type": l[5]} for l in ui["links"]]
    ui["nodes"].append({"id": 90, "type": "Note", "widgets_values": ["read me"], "mode": 0})
    unlinked = {"PoseAndFaceDetection": "face_padding", "DrawViTPose": "retarget_padding"}
    for n in ui["nodes"]:
        if n["type"] in unlinked:
            name = unlinked[n["type"]]
            n["inputs"].append({"name": name, "type": "INT", "widget": {"name": name}, "link": None})
    assert ui_to_api(ui, NODE_DEFS) == api
