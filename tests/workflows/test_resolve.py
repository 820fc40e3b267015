"""Resolution of the shipped workflows against the plan classes of the issue and the workflow variables."""

from __future__ import annotations

import copy

import pytest

from supervisor.workflows import file_describer
from supervisor.workflows import resolve as workflows
from supervisor.workflows.validate import errors, validate

from .helpers import CATALOG, PLAN_CLASSES, node, node_id, object_info_for, plan_for, plan_models

SHIPPED = {wf.name: wf for wf in workflows.load_shipped()}


def resolved(kind: str, **env) -> tuple[dict[str, workflows.Resolution], object]:
    plan, s = plan_for(kind, **env)
    return {r.preset: r for r in workflows.resolve_shipped(plan, s)}, plan


def test_plan_classes_are_what_they_say():
    for kind, (variant, offload) in {"80GB-fp16": ("fp16", "full"), "24GB-fp8-blockswap": ("fp8", "model_cpu_offload"),
                                     "12GB-gguf": ("gguf:Q4_K_M", "model_cpu_offload")}.items():
        plan, _ = plan_for(kind)
        choice = plan.model("steadydancer")
        assert (choice.variant, choice.offload) == (variant, offload), kind
        assert plan.vram_class == {"80GB-fp16": "80 GB", "24GB-fp8-blockswap": "24 GB", "12GB-gguf": "12 GB"}[kind]


@pytest.mark.parametrize("kind", list(PLAN_CLASSES))
def test_resolved_workflows_pass_check_with_the_plans_files(kind):
    res, plan = resolved(kind)
    info = object_info_for(plan_models(plan))
    for r in res.values():
        problems = validate(r.api, info, workflow=r.name)
        assert problems == [], [str(p) for p in problems]


def test_80gb_fp16():
    res, plan = resolved("80GB-fp16")
    knobs = plan.model("steadydancer").knobs
    for preset in ("quality", "fast"):
        api = res[preset].api
        loader = node(api, "Load SteadyDancer model")["inputs"]
        assert loader["model"] == "Wan21_I2V_SteadyDancer_fp16.safetensors"
        assert (loader["base_precision"], loader["quantization"], loader["load_device"]) == \
            ("fp16", "disabled", "main_device")
        # No block swap: the swap node is gone and nothing links to it.
        assert not [n for n in api.values() if n["class_type"] == "WanVideoBlockSwap"]
        assert "block_swap_args" not in node(api, "Apply block swap")["inputs"]
        assert node(api, "Decode video")["inputs"]["enable_vae_tiling"] is False
    assert knobs.merge_loras
    fast = res["fast"].api
    # Full precision merges the LoRA at load time; WanVideoSetLoRAs would refuse a merged LoRA.
    assert node(fast, "Load SteadyDancer model")["inputs"]["lora"] == [node_id(fast, "Speed LoRA (lightx2v)"), 0]
    assert node(fast, "Speed LoRA (lightx2v)")["inputs"]["merge_loras"] is True
    assert "lora" not in node(fast, "Apply speed LoRA")["inputs"]
    assert any("merged" in line for line in res["fast"].rewired)


def test_80gb_bf16_auto():
    plan, s = plan_for("80GB-fp16", STEADYDANCER_VARIANT="auto")
    res = {r.preset: r for r in workflows.resolve_shipped(plan, s)}
    assert node(res["quality"].api, "Load SteadyDancer model")["inputs"]["base_precision"] == "bf16"


def test_24gb_fp8_with_block_swap():
    res, plan = resolved("24GB-fp8-blockswap")
    knobs = plan.model("steadydancer").knobs
    assert knobs.blocks_to_swap > 0
    for preset in ("quality", "fast"):
        api = res[preset].api
        loader = node(api, "Load SteadyDancer model")["inputs"]
        assert loader["model"] == "Wan21_SteadyDancer_fp8_e4m3fn_scaled_KJ.safetensors"
        assert (loader["quantization"], loader["load_device"]) == ("fp8_e4m3fn_scaled", "offload_device")
        swap = node(api, "Block swap")["inputs"]
        assert (swap["blocks_to_swap"], swap["prefetch_blocks"]) == (knobs.blocks_to_swap, 1)
        assert node(api, "Apply block swap")["inputs"]["block_swap_args"] == [node_id(api, "Block swap"), 0]
    fast = res["fast"].api
    assert node(fast, "Speed LoRA (lightx2v)")["inputs"]["merge_loras"] is False
    assert node(fast, "Apply speed LoRA")["inputs"]["lora"] == [node_id(fast, "Speed LoRA (lightx2v)"), 0]
    assert "lora" not in node(fast, "Load SteadyDancer model")["inputs"]


def test_12gb_gguf():
    res, plan = resolved("12GB-gguf")
    knobs = plan.model("steadydancer").knobs
    for preset in ("quality", "fast"):
        api = res[preset].api
        loader = node(api, "Load SteadyDancer model")["inputs"]
        assert loader["model"].endswith(".gguf") and loader["model"] == knobs.files["model"]
        assert loader["quantization"] == "disabled"
        assert node(api, "Block swap")["inputs"]["blocks_to_swap"] == knobs.blocks_to_swap > 0
        assert node(api, "Decode video")["inputs"]["enable_vae_tiling"] is True
        assert node(api, "Encode pose video")["inputs"]["enable_vae_tiling"] is True
        assert node(api, "Encode reference (image to video)")["inputs"]["tiled_vae"] is True
        assert node(api, "Encode prompt")["inputs"]["device"] == knobs.text_encoder_device == "cpu"
    assert node(res["fast"].api, "Speed LoRA (lightx2v)")["inputs"]["merge_loras"] is False


