"""One ComfyUI per GPU (COMFYUI_PER_GPU): the instances, their ports and devices, a plan per GPU, one set of files."""

from __future__ import annotations

import json
import subprocess
import sys
from dataclasses import replace
from pathlib import Path

import pytest

from supervisor.errors import ConfigError
from supervisor.plan import hardware as hw
from supervisor.plan import probe as hwprobe
from supervisor.plan.context import HardwareOptions, load_context
from supervisor.plan.instances import pod_files

from .fake_nvml import FakeNvml

REPO = Path(__file__).resolve().parents[2]
GIB = 2**30


def context(env: dict[str, str], **options):
    return load_context({"MODELS_DIR": "/nonexistent/models", **env}, HardwareOptions(**options))


def test_one_instance_per_gpu_on_ports_that_skip_the_pods_other_services():
    ctx = context({"COMFYUI_PER_GPU": "true", "STATUS_ADDR": "127.0.0.1:8288"}, gpu="h200", gpu_count=3,
                  ram="384GiB", disk="500GB")
    names = [i.name for i in ctx.instances]
    assert names == ["comfyui-0", "comfyui-1", "comfyui-2"]
    assert [i.port for i in ctx.instances] == [8188, 8388, 8488]  # 8288 is the status endpoint's
    assert [i.cuda_visible_devices for i in ctx.instances] == ["GPU-simulated-0", "GPU-simulated-1", "GPU-simulated-2"]
    for instance in ctx.instances:  # each plans for its own GPU, seen as cuda:0, and a third of the RAM
        (gpu,) = instance.hardware.gpus
        assert gpu.cuda_index == 0 and gpu.uuid == instance.gpu.uuid
        assert instance.hardware.ram_total == 128 * GIB


def test_off_by_default_and_with_one_gpu():
    assert [i.name for i in context({}, gpu="h200", gpu_count=2).instances] == ["comfyui"]
    assert [i.name for i in context({"COMFYUI_PER_GPU": "true"}, gpu="h200").instances] == ["comfyui"]
    (only,) = context({}, gpu="h200", gpu_count=2).instances
    assert only.cuda_visible_devices is None and only.hardware.ram_total == context({}, gpu="h200").hardware.ram_total


def test_port_clashes_are_configuration_errors_before_any_launch():
    with pytest.raises(ConfigError) as err:
        context({"COMFYUI_PER_GPU": "true", "COMFYUI_PORTS": "8188,8189"}, gpu="h200", gpu_count=2)
    assert "COMFYUI_PORTS: port 8189 is also STATUS_ADDR's port" in err.value.render()
    with pytest.raises(ConfigError) as err:
        context({"COMFYUI_PER_GPU": "true", "COMFYUI_PORTS": "8188,8888"}, gpu="h200", gpu_count=2)
    assert "JUPYTER_PORT" in err.value.render()
    with pytest.raises(ConfigError) as err:
        context({"COMFYUI_PER_GPU": "true", "COMFYUI_PORTS": "8188"}, gpu="h200", gpu_count=2)
    assert "1 ports for 2 GPUs" in err.value.render()
    with pytest.raises(ConfigError) as err:
        context({"COMFYUI_PER_GPU": "true", "COMFYUI_ARGS": "--port 9000"}, gpu="h200", gpu_count=2)
    assert "COMFYUI_ARGS" in err.value.render() and "COMFYUI_PORTS" in err.value.render()
    ctx = context({"COMFYUI_PER_GPU": "true", "COMFYUI_PORTS": "9000,9100"}, gpu="h200", gpu_count=2)
    assert [i.port for i in ctx.instances] == [9000, 9100]


def mixed_host(tmp_path: Path) -> Path:
    """An 80 GB and a 24 GB card on one host, saved like `supervisor probe` output."""
    base = hw.simulate(hw.Hardware(gpus=(), ram_total=256 * GIB, ram_available=256 * GIB, disk_free=500 * 10**9,
                                   disk_path="/workspace"), gpu="A100 80GB", ram="256GiB", disk="500GB")
    small = hw.simulate(base, gpu="RTX 4090").gpus[0]
    host = replace(base, gpus=(base.gpus[0], replace(small, index=1, cuda_index=1, uuid="GPU-simulated-4090")))
    path = tmp_path / "mixed.json"
    path.write_text(json.dumps(host.to_dict()))
    return path


