"""The planner against a matrix of real and common pod hardware, features and user overrides."""

from dataclasses import replace

import pytest
from hypothesis import given, settings as hsettings, strategies as st

from pathlib import Path

from supervisor.plan import hardware as hw
from supervisor.plan import probe as hwprobe
from supervisor.plan.catalog_load import load_catalog
from supervisor.plan.types import FULL, MODEL_OFFLOAD, ON_DEMAND, SEQUENTIAL, SKIPPED
from supervisor.plan.planner import make_plan, vram_class
from supervisor.plan.environment import load_settings

from .fake_nvml import FakeNvml

GIB = 2**30
CATALOG = load_catalog()
BIG_POD = dict(ram_total=256 * GIB, ram_available=250 * GIB, disk_free=2000 * 10**9, disk_path="/workspace")


def machine(name: str | None = None, *, vram: str | None = None, ram=256 * GIB, disk=2000 * 10**9, count=1):
    base = hw.Hardware(gpus=(), ram_total=ram, ram_available=ram, disk_free=disk, disk_path="/workspace")
    if name is None and vram is None:
        return base
    return hw.simulate(base, gpu=name, vram=vram, count=count, ram=f"{ram}B")


def recorded(reading: str, environ=None, **resources):
    found = hwprobe.probe(Path("/"), environ or {}, nvml=FakeNvml.from_file(reading))
    return replace(found, **{**BIG_POD, **resources})


def plan_for(hardware, present=frozenset(), degrade=None, **env):
    settings = load_settings({k: str(v) for k, v in env.items()}, CATALOG)
    return make_plan(settings, CATALOG, hardware, present, degrade)


def sd(plan):
    return plan.model("steadydancer")


# --- the tier table, corrected by the facts ---------------------------------------------------------------------

@pytest.mark.parametrize("hardware_name, variant, offload, swap_range", [
    ("h100-x1.json", "bf16", FULL, (0, 0)),
    ("h200-x2.json", "bf16", FULL, (0, 0)),
    ("A100 80GB", "bf16", FULL, (0, 0)),
    ("A100 40GB", "bf16", FULL, (0, 0)),      # 30.5 GiB of weights + 5.1 GiB of activations fit 35.9 GiB of budget
    ("L40S", "bf16", FULL, (0, 0)),
    ("RTX 5090", "bf16", MODEL_OFFLOAD, (1, 16)),
    ("RTX 4090", "fp8", FULL, (0, 0)),         # bf16 would swap more than 40 % of its blocks
    ("RTX 4080", "gguf:Q6_K", MODEL_OFFLOAD, (1, 16)),  # fp8 would swap 20 of 40 (measured: 15 overflowed the card)
    ("RTX 3060", "gguf:Q4_K_M", MODEL_OFFLOAD, (1, 39)),
    ("RTX 3070", "gguf:Q4_K_M", MODEL_OFFLOAD, (20, 40)),  # the 8 GB class
])
def test_auto_plan_per_card(hardware_name, variant, offload, swap_range):
    hardware = recorded(hardware_name) if hardware_name.endswith(".json") else machine(hardware_name)
    plan = plan_for(hardware)
    choice = sd(plan)
    assert plan.runnable, plan.errors
    assert (choice.variant, choice.offload) == (variant, offload), choice.reason
    assert swap_range[0] <= choice.knobs.blocks_to_swap <= swap_range[1]
    assert choice.reason  # one sentence saying why
    (budget,) = plan.vram_budget
    assert budget.fits and budget.total_gib <= budget.capacity_gib


@pytest.mark.parametrize("card, load_device, text_encoder", [
    ("h100-x1.json", "main_device", "gpu"),   # loading with the LoRA merged: 67.2 GiB, fits 80 GB
    ("L40S", "offload_device", "gpu"),        # it would not fit 48 GB: measured out of memory in the loader
    ("A100 40GB", "offload_device", "gpu"),
    ("RTX 4090", "offload_device", "gpu"),    # the next prompt's umt5 beside a resident fp8 DiT would not fit
])
def test_model_stays_on_the_gpu_only_where_every_phase_fits(card, load_device, text_encoder):
    plan = plan_for(recorded(card) if card.endswith(".json") else machine(card))
    knobs = sd(plan).knobs
    assert (knobs.blocks_to_swap, knobs.load_device, knobs.text_encoder_device) == (0, load_device, text_encoder)
    (budget,) = plan.vram_budget
    peak = next(line for line in budget.lines if line.item not in ("driver reserved", "CUDA context", "headroom"))
    assert ("loading" in peak.item) == (load_device == "main_device")