def test_environment_lands_in_the_right_inputs():
    res, _ = resolved("24GB-fp8-blockswap", STEADYDANCER_SEED=42, STEADYDANCER_STEPS=30, STEADYDANCER_GUIDE_SCALE=6.5,
                      TURBO_STEPS=6, TURBO_GUIDE_SCALE=1.5, DWPOSE_DETECT_HAND="false", DWPOSE_DETECT_FACE="false",
                      ATTENTION_MODE="sageattn")
    quality = node(res["quality"].api, "Sampler")["inputs"]
    fast = node(res["fast"].api, "Sampler")["inputs"]
    assert (quality["seed"], quality["steps"], quality["cfg"]) == (42, 30, 6.5)
    assert (fast["seed"], fast["steps"], fast["cfg"]) == (42, 6, 1.5)
    for preset in ("quality", "fast", "pose"):
        draw = node(res[preset].api, "Draw pose")["inputs"]
        assert (draw["hand_stick_width"], draw["body_stick_width"], draw["draw_head"]) == (0, -1, False)
    for preset in ("quality", "fast"):
        assert node(res[preset].api, "Load SteadyDancer model")["inputs"]["attention_mode"] == "sageattn"
    assert res["quality"].values["Sampler.cfg"] == 6.5


def test_defaults_keep_the_template_values():
    res, _ = resolved("24GB-fp8-blockswap")
    for preset, wf in (("quality", "steadydancer_quality"), ("fast", "steadydancer_fast")):
        template = node(SHIPPED[wf].api, "Sampler")["inputs"]
        sampler = node(res[preset].api, "Sampler")["inputs"]
        assert {k: sampler[k] for k in ("steps", "cfg", "seed")} == {k: template[k] for k in ("steps", "cfg", "seed")}


def test_variables_without_an_input_change_nothing_and_are_warned():
    base, _ = resolved("12GB-gguf")
    changed, plan = resolved("12GB-gguf", STEADYDANCER_CONDITION_GUIDE=2.0, STEADYDANCER_END_CFG=0.5,
                             TURBO_CONDITION_GUIDE=3.0, TURBO_END_CFG=0.2, DWPOSE_RESOLUTION=1024)
    for preset in base:
        assert changed[preset].api == base[preset].api
    assert node(changed["quality"].api, "SteadyDancer pose conditioning")["inputs"]["end_percent"] == 1.0
    _, s = plan_for("12GB-gguf", STEADYDANCER_CONDITION_GUIDE=2.0, DWPOSE_RESOLUTION=1024)
    warnings, quiet = workflows.no_effect(s)
    assert len(warnings) == 2
    assert any(w.startswith("STEADYDANCER_CONDITION_GUIDE=2.0 has no effect") for w in warnings)
    assert any(w.startswith("DWPOSE_RESOLUTION=1024 has no effect") for w in warnings)
    assert set(quiet) == {"STEADYDANCER_END_CFG", "TURBO_CONDITION_GUIDE", "TURBO_END_CFG"}


def test_defaults_raise_no_warning():
    _, s = plan_for("12GB-gguf")
    warnings, quiet = workflows.no_effect(s)
    assert warnings == [] and len(quiet) == len(workflows.NO_EFFECT)


def test_fast_cfg_above_one_is_warned():
    _, s = plan_for("12GB-gguf", TURBO_GUIDE_SCALE=3)
    warnings, _ = workflows.no_effect(s)
    assert any("TURBO_GUIDE_SCALE=3" in w and "distilled for cfg 1.0" in w for w in warnings)


def test_resolution_leaves_the_template_alone():
    before = copy.deepcopy(SHIPPED["steadydancer_fast"].api)
    resolved("80GB-fp16")
    assert workflows.load_shipped()[1].api == before == SHIPPED["steadydancer_fast"].api


def test_not_planned():
    plan, s = plan_for("12GB-gguf", ENABLE_STEADYDANCER="false")
    with pytest.raises(LookupError, match="ENABLE_STEADYDANCER is off"):
        workflows.resolve_shipped(plan, s)


def test_missing_model_names_file_and_feature():
    res, plan = resolved("12GB-gguf")
    models = plan_models(plan)
    gguf = plan.model("steadydancer").knobs.files["model"]
    models["diffusion_models"] = [n for n in models["diffusion_models"] if n != gguf]
    info = object_info_for(models)
    describe = file_describer(CATALOG, plan)
    (problem,) = errors(validate(res["quality"].api, info, workflow="q", describe_file=describe))
    assert (problem.class_type, problem.input, problem.kind) == ("WanVideoModelLoader", "model", "value_not_in_list")
    text = str(problem)
    assert gguf in text
    assert "feature 'steadydancer' (ENABLE_STEADYDANCER=true, STEADYDANCER_VARIANT=gguf:Q4_K_M)" in text
    assert "this pod's plan downloads it" in text


def test_duplicate_titles_are_refused():
    api = copy.deepcopy(SHIPPED["steadydancer_pose"].api)
    api["99"] = copy.deepcopy(api["1"])
    plan, s = plan_for("12GB-gguf")
    with pytest.raises(ValueError, match="must be unique"):
        workflows.resolve(api, "pose", plan.model("steadydancer").knobs, s, "x")
