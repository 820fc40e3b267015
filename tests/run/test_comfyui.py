"""ComfyUI's command line, environment and flag check, against the stand-in's real `--help`."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from supervisor.run import launch as comfyui
from supervisor.run.client import history_outcome
from supervisor.plan.context import HardwareOptions, load_context
from tests.standins.comfyui import FLAGS, write_main

TOKEN = "hf_CommandLineToken0123456789abcdefXYZ"
DATA = Path(__file__).resolve().parents[1] / "data" / "run"


def context(tmp_path: Path, **env: str):
    base = {"COMFYUI_DIR": str(tmp_path / "comfyui"), "COMFYUI_DATA_DIR": str(tmp_path / "data"),
            "MODELS_DIR": str(tmp_path / "models"), "COMFYUI_PORT": "8190", "COMFYUI_LISTEN": "0.0.0.0"}
    return load_context({**base, **env}, HardwareOptions(gpu="RTX 4090", ram="64GiB")), {**base, **env}


@pytest.fixture(scope="module")
def known(tmp_path_factory) -> set[str]:
    comfy = tmp_path_factory.mktemp("comfy")
    write_main(comfy)
    out = subprocess.run([sys.executable, "main.py", "--help"], cwd=comfy, capture_output=True, text=True,
                         timeout=30)
    assert out.returncode == 0
    return comfyui.parse_help(out.stdout)


def test_help_parsing_finds_every_flag(known):
    assert set(FLAGS) <= known
    assert "--medvram" not in known


def test_the_command_line_of_a_plan(tmp_path, known):
    ctx, env = context(tmp_path, COMFYUI_ARGS="--disable-metadata --reserve-vram 1.5", HF_TOKEN=TOKEN)
    plan = ctx.plan()
    launch = comfyui.build_launch(plan, ctx.settings, ctx.catalog, known, {**env, "HF_TOKEN": TOKEN, "PATH": "/bin"})
    argv = list(launch.argv)
    assert argv[:6] == [sys.executable, "main.py", "--listen", "0.0.0.0", "--port", "8190"]
    assert argv[-len(plan.comfyui_args):] == list(plan.comfyui_args)
    assert argv[-3:] == ["--disable-metadata", "--reserve-vram", "1.5"]  # COMFYUI_ARGS last, once
    assert argv.count("--disable-metadata") == 1
    assert launch.url == "http://127.0.0.1:8190" and launch.cwd == tmp_path / "comfyui"
    assert (tmp_path / "data" / "user").is_dir()
    assert comfyui.check_flags(argv[2:], known, ctx.settings.comfyui_args) == []
    assert "HF_TOKEN" not in launch.env and TOKEN not in " ".join(argv)
    assert launch.env["__COMFY_CLI_SESSION__"].startswith(str(tmp_path / "data"))
    assert launch.env["CUDA_DEVICE_ORDER"] == "PCI_BUS_ID"  # the order the plan's --cuda-device counts in
    # comfyui_controlnet_aux opens <this>/yzd-v/DWPose/<file>: where the catalogue puts ENABLE_DWPOSE's files.
    assert launch.env["AUX_ANNOTATOR_CKPTS_PATH"] == str(tmp_path / "models" / "annotators")
    dwpose = tmp_path / "models" / ctx.catalog.files["dwpose_pose"].dest
    assert dwpose == Path(launch.env["AUX_ANNOTATOR_CKPTS_PATH"]) / "yzd-v" / "DWPose" / "dw-ll_ucoco_384.onnx"
    data = yaml.safe_load(launch.model_paths.read_text())
    (section,) = data.values()
    assert section["base_path"] == str(tmp_path / "models")
    assert set(ctx.catalog.folders) <= set(section) and "checkpoints" in section


def test_flags_the_installed_comfyui_lacks_are_left_out(tmp_path):
    ctx, env = context(tmp_path)
    old = {"--listen", "--port", "--cpu", "--preview-method", "--extra-model-paths-config"}
    launch = comfyui.build_launch(ctx.plan(), ctx.settings, ctx.catalog, old, env)
    assert "--extra-model-paths-config" in launch.argv and "--user-directory" not in launch.argv


def test_port_and_listen_in_comfyui_args_win_and_are_probed(tmp_path, known):
    ctx, env = context(tmp_path, COMFYUI_ARGS="--port 9000 --listen ::")
    launch = comfyui.build_launch(ctx.plan(), ctx.settings, ctx.catalog, known, env)
    assert launch.argv.count("--port") == 1 and launch.url == "http://[::1]:9000"


def test_comfyui_command_replaces_everything(tmp_path, known):
    ctx, env = context(tmp_path, COMFYUI_COMMAND="/opt/launch.sh --fast-start", COMFYUI_PORT="8300")
    launch = comfyui.build_launch(ctx.plan(), ctx.settings, ctx.catalog, known, env)
    assert launch.argv == ("/opt/launch.sh", "--fast-start") and launch.custom
    assert launch.url == "http://127.0.0.1:8300"


def test_unknown_flags_are_named_with_where_they_came_from(known):
    problems = comfyui.check_flags(["--listen", "x", "--medvram", "--lowvram", "--highvra", "--fp16-unett"], known,
                                   ["--medvram", "--fp16-unett"])
    text = [str(p) for p in problems]
    assert len(text) == 2
    assert text[0].startswith("COMFYUI_ARGS: ComfyUI does not accept --medvram")
    assert "did you mean --fp16-unet" in text[1]
    # A unique prefix is what argparse accepts too; an ambiguous one is not.
    assert comfyui.check_flags(["--highvra"], known, []) == []
    assert len(comfyui.check_flags(["--fp16"], known, [])) == 1


def test_secrets_never_reach_comfyui_unless_asked(tmp_path):
    ctx, env = context(tmp_path, HF_TOKEN=TOKEN, JUPYTER_PASSWORD="pw-123456", R2_SECRET_ACCESS_KEY="r2-secret")
    environ = {**env, "HF_TOKEN": TOKEN, "JUPYTER_PASSWORD": "pw-123456", "R2_SECRET_ACCESS_KEY": "r2-secret",
               "R2_BUCKET": "b", "HUGGING_FACE_HUB_TOKEN": "x", "MY_COPY": TOKEN, "KEEP": "1"}
    cleaned = comfyui.child_env(ctx.settings, environ, ctx.catalog)
    assert cleaned.keys() == {"COMFYUI_DIR", "COMFYUI_DATA_DIR", "MODELS_DIR", "COMFYUI_PORT", "COMFYUI_LISTEN", "KEEP"}
    ctx2, _ = context(tmp_path, HF_TOKEN=TOKEN, COMFYUI_PASS_SECRETS="true")
    assert comfyui.child_env(ctx2.settings, environ, ctx2.catalog)["HF_TOKEN"] == TOKEN


@pytest.mark.parametrize("listen, url", [("0.0.0.0", "http://127.0.0.1:8188"), ("::", "http://[::1]:8188"),
                                         ("10.0.0.5,127.0.0.1", "http://10.0.0.5:8188"),
                                         ("127.0.0.1", "http://127.0.0.1:8188")])
def test_probe_url(listen, url):
    assert comfyui.probe_url(listen, 8188, ()) == url
    assert comfyui.probe_url(listen, 8188, ("--tls-keyfile", "k")).startswith("https://")


def test_history_outcomes():
    ok = {"status": {"status_str": "success", "completed": True, "messages": []}}
    err = {"status": {"status_str": "error", "completed": False, "messages": [
        ["execution_error", {"node_id": "3", "node_type": "KSampler",
                             "exception_message": "CUDA out of memory.\nTIPS"}]]}}
    assert history_outcome(ok) == (True, "")
    assert history_outcome(err) == (False, "KSampler (node 3): CUDA out of memory.")
    assert history_outcome({}) == (None, "")


def test_the_stand_in_accepts_exactly_the_flags_of_comfyui_0_3_64():
    """`python main.py --help` of the real ComfyUI v0.3.64 (a125cd84), saved: the stand-in's flags are the same."""
    real = comfyui.parse_help((DATA / "comfyui-0.3.64-help.txt").read_text())
    assert real == set(FLAGS) | {"--help"}