def test_both_80gb_cards_are_in_the_80gb_class():
    h100 = recorded("h100-x1.json").gpus[0]
    a100 = machine("A100 80GB").gpus[0]
    assert h100.total == 85_520_809_984 and round(h100.total / GIB, 1) == 79.6
    assert a100.total == 81920 * 2**20
    assert vram_class(h100.total) == vram_class(a100.total) == "80 GB"
    assert vram_class(machine("L40S").gpus[0].total) == "48 GB"
    assert vram_class(machine("RTX 4090").gpus[0].total) == "24 GB"
    assert vram_class(recorded("h200-x2.json").gpus[0].total) == "141 GB"


def test_h100_plan_details():
    plan = plan_for(recorded("h100-x1.json"))
    choice = sd(plan)
    assert choice.knobs.load_device == "main_device"
    assert choice.knobs.files["model"] == "Wan21_I2V_SteadyDancer_fp16.safetensors"
    assert choice.knobs.files["text_encoder"] == "umt5-xxl-enc-bf16.safetensors"
    assert choice.knobs.base_precision == "bf16" and choice.knobs.quantization == "disabled"
    assert choice.knobs.merge_loras is True
    assert "--highvram" in plan.comfyui_args
    assert plan.vram_class == "80 GB" and plan.gpu_tier == "datacenter"
    lines = {line.item: line.gib for line in plan.vram_budget[0].lines}
    assert lines["driver reserved"] == pytest.approx(0.47, abs=0.01)  # 480 MiB measured
    assert lines["CUDA context"] == 0.6


def test_no_gpu_plans_cpu_comfyui_and_downloads_nothing_for_gpu_models():
    plan = plan_for(machine())
    assert plan.runnable
    assert sd(plan).offload == SKIPPED and "needs a CUDA GPU" in sd(plan).reason
    assert plan.downloads == ()
    assert plan.comfyui_args[0] == "--cpu"
    assert any("CPU only" in w or "needs a CUDA GPU" in w for w in plan.warnings)


def test_gpu_chosen_when_the_largest_is_not_first():
    base = machine("RTX 3060")
    big = hw.simulate(base, gpu="RTX 4090").gpus[0]
    gpus = (base.gpus[0], replace(big, index=1, cuda_index=1, uuid="GPU-big"))
    plan = plan_for(replace(base, gpus=gpus))
    assert plan.gpu.uuid == "GPU-big"
    assert plan.comfyui_args[:2] == ("--cuda-device", "1")


# --- user overrides ----------------------------------------------------------------------------------------------

def test_explicit_fp16_on_24gb_swaps_with_a_warning():
    plan = plan_for(machine("RTX 4090"), STEADYDANCER_VARIANT="fp16")
    choice = sd(plan)
    assert (choice.variant, choice.offload) == ("fp16", MODEL_OFFLOAD)
    assert choice.knobs.base_precision == "fp16"
    assert "STEADYDANCER_VARIANT=fp16 chosen by the user" in choice.reason
    assert any("swaps" in w and "slow" in w and "fp8 would swap" in w for w in plan.warnings)
    assert plan.runnable


def test_explicit_variant_that_cannot_run_is_an_error():
    plan = plan_for(machine("RTX 3070", ram=24 * GIB), STEADYDANCER_VARIANT="fp16")
    assert not plan.runnable
    assert any("STEADYDANCER_VARIANT=fp16" in e and "RAM" in e for e in plan.errors)


