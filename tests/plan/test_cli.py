"""`supervisor plan` and `supervisor probe` as a user runs them: a real process, its stdout, stderr and exit code."""

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from supervisor.cli import main

TOKEN = "hf_TestTokenValue0123456789abcdefXYZ"
REPO = Path(__file__).resolve().parents[2]


def run(*args, env=None, check_code=None):
    environ = {"PATH": os.environ["PATH"], "HOME": os.environ.get("HOME", "/tmp"), "LOG_FORMAT": "json",
               "MODELS_DIR": "/tmp/supervisor-test-models", **(env or {})}
    proc = subprocess.run([sys.executable, "-m", "supervisor", *args], cwd=REPO, env=environ,
                          capture_output=True, text=True, timeout=60)
    if check_code is not None:
        assert proc.returncode == check_code, proc.stderr
    return proc


def test_plan_json_has_the_documented_keys():
    proc = run("plan", "--json", "--gpu", "RTX 4090", "--ram", "64GiB", "--disk", "500GB", check_code=0)
    plan = json.loads(proc.stdout)
    for key in ("hardware", "models", "downloads", "comfyui_args", "vram_budget", "warnings", "errors"):
        assert key in plan
    (model,) = plan["models"]
    assert {"feature", "variant", "offload", "reason"} <= set(model)
    assert (model["feature"], model["variant"]) == ("steadydancer", "fp8")
    assert {"repo", "path", "dest", "size", "present"} <= set(plan["downloads"][0])
    assert plan["vram_budget"][0]["fits"] is True
    # Each decision is also a log event (stderr, JSON lines).
    events = [json.loads(line) for line in proc.stderr.splitlines() if line.startswith("{")]
    assert any(e["event"] == "plan.decision" and e["variant"] == "fp8" for e in events)


def test_plan_table_is_readable():
    proc = run("plan", "--gpu", "h100", "--disk", "500GB", check_code=0)
    assert "VRAM budget: steadydancer" in proc.stdout
    assert "bf16" in proc.stdout and "fits fully resident" in proc.stdout
    assert "ComfyUI: --highvram --preview-method auto" in proc.stdout


def json_lines(text: str) -> list[dict]:
    """Every line parsed as JSON: fails on a line that is not one JSON object."""
    return [json.loads(line) for line in text.splitlines()]


def test_configuration_errors_exit_2_and_list_every_problem():
    env = {"ENABLE_STEADYDANCER": "yes please", "COMFYUI_PORT": "http", "GPU_TIER": "huge"}
    proc = run("plan", env=env)
    assert proc.returncode == 2
    # LOG_FORMAT=json: every line is one JSON object (no human block that breaks `| jq`).
    (error,) = [e for e in json_lines(proc.stderr) if e["event"] == "config.error"]
    assert len(error["problems"]) == 3
    for name in ("ENABLE_STEADYDANCER", "COMFYUI_PORT", "GPU_TIER"):
        assert any(p.startswith(name) for p in error["problems"])
    # For people (console logs) the same problems come as a readable block.
    proc = run("plan", env={**env, "LOG_FORMAT": "console"})
    assert proc.returncode == 2 and "3 problems" in proc.stderr and "  - COMFYUI_PORT" in proc.stderr


@pytest.mark.parametrize("args, where", [
    (["--vram", "0"], "--vram"), (["--vram", "0.5GiB"], "--vram"), (["--vram", "-3"], "--vram"),
    (["--gpu", "h100", "--gpu-count", "0"], "--gpu-count"), (["--gpu", "h100", "--gpu-count", "-1"], "--gpu-count"),
    (["--gpu-count", "2"], "--gpu-count"),
])
def test_bad_simulation_options_are_errors_not_tracebacks(args, where):
    proc = run("plan", *args)
    assert proc.returncode == 2, proc.stderr
    assert "Traceback" not in proc.stderr
    (error,) = [e for e in json_lines(proc.stderr) if e["event"] == "config.error"]
    assert error["problems"][0].startswith(where)


@pytest.mark.parametrize("content, says", [
    ("[]", "expected a JSON object"), ("{}", "missing ram_total"), ('"text"', "expected a JSON object"),
    ('{"ram_total": 1, "ram_available": 1, "disk_free": 1, "disk_path": "/", "gpus": [{"index": 0}]}',
     "gpus[0] is missing"),
    ('{"ram_total": 1, "ram_available": 1, "disk_free": 1, "disk_path": "/", "gpus": [{"index": 0, "name": "x", '
     '"uuid": "GPU-1", "total": 0, "free": 0, "reserved": 0, "compute_capability": [8, 0]}]}', "total must be"),
    ('{"ram_total": 1, "ram_available": 1, "disk_free": 1, "disk_path": "/", "gpus": [{"index": 0, "name": "x", '
     '"uuid": "GPU-1", "total": -5, "free": 0, "reserved": 0, "compute_capability": [8, 0]}]}', "total must be"),
    ("not json", "not a probe description"),
])
def test_a_bad_hardware_file_is_an_error_naming_the_problem(tmp_path, content, says):
    saved = tmp_path / "hw.json"
    saved.write_text(content)
    proc = run("plan", "--hardware", str(saved))
    assert proc.returncode == 2 and "Traceback" not in proc.stderr
    (error,) = [e for e in json_lines(proc.stderr) if e["event"] == "config.error"]
    assert error["problems"][0].startswith("--hardware") and says in error["problems"][0]
    assert "__init__" not in proc.stderr