@pytest.mark.parametrize("gpu", ["h100", "RTX 4090", "RTX 3060", "T4"])
def test_the_planners_flags_are_accepted_by_comfyui_0_3_64(tmp_path, gpu):
    real = comfyui.parse_help((DATA / "comfyui-0.3.64-help.txt").read_text())
    env = {"MODELS_DIR": str(tmp_path / "models"), "COMFYUI_DATA_DIR": str(tmp_path / "data")}
    ctx = load_context(env, HardwareOptions(gpu=gpu))
    launch = comfyui.build_launch(ctx.plan(), ctx.settings, ctx.catalog, real, env)
    assert comfyui.check_flags(launch.argv[2:], real, ()) == []
    # The old template's 12-16 GB flags are caught.
    assert len(comfyui.check_flags(["--medvram", "--cpu-text-encoder"], real, ())) == 2


def test_a_relative_data_dir_reaches_comfyui_as_absolute_paths(tmp_path, known, monkeypatch):
    # ComfyUI runs in COMFYUI_DIR, not where the supervisor started: every path it is given must not depend on that.
    monkeypatch.chdir(tmp_path)
    ctx, env = context(tmp_path, COMFYUI_DATA_DIR="data", MODELS_DIR="models")
    launch = comfyui.build_launch(ctx.plan(), ctx.settings, ctx.catalog, known, env)
    for flag in ("--extra-model-paths-config", "--input-directory", "--output-directory", "--user-directory"):
        value = launch.argv[launch.argv.index(flag) + 1]
        assert Path(value).is_absolute() and Path(value).exists(), (flag, value)
    assert Path(launch.env["__COMFY_CLI_SESSION__"]).is_absolute()
    assert launch.reboot_marker.is_absolute()
