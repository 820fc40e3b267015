"""Features as units: every switch's plan names its node packs (pinned) and workflow, or refuses it with a reason;
VRAM shared between features (other processes, resident models, on-demand peaks) shows in the plan with numbers."""

import json
import re
from dataclasses import replace
from pathlib import Path

import pytest

from supervisor.cli import main
from supervisor.errors import ConfigError
from supervisor.plan import hardware as hw
from supervisor.plan import probe as hwprobe
from supervisor.plan.catalog_load import load_catalog
from supervisor.plan.packs import load_packs
from supervisor.plan.planner import make_plan
from supervisor.plan.environment import load_settings
from supervisor.plan.types import FULL, ON_DEMAND, SKIPPED

from .fake_nvml import DATA, FakeNvml

GIB = 2**30
CATALOG = load_catalog()
REPO = Path(__file__).resolve().parents[2]
BIG = dict(ram_total=256 * GIB, ram_available=250 * GIB, disk_free=4000 * 10**9, disk_path="/workspace")
ALL_OFF = {f.switch: "false" for f in CATALOG.features.values()}

# switch -> (what the plan must show: pack labels with pins and the workflow) or the start of its refusal.
EXPECTED = {
    "ENABLE_STEADYDANCER": (["ComfyUI-WanVideoWrapper@088128b2", "ComfyUI-WanAnimatePreprocess@1a35b81a",
                             "ComfyUI-KJNodes@3fcd22f2", "ComfyUI-VideoHelperSuite@4ee72c06"], "steadydancer_fast.json"),
    "WAN_720P": (["ComfyUI core@a125cd84"], "features/wan_720p.json"),
    "WAN_480P": (["ComfyUI core@a125cd84"], "features/wan_480p.json"),
    "ENABLE_I2V": (["ComfyUI core@a125cd84"], "features/i2v.json"),
    "ENABLE_VACE": (["ComfyUI core@a125cd84"], "features/vace.json"),
    "ENABLE_FUN_INP": (["ComfyUI core@a125cd84"], "features/fun_inp.json"),
    "ENABLE_WAN22_DISTILL": (["Comfyui_turbodiffusion@b109d084", "ComfyUI core@a125cd84"],
                             "features/wan22_distill.json"),
    "ENABLE_CONTROLNET": (["ComfyUI core@a125cd84", "comfyui_controlnet_aux@e8b689a5"], "features/controlnet.json"),
    "ENABLE_DWPOSE": (["comfyui_controlnet_aux@e8b689a5", "ComfyUI core@a125cd84"], "features/dwpose.json"),
    "ENABLE_VIBEVOICE": (["VibeVoice-ComfyUI@9185f531", "ComfyUI core@a125cd84"], "features/vibevoice.json"),
    "ENABLE_QWEN_EDIT": (["ComfyUI-GGUF@be2a0833", "ComfyUI core@a125cd84"], "features/qwen_edit.json"),
    "ENABLE_SCAIL": (["ComfyUI-WanVideoWrapper@088128b2", "ComfyUI-VideoHelperSuite@4ee72c06", "ComfyUI core@a125cd84"],
                     "features/scail.json"),
    "ENABLE_ILLUSTRIOUS": (["ComfyUI core@a125cd84"], "features/illustrious.json"),
    "ENABLE_ILLUSTRIOUS_EMBEDDINGS": (["ComfyUI core@a125cd84"], "features/illustrious_embeddings.json"),
    "ENABLE_CIVITAI": (["ComfyUI core@a125cd84"], "none: LoRAs for your own graphs"),
    "ENABLE_ZIMAGE": "ComfyUI v0.3.64 (the image's pinned ComfyUI) predates Z-Image",
    "ENABLE_XTTS": "no node pack in the image loads XTTS v2",
    "ENABLE_CHATTERBOX": "the template's node pack (thefader/ComfyUI-Chatterbox) could not be obtained",
    "ENABLE_GENFOCUS": "the template's ComfyUI-Genfocus nodes",
    "ENABLE_MVINVERSE": "the template's ComfyUI-MVInverse loader",
    "ENABLE_FLASHPORTRAIT": "ComfyUI-WanVideoWrapper 088128b2 recognises FlashPortrait only",
    "ENABLE_STORYMEM": "StoryMem is a LoRA for the Wan 2.2 A14B experts",
    "ENABLE_INFCAM": "no ComfyUI node pack loads InfCam",
}


def machine(name="h100", **resources):
    base = hw.Hardware(gpus=(), **{**BIG, **resources})
    return hw.simulate(base, gpu=name)


def plan_for(hardware, catalog=CATALOG, **env):
    settings = load_settings({**ALL_OFF, **{k: str(v) for k, v in env.items()}}, catalog)
    return make_plan(settings, catalog, hardware)


