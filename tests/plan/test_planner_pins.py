"""Planner rules a sabotage could move without changing README's tier table (that table is pinned row by row
against the planner and the GPU measurements in tests/plan/test_readme.py): the 40 % swap rule's boundary and the
GPU index given to `--cuda-device`."""

import pytest

from supervisor.plan import hardware as hw
from supervisor.plan import probe as hwprobe
from supervisor.plan.catalog_load import load_catalog
from supervisor.plan.planner import make_plan
from supervisor.plan.environment import load_settings

GIB = 2**30
CATALOG = load_catalog()


@pytest.mark.parametrize("vram, variant, blocks", [
    ("28200MiB", "bf16", 16),  # exactly 40 % of the 40 blocks swapped: still the best quality that is allowed
    ("28150MiB", "fp8", 0),    # bf16 would swap 17 (42.5 %): the next variant, resident
])
def test_the_40_percent_swap_rule_is_inclusive(vram, variant, blocks):
    base = hw.Hardware(gpus=(), ram_total=128 * GIB, ram_available=128 * GIB, disk_free=2000 * 10**9,
                       disk_path="/workspace")
    plan = make_plan(load_settings({}, CATALOG), CATALOG, hw.simulate(base, vram=vram, ram="128GiB"))
    sd = plan.model("steadydancer")
    assert (sd.variant, sd.knobs.blocks_to_swap) == (variant, blocks), sd.reason


def test_cuda_device_is_the_containers_index_because_comfyui_replaces_cuda_visible_devices():
    # ComfyUI's main.py sets CUDA_VISIBLE_DEVICES=<--cuda-device> itself, replacing the container's list: the value
    # must name the GPU in the container's own numbering (NVML's), not its position in CUDA_VISIBLE_DEVICES.
    def card(index, name, total):
        return hw.Gpu(index=index, name=name, uuid=f"GPU-{index}", total=total, free=total, reserved=419_430_400,
                      compute_capability=(9, 0), pci_bus_id=f"0000:0{index}:00.0")

    host = [card(0, "RTX 4090", 25_757_220_864), card(1, "RTX 4090", 25_757_220_864),
            card(2, "H100", 85_520_809_984), card(3, "RTX 4090", 25_757_220_864)]
    visible = hwprobe.apply_visibility(host, {"CUDA_VISIBLE_DEVICES": "3,2"}, [])
    machine = hw.Hardware(gpus=tuple(visible), ram_total=128 * GIB, ram_available=128 * GIB,
                          disk_free=2000 * 10**9, disk_path="/workspace")
    plan = make_plan(load_settings({}, CATALOG), CATALOG, machine)
    assert (plan.gpu.name, plan.gpu.index, plan.gpu.cuda_index) == ("H100", 2, 1)
    args = list(plan.comfyui_args)
    assert args[args.index("--cuda-device") + 1] == "2"
