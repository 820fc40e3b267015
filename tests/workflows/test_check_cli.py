"""`supervisor check` end to end: saved node definitions or a live server, tables and JSON, exit codes."""

from __future__ import annotations

import copy
import json
import os
import subprocess
import sys
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pytest

from supervisor.workflows import resolve as workflows
from supervisor.cli import main
from supervisor.workflows.ui import api_to_ui

from .helpers import all_steadydancer_models, node_id, object_info_for

REPO = Path(__file__).resolve().parents[2]
SIMULATED = ["--gpu", "RTX 3060", "--ram", "256GiB", "--disk", "2000GB"]


@pytest.fixture(scope="module")
def info_file(tmp_path_factory) -> Path:
    path = tmp_path_factory.mktemp("info") / "object_info.json"
    path.write_text(json.dumps(object_info_for(all_steadydancer_models())), encoding="utf-8")
    return path


@pytest.fixture
def env(tmp_path) -> dict[str, str]:
    return {"MODELS_DIR": str(tmp_path / "models"), "COMFYUI_DATA_DIR": str(tmp_path / "data"), "LOG_FORMAT": "json",
            "LOG_LEVEL": "warning"}


def run(capsys, env, *argv) -> tuple[int, str, str]:
    code = main(["check", *argv, *SIMULATED], env)
    out = capsys.readouterr()
    return code, out.out, out.err


def broken_copy(tmp_path: Path) -> Path:
    """The quality workflow with one mistake of each kind a user makes."""
    api = copy.deepcopy(workflows.load_shipped()[0].api)
    sampler = node_id(api, "Sampler")
    loader = node_id(api, "Load SteadyDancer model")
    api[loader]["inputs"]["model"] = "Wan21_SteadyDancer_fp8.safetensors"  # the old template's file name
    del api[sampler]["inputs"]["steps"]
    api[sampler]["inputs"]["cfg"] = 50.0
    api[node_id(api, "Decode video")]["inputs"]["vae"] = [loader, 0]
    api[node_id(api, "Block swap")]["inputs"]["blocks_to_swap"] = "many"
    api[node_id(api, "Encode pose video")]["inputs"]["mask"] = ["99", 0]
    api["30"] = {"class_type": "Wan_KSampler", "inputs": {}}
    path = tmp_path / "broken.json"
    path.write_text(json.dumps(api), encoding="utf-8")
    return path


def test_shipped_workflows_pass(capsys, env, info_file):
    code, out, _ = run(capsys, env, "--object-info", str(info_file))
    assert code == 0, out
    for name, _ in workflows.SHIPPED:
        assert f"{name}.json (" in out and "OK" in out
    assert out.rstrip().endswith("no problems")


def test_broken_copy_fails_with_a_table(capsys, env, info_file, tmp_path):
    code, out, _ = run(capsys, env, "--object-info", str(info_file), str(broken_copy(tmp_path)))
    assert code == 1
    assert "broken.json" in out and "NODE" in out and "CLASS" in out and "INPUT" in out and "fix:" in out
    expected = [
        ("13", "WanVideoModelLoader", "model", "not among the files ComfyUI lists"),
        ("17", "WanVideoSampler", "steps", "required input is missing"),
        ("17", "WanVideoSampler", "cfg", "bigger than the maximum 30.0"),
        ("18", "WanVideoDecode", "vae", "receives WANVIDEOMODEL from node 13 (WanVideoModelLoader) output 0"),
        ("14", "WanVideoBlockSwap", "blocks_to_swap", "'many' is not a valid INT value"),
        ("8", "WanVideoEncode", "mask", "links to node '99', which is not in the workflow"),
        ("30", "Wan_KSampler", "-", "node type Wan_KSampler does not exist"),
    ]
    lines = out.splitlines()
    for node, cls, inp, text in expected:
        assert any(line.split()[:3] == [node, cls, inp] and text in line for line in lines), (node, text, out)
    assert "7 problems" in out


def test_json_output(capsys, env, info_file, tmp_path):
    code, out, _ = run(capsys, env, "--object-info", str(info_file), "--json", str(broken_copy(tmp_path)))
    assert code == 1
    report = json.loads(out)
    assert report["ok"] is False and report["source"] == str(info_file)
    (wf,) = report["workflows"]
    kinds = {(p["node_id"], p["input"], p["kind"]) for p in wf["problems"]}
    assert ("13", "model", "value_not_in_list") in kinds and ("17", "steps", "required_input_missing") in kinds
    assert all(p["fix"] and p["message"] for p in wf["problems"])


def test_missing_model_names_the_file_and_feature(capsys, env, tmp_path):
    models = all_steadydancer_models()
    models["diffusion_models"] = [n for n in models["diffusion_models"] if "fp8" not in n]
    path = tmp_path / "no_fp8.json"
    path.write_text(json.dumps(object_info_for(models)), encoding="utf-8")
    code, out, _ = run(capsys, env, "--object-info", str(path))
    assert code == 1
    assert "'Wan21_SteadyDancer_fp8_e4m3fn_scaled_KJ.safetensors'" in out
    assert "feature 'steadydancer' (ENABLE_STEADYDANCER=true, STEADYDANCER_VARIANT=fp8)" in out