def test_every_shipped_switch_is_in_the_table():
    assert set(EXPECTED) == {f.switch for f in CATALOG.features.values()}


@pytest.mark.parametrize("switch", sorted(EXPECTED))
def test_supervisor_plan_with_each_switch_lists_its_packs_and_workflow(switch, monkeypatch, capsys):
    """`supervisor plan` as a user runs it, with only this switch on (its required feature too)."""
    feature = CATALOG.feature_by_switch(switch)
    env = {**ALL_OFF, switch: "true", "LOG_FORMAT": "json", "MODELS_DIR": "/tmp/supervisor-test-models"}
    for required in feature.requires:
        env[CATALOG.features[required].switch] = "true"
    for key, value in env.items():
        monkeypatch.setenv(key, value)
    code = main(["plan", "--gpu", "h100", "--ram", "256GiB", "--disk", "4TB"])
    out = capsys.readouterr().out
    expected = EXPECTED[switch]
    table = out[out.index("Features: node packs"):].split("\n\n")[0]
    lines = table.splitlines()
    first = next(i for i, line in enumerate(lines) if line.startswith(feature.name + " "))
    rest = [line.strip() for line in lines[first + 1:]]
    rest = rest[:next((i for i, line in enumerate(lines[first + 1:]) if not line.startswith(" ")), len(rest))]
    row = " ".join([lines[first], *rest])  # the row and its indented lines (plan keeps within the terminal)
    if isinstance(expected, tuple):
        packs, workflow = expected
        assert code == 0, out
        assert ", ".join(packs) in row and workflow in row
        assert f"{switch}: refused" not in out
        if not workflow.startswith("none"):
            assert (REPO / "workflows" / workflow).is_file()
    else:
        assert code == 0, out  # a refused feature does not stop the pod
        assert f"{switch}: refused, nothing downloaded: {expected}" in " ".join(out.split())  # lines wrap
        assert not re.search(rf"\s{feature.name}\s*$", out[out.index("Downloads"):].split("Disk:")[0], re.M)


def test_refused_features_download_nothing_and_say_why_in_json():
    plan = plan_for(machine(), ENABLE_GENFOCUS="true", ENABLE_STORYMEM="true", ENABLE_QWEN_EDIT="true",
                    QWEN_EDIT_MODEL="full")
    assert plan.downloads == ()
    for name in ("genfocus", "storymem", "qwen_edit"):
        assert plan.model(name).offload == SKIPPED and plan.model(name).reason.startswith("refused")
    assert "QWEN_EDIT_MODEL=full: the full model is a diffusers folder" in plan.model("qwen_edit").reason
    # A quant of the same feature is not refused, and goes to the folder ComfyUI-GGUF's loader reads.
    quant = plan_for(machine(), ENABLE_QWEN_EDIT="true", QWEN_EDIT_MODEL="Q6_K")
    assert quant.model("qwen_edit").offload == ON_DEMAND
    assert "diffusion_models/qwen-image-edit-2511-Q6_K.gguf" in {d.dest for d in quant.downloads}


def test_pairings_follow_the_loaders():
    files = lambda name: set(CATALOG.features[name].files)  # noqa: E731
    assert {"wan22_i2v_high_fp8", "wan22_i2v_low_fp8"} <= files("storymem")          # Wan 2.2 A14B, not Wan 2.1
    assert not {"wan21_t2v_14b_fp8", "wan21_i2v_720p_14b_fp8"} & files("storymem")
    scail = CATALOG.files["scail_fp8_scaled"]                                          # Kijai's comfy file
    assert scail.repo.startswith("Kijai/") and scail.kind == "file" and scail.dest.startswith("diffusion_models/")
    turbo = {CATALOG.files[k].path for k in files("wan22_distill")}
    assert {"TurboWan2.2-I2V-A14B-high-720P-quant.pth", "TurboWan2.2-I2V-A14B-low-720P-quant.pth"} <= turbo
    assert "ComfyUI-GGUF" in CATALOG.features["qwen_edit"].packs
    assert CATALOG.files["dwpose_det"].dest == "annotators/yzd-v/DWPose/yolox_l.onnx"  # controlnet_aux's layout


# --- VRAM shared between features -------------------------------------------------------------------------------