def test_full_mode_that_cannot_fit_is_an_error_and_one_that_barely_fits_warns():
    plan = plan_for(machine("RTX 4090"), STEADYDANCER_VARIANT="bf16", GPU_MEMORY_MODE="full")
    assert not plan.runnable and any("cannot run" in e for e in plan.errors)
    tight = plan_for(machine(vram="22GiB"), STEADYDANCER_VARIANT="fp8", GPU_MEMORY_MODE="full")
    assert tight.runnable
    assert any("expect CUDA out of memory" in w for w in tight.warnings)


def test_full_mode_under_auto_picks_a_variant_that_is_resident():
    plan = plan_for(machine(vram="20GiB"), GPU_MEMORY_MODE="full")
    choice = sd(plan)
    assert choice.offload == FULL and choice.knobs.blocks_to_swap == 0
    assert choice.variant.startswith("gguf:")  # fp8 (15.3 GiB + 5.4 GiB beside it while sampling) does not fit
    # On a 16 GB card nothing is resident: even Q4_K_M needs 15.1 GiB while sampling of 15.0 usable.
    assert not plan_for(machine("RTX 4080"), GPU_MEMORY_MODE="full").runnable


def test_sequential_mode_swaps_every_block_and_sets_lowvram():
    plan = plan_for(recorded("h100-x1.json"), GPU_MEMORY_MODE="sequential_cpu_offload")
    choice = sd(plan)
    assert choice.offload == SEQUENTIAL and choice.knobs.blocks_to_swap == 40
    assert choice.knobs.prefetch_blocks == 1
    assert "--lowvram" in plan.comfyui_args


def test_gguf_family_picks_the_best_quant_that_fits():
    assert sd(plan_for(recorded("h100-x1.json"), STEADYDANCER_VARIANT="gguf")).variant == "gguf:Q6_K"
    choice = sd(plan_for(machine("RTX 3060"), STEADYDANCER_VARIANT="gguf:Q6_K"))
    assert choice.variant == "gguf:Q6_K" and choice.knobs.quantization == "disabled"
    assert choice.knobs.merge_loras is False


def test_user_vram_flag_replaces_the_plans():
    plan = plan_for(machine("RTX 3060"), COMFYUI_ARGS="--novram --reserve-vram 1")
    assert "--lowvram" not in plan.comfyui_args
    assert plan.comfyui_args[-3:] == ("--novram", "--reserve-vram", "1")
    assert any("--novram" in w for w in plan.warnings)


# --- disk and RAM ----------------------------------------------------------------------------------------------

def test_disk_too_small_for_bf16_picks_a_smaller_variant():
    # fixed parts ~ 15.2 GB + bf16 32.8 GB do not fit 45 GB - 5 GB reserve; fp8 (16.4 GB) does.
    plan = plan_for(recorded("h100-x1.json", disk_free=45 * 10**9))
    assert sd(plan).variant == "fp8"
    assert "bf16 rejected" in sd(plan).reason and "disk" in sd(plan).reason
    assert plan.disk.fits


def test_disk_too_small_for_anything_fails_with_numbers():
    plan = plan_for(recorded("h100-x1.json", disk_free=12 * 10**9))
    assert not plan.runnable
    text = " ".join(plan.errors)
    assert "GiB" in text and "disk" in text


def test_present_files_do_not_count_against_disk():
    bf16 = CATALOG.files["steadydancer_fp16"].dest
    fixed = {CATALOG.files[k].dest for k in CATALOG.features["steadydancer"].files}
    plan = plan_for(recorded("h100-x1.json", disk_free=10 * 10**9), present=frozenset(fixed | {bf16}))
    assert plan.runnable and sd(plan).variant == "bf16"
    assert all(d.present for d in plan.downloads)
    assert plan.disk.need == 0


def test_little_ram_rules_out_heavy_offload():
    plan = plan_for(machine("RTX 4090", ram=16 * GIB))
    assert not plan.runnable or sd(plan).variant.startswith("gguf")
    roomy = plan_for(machine("RTX 4090", ram=64 * GIB))
    assert sd(roomy).variant == "fp8"


# --- features ------------------------------------------------------------------------------------------------------