def test_resolved_against_this_pods_plan(capsys, env, tmp_path):
    # The RTX 3060 plan picks a GGUF file; a ComfyUI that has only the fp8 file fails on exactly that.
    models = all_steadydancer_models()
    models["diffusion_models"] = [n for n in models["diffusion_models"] if not n.endswith(".gguf")]
    path = tmp_path / "no_gguf.json"
    path.write_text(json.dumps(object_info_for(models)), encoding="utf-8")
    code, out, _ = run(capsys, env, "--object-info", str(path), "--resolved")
    assert code == 1
    assert "steadydancer_fast (resolved)" in out
    assert "Wan21_I2V_SteadyDancer_fp16-Q4_K_M_fix_5d_tensor.gguf" in out and "STEADYDANCER_VARIANT=gguf:Q4_K_M" in out
    code, out, _ = run(capsys, env, "--object-info", str(object_info_path(tmp_path)), "--resolved")
    assert code == 0, out


def object_info_path(tmp_path: Path) -> Path:
    path = tmp_path / "all.json"
    path.write_text(json.dumps(object_info_for(all_steadydancer_models())), encoding="utf-8")
    return path


def test_browser_format_is_converted(capsys, env, info_file, tmp_path):
    ui = api_to_ui(workflows.load_shipped()[1].api, workflows.load_node_defs(), "fast")
    path = tmp_path / "fast_ui.json"
    path.write_text(json.dumps(ui), encoding="utf-8")
    code, out, _ = run(capsys, env, "--object-info", str(info_file), str(path))
    assert code == 0 and "browser format, converted" in out
    ui["nodes"].append({"id": 50, "type": "GetNode", "inputs": [], "outputs": [], "widgets_values": ["x"]})
    path.write_text(json.dumps(ui), encoding="utf-8")
    code, _, err = run(capsys, env, "--object-info", str(info_file), str(path))
    assert code == 2 and "GetNode" in err and "Export (API)" in err


@pytest.mark.parametrize("content, message", [
    (None, "cannot read workflow"), ("{not json", "is not valid JSON")])
def test_unreadable_workflow_is_exit_2(capsys, env, info_file, tmp_path, content, message):
    path = tmp_path / "w.json"
    if content is not None:
        path.write_text(content)
    code, _, err = run(capsys, env, "--object-info", str(info_file), str(path))
    assert code == 2 and message in err


def test_bad_object_info_is_exit_2(capsys, env, tmp_path):
    path = tmp_path / "info.json"
    path.write_text(json.dumps({"prompt": 1}))
    code, _, err = run(capsys, env, "--object-info", str(path))
    assert code == 2 and "not a GET /object_info answer" in err
    code, _, err = run(capsys, env, "--object-info", str(tmp_path / "absent.json"))
    assert code == 2 and "cannot read object info" in err


def test_resolved_with_paths_is_exit_2(capsys, env, info_file):
    code, _, err = run(capsys, env, "--object-info", str(info_file), "--resolved", str(info_file))
    assert code == 2 and "leave out the file names" in err


def test_resolved_when_not_planned_is_exit_2(capsys, env, info_file):
    code, _, err = run(capsys, {**env, "ENABLE_STEADYDANCER": "false"}, "--object-info", str(info_file), "--resolved")
    assert code == 2 and "ENABLE_STEADYDANCER is off" in err


# --- a live ComfyUI ---------------------------------------------------------------------------------------------

class _ObjectInfo(BaseHTTPRequestHandler):
    body = b"{}"
    status = 200

    def do_GET(self):  # noqa: N802 (http.server's name)
        if self.path != "/object_info":
            self.send_error(404)
            return
        self.send_response(self.status)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(self.body)))
        self.end_headers()
        self.wfile.write(self.body)

    def log_message(self, *args):
        pass


@pytest.fixture
def comfyui(info_file):
    handler = type("Handler", (_ObjectInfo,), {"body": info_file.read_bytes()})
    server = ThreadingHTTPServer(("127.0.0.1", 0), handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield server, handler
    server.shutdown()
    server.server_close()
    thread.join(timeout=5)


def test_live_server(capsys, env, comfyui):
    server, _ = comfyui
    url = f"http://127.0.0.1:{server.server_address[1]}"
    code, out, _ = run(capsys, env, "--url", url)
    assert code == 0 and f"Checked against {url}" in out
    # Without --url the default is 127.0.0.1:COMFYUI_PORT.
    code, out, _ = run(capsys, {**env, "COMFYUI_PORT": str(server.server_address[1])})
    assert code == 0 and f"Checked against {url}" in out


def test_live_server_errors(capsys, env, comfyui):
    server, handler = comfyui
    url = f"http://127.0.0.1:{server.server_address[1]}"
    handler.status = 500
    code, _, err = run(capsys, env, "--url", url)
    assert code == 2 and "answered HTTP 500" in err
    server.shutdown()
    server.server_close()
    code, _, err = run(capsys, env, "--url", url)
    assert code == 2 and "cannot reach ComfyUI" in err and "--object-info" in err


def test_real_command_line(env, info_file, tmp_path):
    """The installed entry point, as a pod user types it."""
    proc = subprocess.run([sys.executable, "-m", "supervisor", "check", "--object-info", str(info_file),
                           str(broken_copy(tmp_path)), *SIMULATED], capture_output=True, text=True, timeout=60,
                          env={**os.environ, **env}, cwd=REPO)
    assert proc.returncode == 1, proc.stderr
    assert "Wan_KSampler" in proc.stdout
    assert any(json.loads(line)["event"] == "workflows.check_failed" for line in proc.stderr.splitlines()
               if line.startswith("{"))