def test_a_named_gpu_brings_a_typical_pods_ram_unless_ram_is_given():
    # On a small machine (this one), `--gpu "A100 40GB"` answers what a real A100 pod gets (README's table: bf16).
    plan = json.loads(run("plan", "--json", "--gpu", "A100 40GB", "--disk", "500GB", check_code=0).stdout)
    assert plan["hardware"]["ram_total"] == 85 * 2**30
    assert "typical a100-40gb pod" in plan["hardware"]["ram_source"]
    assert plan["models"][0]["variant"] == "bf16"
    text = run("plan", "--gpu", "A100 40GB", "--disk", "500GB", check_code=0).stdout
    assert "RAM 85.0 GiB (typical a100-40gb pod; --ram to change)" in " ".join(text.split())
    small = json.loads(run("plan", "--json", "--gpu", "A100 40GB", "--ram", "16GiB").stdout)
    assert small["hardware"]["ram_total"] == 16 * 2**30 and small["hardware"]["ram_source"] == "simulated"


def test_probe_reads_only_what_it_needs():
    # A bad variable that the probe does not use is no reason to refuse to describe the machine...
    proc = run("probe", env={"COMFYUI_PORT": "http", "GPU_MEMORY_MODE": "turbo"}, check_code=0)
    assert json.loads(proc.stdout)["ram_total"] > 0
    # ...but MODELS_DIR is where it measures the free disk.
    proc = run("probe", env={"MODELS_DIR": "/etc/hostname"})
    assert proc.returncode == 2 and "MODELS_DIR" in proc.stderr


def test_catalogue_and_environment_errors_come_together(tmp_path):
    bad = tmp_path / "bad.toml"
    bad.write_text('[files.x]\nrepo = "a/b"\npath = "x"\ndest = "../x"\nsize = 1\n')
    proc = run("plan", env={"SUPERVISOR_CATALOG": str(bad), "COMFYUI_PORT": "0"})
    assert proc.returncode == 2
    assert "COMFYUI_PORT" in proc.stderr and "[files.x]" in proc.stderr
    # The feature variables too: they are checked against the shipped catalogue while the overlay is broken.
    proc = run("plan", env={"SUPERVISOR_CATALOG": str(bad), "ENABLE_STEADYDANCER": "maybe",
                            "STEADYDANCER_VARIANT": "fp4"})
    assert proc.returncode == 2
    assert "[files.x]" in proc.stderr and "ENABLE_STEADYDANCER" in proc.stderr and "STEADYDANCER_VARIANT" in proc.stderr


def test_a_plan_that_cannot_run_exits_3():
    proc = run("plan", "--vram", "4GiB", env={"STEADYDANCER_VARIANT": "bf16", "GPU_MEMORY_MODE": "full"})
    assert proc.returncode == 3
    assert "ERRORS (the plan cannot run)" in proc.stdout


def test_the_token_never_appears_in_plan_output_logs_or_errors():
    env = {"HF_TOKEN": TOKEN, "CIVITAI_API_KEY": "civitai-secret-key-42", "LOG_LEVEL": "debug",
           "ENABLE_CIVITAI": "true", "CIVITAI_LORAS": "12"}
    outputs = [run("plan", "--json", "--gpu", "4090", env=env), run("plan", "--gpu", "4090", env=env),
               run("probe", env=env), run("plan", env={**env, "COMFYUI_PORT": TOKEN}),
               run("plan", env={**env, "COMFYUI_PORT": "civitai-secret-key-42"})]
    for proc in outputs:
        assert TOKEN not in proc.stdout + proc.stderr
        assert "civitai-secret-key-42" not in proc.stdout + proc.stderr
    assert outputs[-1].returncode == outputs[-2].returncode == 2


def test_probe_output_reads_back_with_hardware(tmp_path):
    probe = run("probe", "--gpu", "A100 40GB", "--ram", "80GiB", "--disk", "500GB", check_code=0)
    saved = tmp_path / "pod.json"
    saved.write_text(probe.stdout)
    assert json.loads(probe.stdout)["gpus"][0]["total"] == 40960 * 2**20
    plan = json.loads(run("plan", "--json", "--hardware", str(saved), check_code=0).stdout)
    assert plan["hardware"]["gpus"][0]["name"] == "NVIDIA A100-SXM4-40GB"
    assert plan["hardware"]["source"] == "file"


def test_probe_without_gpu_is_a_description_not_a_crash():
    probe = run("probe", env={"NVIDIA_VISIBLE_DEVICES": "void"}, check_code=0)
    data = json.loads(probe.stdout)
    assert data["gpus"] == []
    assert data["ram_total"] > 0 and data["disk_free"] > 0


def test_unknown_gpu_name_is_a_config_error(capsys):
    assert main(["plan", "--gpu", "Voodoo 5"], {"LOG_FORMAT": "json"}) == 2
    assert "unknown GPU 'Voodoo 5'" in capsys.readouterr().err


@pytest.mark.parametrize("argv", [["--help"], ["plan", "--help"]])
def test_help(argv, capsys):
    with pytest.raises(SystemExit) as info:
        main(argv, {})
    assert info.value.code == 0
    assert "usage: supervisor" in capsys.readouterr().out
