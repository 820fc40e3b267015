"""`prepare` (run before ComfyUI starts) and `check_live` (run once ComfyUI answers), end to end on a temp volume."""

from __future__ import annotations

import io
import json
import sys
from pathlib import Path

import pytest

from supervisor import logs
from supervisor.workflows import check_live
from supervisor.workflows import resolve as workflows
from supervisor.workflows.ui import is_ui_format, ui_to_api

from .helpers import node, object_info_for, plan_for, plan_models


@pytest.fixture
def events():
    stream = io.StringIO()
    logs.configure("debug", "json", stream=stream)

    def read() -> list[dict]:
        return [json.loads(line) for line in stream.getvalue().splitlines() if line.strip()]

    yield read
    logs.configure("info", "json", stream=sys.stderr)


def pod(tmp_path: Path, kind: str = "24GB-fp8-blockswap", **env):
    return plan_for(kind, COMFYUI_DATA_DIR=tmp_path / "data", MODELS_DIR=tmp_path / "models", **env)


def test_writes_browser_and_api_copies(tmp_path, events):
    plan, s = pod(tmp_path)
    assert workflows.prepare(plan, s) == []
    user = tmp_path / "data" / "user" / "default"
    expected = {r.name: r.api for r in workflows.resolve_shipped(plan, s)}
    defs = workflows.load_node_defs()
    for name, api in expected.items():
        ui = json.loads((user / "workflows" / f"{name}.json").read_text(encoding="utf-8"))
        assert is_ui_format(ui) and ui_to_api(ui, defs) == api
        assert json.loads((user / "workflows_api" / f"{name}.json").read_text(encoding="utf-8")) == api
    assert sorted(p.name for p in (user / "workflows").iterdir()) == sorted(f"{n}.json" for n in expected)
    seen = events()
    resolved = [e for e in seen if e["event"] == "workflows.resolved"]
    assert {e["workflow"] for e in resolved} == set(expected)
    quality = next(e for e in resolved if e["workflow"] == "steadydancer_quality")
    assert quality["values"]["Sampler.seed"] == 106060 and quality["values"]["Block swap.blocks_to_swap"] > 0
    (written,) = [e for e in seen if e["event"] == "workflows.written"]
    assert len(written["paths"]) == 6
    info = [e for e in seen if e["event"] == "workflows.no_effect"]
    assert info and info[0]["level"] == "info" and "STEADYDANCER_CONDITION_GUIDE" in info[0]["variables"]


def test_second_start_rewrites_with_the_new_plan(tmp_path):
    plan, s = pod(tmp_path)
    workflows.prepare(plan, s)
    plan2, s2 = pod(tmp_path, "12GB-gguf", STEADYDANCER_SEED=7)
    assert workflows.prepare(plan2, s2) == []
    api = json.loads((tmp_path / "data/user/default/workflows_api/steadydancer_fast.json").read_text())
    assert node(api, "Load SteadyDancer model")["inputs"]["model"].endswith(".gguf")
    assert node(api, "Sampler")["inputs"]["seed"] == 7


def test_a_copy_the_user_edited_is_kept(tmp_path, events):
    plan, s = pod(tmp_path)
    workflows.prepare(plan, s)
    edited = tmp_path / "data/user/default/workflows/steadydancer_fast.json"
    ui = json.loads(edited.read_text())
    ui["extra"]["mine"] = True
    edited.write_text(json.dumps(ui))
    plan2, s2 = pod(tmp_path, "12GB-gguf")
    warnings = workflows.prepare(plan2, s2)
    assert len(warnings) == 1 and str(edited) in warnings[0] and "kept" in warnings[0]
    assert json.loads(edited.read_text())["extra"]["mine"] is True
    api = json.loads((tmp_path / "data/user/default/workflows_api/steadydancer_fast.json").read_text())
    assert node(api, "Load SteadyDancer model")["inputs"]["model"].endswith(".gguf")  # the API copy moved on
    assert any(e["event"] == "workflows.kept_user_copy" and e["level"] == "warning" for e in events())


def test_changed_variables_warn(tmp_path, events):
    plan, s = pod(tmp_path, STEADYDANCER_CONDITION_GUIDE=1.5, STEADYDANCER_END_CFG=0.3)
    warnings = workflows.prepare(plan, s)
    assert len(warnings) == 2 and all("has no effect" in w for w in warnings)
    loud = [e for e in events() if e["event"] == "workflows.no_effect" and e["level"] == "warning"]
    assert {e["message"].split("=")[0] for e in loud} == {"STEADYDANCER_CONDITION_GUIDE", "STEADYDANCER_END_CFG"}


@pytest.mark.parametrize("env, reason", [({"ENABLE_STEADYDANCER": "false"}, "ENABLE_STEADYDANCER is off")])
def test_skipped_when_not_enabled(tmp_path, events, env, reason):
    plan, s = pod(tmp_path, **env)
    assert workflows.prepare(plan, s) == []
    assert not (tmp_path / "data").exists()
    (skipped,) = [e for e in events() if e["event"] == "workflows.skipped"]
    assert reason in skipped["reason"]


def test_skipped_without_gpu(tmp_path, events):
    from supervisor.plan.planner import make_plan

    from .helpers import CATALOG, machine, settings

    s = settings(COMFYUI_DATA_DIR=tmp_path / "data")
    plan = make_plan(s, CATALOG, machine(None))
    assert workflows.prepare(plan, s) == []
    (skipped,) = [e for e in events() if e["event"] == "workflows.skipped"]
    assert "needs a CUDA GPU and none is visible" in skipped["reason"]


def test_unwritable_volume_is_a_warning_not_a_crash(tmp_path):
    plan, s = pod(tmp_path)
    (tmp_path / "data").mkdir()
    (tmp_path / "data" / "user").write_text("a file where a folder should be")
    warnings = workflows.prepare(plan, s)
    assert warnings and all("cannot write" in w for w in warnings)


def test_check_live_clean_and_failing(tmp_path, events):
    plan, s = pod(tmp_path)
    models = plan_models(plan)
    assert check_live(object_info_for(models), plan, s) == []
    assert any(e["event"] == "workflows.check_ok" for e in events())
    models["loras"] = []
    problems = check_live(object_info_for(models, inputs=()), plan, s)
    (problem,) = problems
    assert problem.class_type == "WanVideoLoraSelect" and problem.input == "lora"
    assert "lightx2v_I2V_14B_480p_cfg_step_distill_rank64_bf16.safetensors" in str(problem)
    assert "feature 'steadydancer' (ENABLE_STEADYDANCER=true)" in str(problem)
    seen = events()
    (failed,) = [e for e in seen if e["event"] == "workflows.check_failed"]
    assert failed["level"] == "error" and failed["count"] == 1
    notes = [e for e in seen if e["event"] == "workflows.check_notes"]
    assert notes and "steadydancer_reference.png" in " ".join(notes[-1]["notes"])


def test_check_live_skips_when_not_planned(tmp_path):
    plan, s = pod(tmp_path, ENABLE_STEADYDANCER="false")
    assert check_live({}, plan, s) == []


def test_lost_state_with_unchanged_files_is_not_an_edit(tmp_path):
    plan, s = pod(tmp_path)
    workflows.prepare(plan, s)
    (tmp_path / "data" / workflows.STATE_FILE).unlink()
    assert workflows.prepare(plan, s) == []  # same content as ours: nothing to keep, nothing to warn about
    plan2, s2 = pod(tmp_path, "12GB-gguf")
    assert workflows.prepare(plan2, s2) == []  # and the state is back, so the next plan rewrites them
