"""`supervisor plan` as text: within a terminal's width, long reasons on their own indented lines."""

import pytest

from supervisor.plan.report import render

from .test_planner import GIB, machine, plan_for, recorded


PLANS = {
    "h100": lambda: plan_for(recorded("h100-x1.json")),
    "rtx 3060": lambda: plan_for(machine("RTX 3060")),
    "cannot run": lambda: plan_for(machine("RTX 4090", ram=8 * GIB, disk=5 * 10**9)),
    "many features": lambda: plan_for(machine("RTX 4090"), WAN_720P="true", ENABLE_VACE="true",
                                      ENABLE_CONTROLNET="true", ENABLE_QWEN_EDIT="true", STEADYDANCER_VARIANT="fp16"),
}


@pytest.mark.parametrize("width", [60, 80, 100, 160])
@pytest.mark.parametrize("name", sorted(PLANS))
def test_every_line_fits_the_terminal(name, width):
    text = render(PLANS[name](), width=width)
    too_long = [line for line in text.splitlines() if len(line) > width]
    assert not too_long, too_long


def test_the_reason_and_the_source_have_their_own_indented_lines():
    plan = PLANS["rtx 3060"]()
    lines = render(plan, width=100).splitlines()
    row = next(i for i, line in enumerate(lines) if line.startswith("steadydancer  gguf:Q4_K_M"))
    reason = []
    for line in lines[row + 1:]:
        if not line.startswith("    "):
            break
        reason.append(line.strip())
    assert " ".join(reason) == plan.model("steadydancer").reason
    assert "    from Kijai/WanVideo_comfy/umt5-xxl-enc-bf16.safetensors (for steadydancer)" in lines