def test_vibevoice_on_a_24gb_card_warns_about_the_steadydancer_plan_with_the_numbers():
    alone = plan_for(machine("RTX 4090"), ENABLE_STEADYDANCER="true")
    both = plan_for(machine("RTX 4090"), ENABLE_STEADYDANCER="true", ENABLE_VIBEVOICE="true")
    assert alone.runnable and both.runnable
    (warning,) = [w for w in both.warnings if w.startswith("ENABLE_VIBEVOICE")]
    sd = both.model("steadydancer")
    assert (sd.variant, sd.knobs.blocks_to_swap) == ("fp8", 0)
    numbers = [float(n) for n in re.findall(r"(\d+(?:\.\d+)?) GiB", warning)]
    vibevoice, steadydancer, together, usable = numbers[:4]
    assert vibevoice == CATALOG.features["vibevoice"].variants["Large"].vram_gib == 19.0
    assert steadydancer == pytest.approx(15.27 + 0.69 + 4.7, abs=0.05)   # DiT + unmerged LoRA + fp8 activations
    assert together == pytest.approx(vibevoice + steadydancer, abs=0.05) and together > usable
    assert usable == pytest.approx(23.99 - 0.39 - 0.6, abs=0.05)
    assert "separate prompts" in warning
    # VibeVoice's size is its variant's, not one figure for all three.
    small = plan_for(machine("RTX 4090"), ENABLE_VIBEVOICE="true", VIBEVOICE_MODEL="1.5B")
    assert small.model("vibevoice").vram_gib == 6.5 and "peak about 6.5 of" in small.model("vibevoice").reason
    # On a 141 GB card both fit at once: no warning. (On 80 GB they do not: SteadyDancer loads bf16 with the LoRA
    # merged at a measured 67.2 GiB, and VibeVoice's 19 GiB beside it is too much.)
    assert not [w for w in plan_for(machine("h200"), ENABLE_STEADYDANCER="true", ENABLE_VIBEVOICE="true").warnings
                if w.startswith("ENABLE_VIBEVOICE")]


def test_a_resident_feature_comes_off_steadydancers_budget_and_changes_its_plan(tmp_path):
    extra = tmp_path / "resident.toml"
    extra.write_text("[features.vibevoice]\nresident = true\n")
    catalog = load_catalog([extra])
    before = plan_for(machine("RTX 4090"), catalog, ENABLE_STEADYDANCER="true", VIBEVOICE_MODEL="1.5B")
    after = plan_for(machine("RTX 4090"), catalog, ENABLE_STEADYDANCER="true", ENABLE_VIBEVOICE="true",
                     VIBEVOICE_MODEL="1.5B")
    (budget,) = after.vram_budget
    held = [line for line in budget.lines if line.item.startswith("held: ")]
    assert [(line.item, line.gib) for line in held] == [("held: vibevoice 1.5B (resident)", 6.5)]
    # 6.5 GiB less room: fp8 no longer fits resident, blocks are swapped now.
    assert before.model("steadydancer").knobs.blocks_to_swap == 0
    assert after.model("steadydancer").knobs.blocks_to_swap > 0
    assert "(22.5 GiB usable" not in after.model("steadydancer").reason and "16.5 GiB usable" in after.model("steadydancer").reason
    assert budget.total_gib <= budget.capacity_gib
    assert not [w for w in after.warnings if w.startswith("ENABLE_VIBEVOICE")]  # resident: no on-demand warning


def occupied_reading(used_bytes):
    reading = json.loads((DATA / "h100-x1.json").read_text())
    device = reading["devices"][0]
    for key in ("memory_v1", "memory_v2"):
        device[key]["free"] -= used_bytes
        device[key]["used"] += used_bytes
    return reading


def test_vram_another_process_holds_is_reported_and_planned_around():
    used = 50 * GIB
    found = hwprobe.probe(Path("/"), {}, nvml=FakeNvml(occupied_reading(used)))
    hardware = replace(found, **BIG)
    plan = plan_for(hardware, ENABLE_STEADYDANCER="true")
    (warning,) = [w for w in plan.warnings if "already used by another process" in w]
    assert "50.0 GiB" in warning and "planning for the 28.6 GiB" in warning and "79.6 GiB" in warning
    (budget,) = plan.vram_budget
    assert ("held: other processes", 50.0) in [(line.item, line.gib) for line in budget.lines]
    sd = plan.model("steadydancer")
    assert (sd.variant, sd.offload) != ("bf16", FULL)           # the idle card would hold bf16 resident
    assert "28.6 GiB usable" in sd.reason
    assert "--highvram" not in plan.comfyui_args                 # 28.6 GiB free is below the --highvram line
    idle = plan_for(replace(hwprobe.probe(Path("/"), {}, nvml=FakeNvml.from_file("h100-x1.json")), **BIG),
                    ENABLE_STEADYDANCER="true")
    assert (idle.model("steadydancer").variant, idle.model("steadydancer").offload) == ("bf16", FULL)
    assert not [w for w in idle.warnings if "another process" in w]


def test_driver_noise_in_nvml_used_is_not_another_process():
    found = hwprobe.probe(Path("/"), {}, nvml=FakeNvml(occupied_reading(100 * 2**20)))
    plan = plan_for(replace(found, **BIG), ENABLE_STEADYDANCER="true")
    assert not [w for w in plan.warnings if "another process" in w]