def test_a_shared_file_appears_once_with_every_feature_that_needs_it():
    plan = plan_for(recorded("h100-x1.json"), WAN_720P="true", ENABLE_WAN22_DISTILL="true", ENABLE_I2V="true")
    dests = [d.dest for d in plan.downloads]
    assert len(dests) == len(set(dests))
    clip = next(d for d in plan.downloads if d.dest == "clip_vision/clip_vision_h.safetensors")
    assert set(clip.features) == {"steadydancer", "wan_720p", "i2v"}
    te = next(d for d in plan.downloads if d.dest == "text_encoders/umt5_xxl_fp8_e4m3fn_scaled.safetensors")
    assert set(te.features) == {"wan_720p", "i2v", "wan22_distill"}


def test_multi_choice_and_dynamic_features():
    plan = plan_for(recorded("h100-x1.json"), ENABLE_STEADYDANCER="false", ENABLE_CONTROLNET="true",
                    CONTROLNET_MODELS="depth,lineart", ENABLE_CIVITAI="true", CIVITAI_LORAS="111,222")
    dests = {d.dest for d in plan.downloads}
    assert dests == {"controlnet/control_v11f1p_sd15_depth_fp16.safetensors",
                     "controlnet/control_v11p_sd15_lineart_fp16.safetensors",
                     "checkpoints/v1-5-pruned-emaonly-fp16.safetensors",  # the SD 1.5 base the ControlNets steer
                     "loras/civitai_111.safetensors", "loras/civitai_222.safetensors"}
    civitai = next(d for d in plan.downloads if d.dest == "loras/civitai_111.safetensors")
    assert civitai.url == "https://civitai.com/api/download/models/111" and civitai.auth_env == "CIVITAI_API_KEY"
    assert plan.model("controlnet").offload == ON_DEMAND


def test_infcam_needs_a_datacenter_tier_case_insensitive_setting():
    plan = plan_for(machine("RTX 4090"), ENABLE_INFCAM="true")
    assert plan.model("infcam").offload == SKIPPED
    assert any("GPU_TIER=datacenter" in w for w in plan.warnings)
    forced = plan_for(machine("RTX 4090"), ENABLE_INFCAM="true", GPU_TIER="DATACENTER")
    # The tier gate passes (case-insensitively); InfCam is then refused for its own reason: no node pack loads it.
    assert forced.model("infcam").offload == SKIPPED
    assert forced.model("infcam").reason.startswith("refused, nothing downloaded: no ComfyUI node pack loads InfCam")
    assert not any("GPU_TIER" in w for w in forced.warnings)
    assert not any("infcam" in d.features for d in forced.downloads)


def test_embeddings_follow_illustrious():
    quiet = plan_for(recorded("h100-x1.json"), ENABLE_STEADYDANCER="false")
    assert quiet.models == () and quiet.warnings == ()
    both = plan_for(recorded("h100-x1.json"), ENABLE_STEADYDANCER="false", ENABLE_ILLUSTRIOUS="true")
    assert {m.feature for m in both.models} == {"illustrious", "illustrious_embeddings"}
    alone = plan_for(recorded("h100-x1.json"), ENABLE_STEADYDANCER="false", ENABLE_ILLUSTRIOUS_EMBEDDINGS="true")
    assert alone.model("illustrious_embeddings").offload == SKIPPED


# --- out-of-memory ladder ----------------------------------------------------------------------------------------

def test_ladder_lowers_the_peak_at_every_step_and_degrade_applies_it():
    hardware = machine("RTX 4090")
    plan = plan_for(hardware)
    ladder = sd(plan).ladder
    assert [s.variant for s in ladder][0] == "fp8" and ladder[-1].offload == SEQUENTIAL
    peaks = [plan.vram_budget[0].total_gib]
    for k in range(1, len(ladder) + 1):
        step_plan = plan_for(hardware, degrade={"steadydancer": k})
        choice = sd(step_plan)
        assert (choice.variant, choice.knobs.blocks_to_swap) == (ladder[k - 1].variant, ladder[k - 1].blocks_to_swap)
        assert choice.reason.startswith(f"out-of-memory fallback {k}")
        peaks.append(step_plan.vram_budget[0].total_gib)
    assert peaks == sorted(peaks, reverse=True) and len(set(peaks)) == len(peaks)
    exhausted = plan_for(hardware, degrade={"steadydancer": len(ladder) + 1})
    assert not exhausted.runnable


