"""README's tier table, pinned row by row: variant, offload mode, blocks swapped, peak VRAM to 0.1 GiB and the
ComfyUI flags, for each card (128 GiB RAM, enough disk, as the table says). The table is read from README.md, so
the documentation and the planner cannot drift apart; any change to the sizing arithmetic (the prefetched block,
the 40 % rule, the headroom) moves a number here."""

import re
from pathlib import Path

import pytest

from supervisor.plan import hardware as hw
from supervisor.plan.catalog import load_catalog
from supervisor.plan.planner import make_plan
from supervisor.plan.settings import load_settings
from supervisor.plan.types import FULL, MODEL_OFFLOAD

GIB = 2**30
README = Path(__file__).resolve().parents[2] / "README.md"
CATALOG = load_catalog()
CARDS = {"H200": "h200", "H100 80GB HBM3": "h100", "A100 80GB": "A100 80GB", "L40S": "L40S", "A100 40GB": "A100 40GB",
         "RTX 5090": "RTX 5090", "RTX 4090": "RTX 4090", "RTX 4080": "RTX 4080", "RTX 3060": "RTX 3060",
         "RTX 3070": "RTX 3070"}


def tier_rows() -> list[tuple[str, str, str, int, float, str]]:
    """(card, variant, offload, blocks, peak GiB, flags) of each row of README's tier table."""
    text = README.read_text()
    start = text.index("| card (NVML total) | class | PRD said | plan |")
    rows = []
    for line in text[start:].splitlines()[2:]:
        if not line.startswith("|"):
            break
        cells = [c.strip().strip("*") for c in line.strip("|").split("|")]
        card = re.sub(r"\s*\(.*\)$", "", cells[0])
        plan = cells[3].replace("*", "")
        first = plan.split(",")[0].split(" + ")[0].strip()  # "bf16", "fp8", "GGUF Q4_K_M"
        variant = f"gguf:{first.split()[1]}" if first.startswith("GGUF ") else first
        offload = FULL if plan.endswith("full") else MODEL_OFFLOAD
        rows.append((card, variant, offload, int(cells[4]), float(cells[5]), cells[6].strip("`")))
    return rows


ROWS = tier_rows()


def test_the_table_has_every_card():
    assert [r[0] for r in ROWS] == list(CARDS)


@pytest.mark.parametrize("card, variant, offload, blocks, peak, flags", ROWS, ids=[r[0] for r in ROWS])
def test_each_card_plans_as_the_readme_says(card, variant, offload, blocks, peak, flags):
    base = hw.Hardware(gpus=(), ram_total=128 * GIB, ram_available=128 * GIB, disk_free=2000 * 10**9,
                       disk_path="/workspace")
    machine = hw.simulate(base, gpu=CARDS[card], ram="128GiB")
    plan = make_plan(load_settings({}, CATALOG), CATALOG, machine)
    sd = plan.model("steadydancer")
    assert plan.runnable, plan.errors
    assert (sd.variant, sd.offload, sd.knobs.blocks_to_swap) == (variant, offload, blocks), sd.reason
    (budget,) = plan.vram_budget
    assert round(budget.total_gib, 1) == peak
    vram_flags = [f for f in plan.comfyui_args if f in ("--highvram", "--lowvram")]
    assert vram_flags == ([flags] if flags else [])


@pytest.mark.parametrize("vram, variant, blocks", [
    ("26000MiB", "bf16", 16),  # exactly 40 % of the 40 blocks swapped: still the best quality that is allowed
    ("25700MiB", "fp8", 0),    # bf16 would swap 17 (42.5 %): the next variant, resident
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
    visible = hw.apply_visibility(host, {"CUDA_VISIBLE_DEVICES": "3,2"}, [])
    machine = hw.Hardware(gpus=tuple(visible), ram_total=128 * GIB, ram_available=128 * GIB,
                          disk_free=2000 * 10**9, disk_path="/workspace")
    plan = make_plan(load_settings({}, CATALOG), CATALOG, machine)
    assert (plan.gpu.name, plan.gpu.index, plan.gpu.cuda_index) == ("H100", 2, 1)
    args = list(plan.comfyui_args)
    assert args[args.index("--cuda-device") + 1] == "2"