# --- the data files -------------------------------------------------------------------------------------------------

def test_every_shipped_feature_has_packs_and_a_workflow_or_a_reason():
    for feature in CATALOG.features.values():
        assert feature.refused or feature.packs, feature.name
        assert feature.refused or feature.workflow or feature.workflow_note, feature.name
        for pack in feature.packs:
            assert pack in CATALOG.packs


def test_a_feature_naming_an_unknown_pack_is_a_catalogue_error(tmp_path):
    extra = tmp_path / "extra.toml"
    extra.write_text('[features.my_tts]\nswitch = "ENABLE_MY_TTS"\npacks = ["ComfyUI", "my-tts-pack"]\n')
    with pytest.raises(ConfigError) as err:
        load_catalog([extra])
    assert "[features.my_tts]" in str(err.value) and "unknown node pack 'my-tts-pack'" in str(err.value)


def test_pack_list_rejects_branches_and_misplaced_folders(tmp_path):
    text = (REPO / "config" / "packs.toml").read_text()
    bad = text.replace('commit = "be2a08330d7ec232d684e50ab938870d7529471e"', 'commit = "main"')
    bad = bad.replace('folder = "/opt/ComfyUI/custom_nodes/VibeVoice-ComfyUI"', 'folder = "/opt/ComfyUI/custom_nodes/x"')
    path = tmp_path / "packs.toml"
    path.write_text(bad)
    problems = []
    packs = load_packs(path, problems)
    messages = [str(p) for p in problems]
    assert any("[packs.ComfyUI-GGUF]" in m and "commit 'main' must be a full 40-digit commit id" in m
               for m in messages)
    assert any("[packs.VibeVoice-ComfyUI]" in m and "must be '/opt/ComfyUI/custom_nodes/VibeVoice-ComfyUI'" in m
               for m in messages)
    assert "ComfyUI-GGUF" not in packs and "ComfyUI-WanVideoWrapper" in packs
    good = load_packs(REPO / "config" / "packs.toml", problems := [])
    assert problems == [] and good["ComfyUI"].commit.startswith("a125cd84")


def test_the_lock_pins_the_images_torch_and_one_version_of_everything():
    lines = [line for line in (REPO / "docker" / "requirements.lock").read_text().splitlines()
             if line and not line.startswith("#")]
    names = [re.split(r"[=<>;]", line)[0].lower() for line in lines]
    assert len(names) == len(set(names))
    assert all("==" in line for line in lines)
    assert "torch==2.9.1" in lines and "torchvision==0.24.1" in lines and "onnxruntime-gpu==1.23.2" in lines
    transformers = next(line for line in lines if line.startswith("transformers=="))
    assert transformers.startswith("transformers==4.")   # VibeVoice's embedded model clashes with transformers 5


def test_readme_feature_table_and_refusals_match_the_catalogue():
    readme = (REPO / "README.md").read_text()
    section = readme.split("## Feature switches: node packs, workflows and VRAM", 1)[1].split("\n## ", 1)[0]
    flat = " ".join(section.split())
    from supervisor.plan.features import pack_labels
    for feature in CATALOG.features.values():
        row = next(line for line in section.splitlines() if line.startswith(f"| `{feature.switch}` |"))
        if feature.refused:
            assert "**refused**" in row
            assert f"`{feature.switch}`: {' '.join(feature.refused.split())}." in flat  # the plan's words, repeated
        else:
            assert all(label in row for label in pack_labels(feature, CATALOG)), row
            assert (f"`{feature.workflow}`" if feature.workflow else "none") in row
    for feature in CATALOG.features.values():
        for name, variant in feature.variants.items():
            if variant.refused:
                assert f"`{feature.variant_env}={name}`: {' '.join(variant.refused.split())}." in flat
    for pack in CATALOG.packs.values():
        assert f"`{pack.commit[:8]}`" in section, pack.id


def test_an_on_demand_feature_is_checked_against_what_resident_ones_leave(tmp_path):
    extra = tmp_path / "resident.toml"
    extra.write_text("[features.vibevoice]\nresident = true\n")
    catalog = load_catalog([extra])
    plan = plan_for(machine("RTX 4090"), catalog, ENABLE_VIBEVOICE="true", WAN_720P="true")
    (warning,) = [w for w in plan.warnings if w.startswith("WAN_720P")]
    # 23.0 GiB usable less VibeVoice Large's 19 GiB leaves 4.0 GiB for the 18 GiB Wan 2.1 T2V workflow.
    assert "peaks at about 18 GiB of VRAM, 4.0 GiB usable" in warning
    alone = plan_for(machine("RTX 4090"), catalog, WAN_720P="true")
    assert not [w for w in alone.warnings if w.startswith("WAN_720P")]