def test_ladder_of_an_explicit_variant_only_adds_offload():
    ladder = sd(plan_for(recorded("h100-x1.json"), STEADYDANCER_VARIANT="fp8")).ladder
    assert {s.variant for s in ladder} == {"fp8"}


# --- property: auto never exceeds its own budget -------------------------------------------------------------------

@hsettings(max_examples=150, deadline=None)
@given(vram_gib=st.floats(min_value=4, max_value=200), ram_gib=st.floats(min_value=8, max_value=512),
       disk_gb=st.floats(min_value=5, max_value=3000), mode=st.sampled_from(["auto", "model_cpu_offload"]))
def test_auto_plan_never_exceeds_the_vram_of_its_own_budget(vram_gib, ram_gib, disk_gb, mode):
    hardware = machine(vram=f"{vram_gib}GiB", ram=int(ram_gib * GIB), disk=int(disk_gb * 10**9))
    plan = plan_for(hardware, GPU_MEMORY_MODE=mode)
    if not plan.runnable:
        assert plan.errors
        return
    for budget in plan.vram_budget:
        assert budget.fits, budget  # the exact sum; the printed lines are rounded (VramBudget.fits)
    assert plan.disk.need <= plan.disk.available
    assert plan.ram.need <= plan.ram.available


# --- hardening (issue 13) -------------------------------------------------------------------------------------------

def test_a_complete_volume_below_the_disk_reserve_is_a_warning_not_an_error():
    full = plan_for(recorded("h100-x1.json"))
    present = frozenset(d.dest for d in full.downloads)
    nearly_full = recorded("h100-x1.json", disk_free=1 * 10**9)  # below DISK_RESERVE_GB=5
    plan = plan_for(nearly_full, present)
    assert plan.runnable, plan.errors
    assert plan.disk.fits and not plan.missing()
    assert any("DISK_RESERVE_GB=5" in w and "nothing needs downloading" in w for w in plan.warnings)
    assert (sd(plan).variant, sd(plan).offload) == ("bf16", FULL)  # the files in place still decide
    # With something left to download, the reserve is still an error.
    missing_one = plan_for(nearly_full, present - {full.downloads[0].dest})
    assert not missing_one.runnable and any(e.startswith("disk:") for e in missing_one.errors)


@pytest.mark.parametrize("hardware", [
    machine("h100", ram=1 * GIB),                 # not enough RAM to load any variant
    machine("h100", disk=1 * 10**9),              # not enough disk for any variant
    machine("RTX 3070", ram=8 * GIB),             # an 8 GB card on a small-RAM host
])
def test_a_steadydancer_plan_that_cannot_run_downloads_nothing_for_it(hardware):
    plan = plan_for(hardware)
    assert sd(plan).offload == SKIPPED and not plan.runnable
    assert [d.dest for d in plan.downloads] == []  # no text encoder, pose models, VAE, LoRA for it
    assert "--highvram" not in plan.comfyui_args


def test_files_shared_with_a_feature_that_runs_stay_when_steadydancer_cannot_run():
    plan = plan_for(machine("h100", ram=1 * GIB), WAN_720P="true")
    assert sd(plan).offload == SKIPPED
    assert plan.downloads and all(d.features == ("wan_720p",) for d in plan.downloads)


def test_the_ram_reason_of_a_resident_variant_does_not_speak_of_offloaded_weights():
    plan = plan_for(machine("h100", ram=24 * GIB))
    rejected = [f for f in plan.errors + (sd(plan).reason,) if "bf16 needs" in f and "of RAM" in f]
    assert rejected, (plan.errors, sd(plan).reason)
    assert "the loader reads the whole model through RAM" in rejected[0]
    assert "bf16 needs" in rejected[0] and "offloaded weights" not in rejected[0].split("bf16 needs")[1].split(";")[0]