def test_a_mixed_host_gets_a_plan_per_gpu_and_one_set_of_files(tmp_path):
    ctx = context({"COMFYUI_PER_GPU": "true"}, hardware_file=mixed_host(tmp_path))
    big, small = ctx.all_plans()
    assert (big.models[0].variant, big.models[0].offload) == ("bf16", "full")
    assert (small.models[0].variant, small.models[0].offload) == ("fp8", "full")
    files = pod_files([big, small])
    dests = [d.dest for d in files.downloads]
    assert len(dests) == len(set(dests))  # each file once
    assert {d.dest for d in big.downloads} | {d.dest for d in small.downloads} == set(dests)
    assert big.models[0].knobs.files["model"] != small.models[0].knobs.files["model"]
    assert files.disk.need == sum(d.size for d in files.downloads if not d.present)


def test_the_union_of_files_can_be_too_big_for_the_disk_where_each_plan_fits(tmp_path):
    ctx = context({"COMFYUI_PER_GPU": "true", "DISK_RESERVE_GB": "0"}, hardware_file=mixed_host(tmp_path))
    big, small = ctx.all_plans()
    need = pod_files([big, small]).disk.need
    squeezed = context({"COMFYUI_PER_GPU": "true", "DISK_RESERVE_GB": "0"}, hardware_file=mixed_host(tmp_path),
                       disk=f"{(need - 10**6) / 1e9:.3f}GB")
    plans = squeezed.all_plans()
    union = pod_files(plans)
    assert not union.disk.fits and any("instances need" in e for e in union.errors)


def test_plan_command_shows_each_instance_and_json_lists_them(tmp_path):
    env = {"COMFYUI_PER_GPU": "true", "MODELS_DIR": str(tmp_path / "models"), "PATH": "/usr/bin:/bin"}
    text = subprocess.run([sys.executable, "-m", "supervisor", "plan", "--hardware", str(mixed_host(tmp_path))],
                          cwd=REPO, env=env, capture_output=True, text=True, timeout=60)
    assert text.returncode == 0, text.stderr
    assert "Instances: 2 ComfyUIs" in text.stdout and "== comfyui-1: NVIDIA GeForce RTX 4090, port 8288 ==" in text.stdout
    assert "bf16/full/0" in text.stdout and "fp8/full/0" in text.stdout
    out = subprocess.run([sys.executable, "-m", "supervisor", "plan", "--json", "--gpu", "h200", "--gpu-count", "2"],
                         cwd=REPO, env=env, capture_output=True, text=True, timeout=60)
    data = json.loads(out.stdout)
    assert [(i["name"], i["port"], i["cuda_visible_devices"]) for i in data["instances"]] == [
        ("comfyui-0", 8188, "GPU-simulated-0"), ("comfyui-1", 8288, "GPU-simulated-1")]
    assert data["instances"][1]["plan"]["gpu"]["name"] == "NVIDIA H200"


def test_a_recorded_two_h200_reading(tmp_path):
    probed = hwprobe.probe(tmp_path, {}, nvml=FakeNvml.from_file("h200-x2.json"))
    path = tmp_path / "h200-x2-probe.json"
    path.write_text(json.dumps(probed.to_dict()))
    ctx = context({"COMFYUI_PER_GPU": "true"}, hardware_file=path)
    assert [i.gpu.uuid for i in ctx.instances] == ["GPU-e18fae57-fdba-adf4-838d-2729966c9c46",
                                                   "GPU-d9e63e19-918d-33b4-cb59-c7d708704fbc"]
    assert [i.cuda_visible_devices for i in ctx.instances] == [i.gpu.uuid for i in ctx.instances]
    assert all(p.gpu.name == "NVIDIA H200" for p in ctx.all_plans())
