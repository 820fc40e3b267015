"""The validator against ComfyUI's own answers: each recorded POST /prompt of ComfyUI 0.3.64 is validated here with the
same /object_info, and must yield the same error types on the same nodes and inputs."""

from __future__ import annotations

import copy
import json
from pathlib import Path

import pytest

from supervisor.workflows.validate import ERROR, NOTICE, errors, notices, types_match, validate

from .object_info_fixture import CORE_FILE

RESPONSES = Path(__file__).resolve().parents[1] / "data" / "workflows" / "comfyui-responses"
CORE = json.loads(CORE_FILE.read_text(encoding="utf-8"))


def recorded() -> list[Path]:
    return sorted(RESPONSES.glob("prompt_*.json"))


def comfyui_errors(response: dict) -> set[tuple[str, str, str]]:
    """(node id, error type, input) that ComfyUI reported; a prompt-level error has node id ''."""
    found: set[tuple[str, str, str]] = set()
    body = response["response"]
    error = body.get("error") or {}
    if error.get("type") in ("invalid_prompt",):
        node = error["details"].removeprefix("Node ID '#").removesuffix("'")
        found.add((node, "invalid_prompt", ""))
    if error.get("type") == "prompt_no_outputs":
        found.add(("", "prompt_no_outputs", ""))
    for node_id, entry in (body.get("node_errors") or {}).items():
        for err in entry["errors"]:
            found.add((node_id, err["type"], err.get("extra_info", {}).get("input_name", "")))
    return found


@pytest.mark.parametrize("path", recorded(), ids=lambda p: p.stem)
def test_same_errors_as_comfyui(path):
    case = json.loads(path.read_text(encoding="utf-8"))
    problems = errors(validate(case["request"]["prompt"], CORE, workflow=path.stem))
    # ComfyUI names no input for an exception; the checker does, so only node and type are compared there.
    mine = {(p.node_id, p.kind, "" if p.kind == "exception_during_validation" else p.input) for p in problems}
    theirs = comfyui_errors(case)
    if any(kind == "invalid_prompt" for _, kind, _ in theirs):
        assert theirs <= mine  # ComfyUI stops at the first bad node; the checker lists every one
    else:
        assert mine == theirs, [str(p) for p in problems]
    assert (case["http_status"] == 200 and not case["response"]["node_errors"]) == (not problems)


def test_recorded_cases_are_present():
    names = {p.stem for p in recorded()}
    assert {"prompt_ok", "prompt_error_required_input_missing", "prompt_error_value_smaller_than_min",
            "prompt_error_value_bigger_than_max", "prompt_error_invalid_input_type",
            "prompt_error_return_type_mismatch",
            "prompt_partial_ok_value_not_in_list", "prompt_error_exception_link_to_missing_node",
            "prompt_error_exception_bad_output_index", "prompt_error_no_outputs",
            "prompt_error_invalid_prompt_unknown_class_type"} <= names


# --- rules beyond the recorded cases --------------------------------------------------------------------------

def image_prompt(**width_value) -> dict:
    return {"1": {"class_type": "EmptyImage", "inputs": {"width": 64, "height": 64, "batch_size": 1, "color": 0,
                                                        **width_value}},
            "2": {"class_type": "SaveImage", "inputs": {"images": ["1", 0], "filename_prefix": "x"}}}


@pytest.mark.parametrize("value, ok", [
    (64, True), ("64", True), (64.9, True), (True, True), ("abc", False), (None, False), ([1], None), ({"a": 1}, False),
    ({"__value__": 32}, True), (0, False), (16385, False),
])
def test_int_conversion_like_python_int(value, ok):
    problems = errors(validate(image_prompt(width=value), CORE))
    if ok is None:  # a list is a link
        assert problems and problems[0].kind == "bad_linked_input"
    else:
        assert (not problems) == ok, [str(p) for p in problems]


def test_messages_say_what_and_how():
    (problem,) = errors(validate(image_prompt(width=0), CORE, workflow="w.json"))
    text = str(problem)
    assert "w.json" in text and "node 1 (EmptyImage)" in text and "'width'" in text
    assert "smaller than the minimum 1" in text and "fix:" in text
    (problem,) = errors(validate(image_prompt(width="abc"), CORE))
    assert problem.kind == "invalid_input_type" and "'abc'" in problem.message and "INT" in problem.message


def test_boolean_and_string_accept_any_value_like_comfyui():
    prompt = {"1": {"class_type": "SaveImage", "inputs": {"images": ["2", 0], "filename_prefix": 12345}},
              "2": {"class_type": "LoadImage", "inputs": {"image": "example.png"}}}
    assert not errors(validate(prompt, CORE))


def test_frontend_only_and_unknown_nodes():
    prompt = image_prompt()
    prompt["3"] = {"class_type": "PrimitiveNode", "inputs": {}}
    prompt["4"] = {"class_type": "WanVideoSampler", "inputs": {}}
    prompt["5"] = {"inputs": {}}
    problems = {p.node_id: p for p in errors(validate(prompt, CORE))}
    assert "browser editor only" in problems["3"].message and "Export (API)" in problems["3"].fix
    assert "does not exist" in problems["4"].message and "ComfyUI-WanVideoWrapper" in problems["4"].fix
    assert "class_type" in problems["5"].message


def test_link_problems():
    prompt = image_prompt()
    prompt["2"]["inputs"]["images"] = [1, 0]
    (p,) = errors(validate(prompt, CORE))
    assert p.kind == "exception_during_validation" and 'write "1"' in p.fix
    prompt["2"]["inputs"]["images"] = ["1", 0, 0]
    (p,) = errors(validate(prompt, CORE))
    assert p.kind == "bad_linked_input"
    prompt["2"]["inputs"]["images"] = ["1", -1]
    (p,) = errors(validate(prompt, CORE))
    assert "outputs: 0 IMAGE" in p.message


def test_literal_for_a_link_input():
    prompt = image_prompt()
    prompt["2"]["inputs"]["images"] = "picture.png"
    (p,) = errors(validate(prompt, CORE))
    assert p.kind == "link_expected" and "IMAGE" in p.message


def test_type_matching_rules():
    assert types_match("IMAGE", "IMAGE")
    assert types_match("*", "LATENT") and types_match("MODEL", "*")
    assert types_match("MODEL_TASK_ID,RIG_TASK_ID", "RIG_TASK_ID")
    assert not types_match("LATENT", "IMAGE")
    assert types_match(["a", "b"], ["a", "b"]) and not types_match(["a"], ["b"])
    assert types_match(["a", "b"], "COMBO")


def test_unused_nodes_are_notices_and_not_validated():
    prompt = image_prompt()
    prompt["3"] = {"class_type": "EmptyImage", "inputs": {"width": -5}}  # leads to no output
    found = validate(prompt, CORE)
    assert not errors(found)
    (note,) = notices(found)
    assert note.node_id == "3" and note.kind == "unused_node" and note.severity == NOTICE


def test_cycle_is_reported_once():
    prompt = {
        "1": {"class_type": "ImageInvert", "inputs": {"image": ["2", 0]}},
        "2": {"class_type": "ImageInvert", "inputs": {"image": ["1", 0]}},
        "3": {"class_type": "SaveImage", "inputs": {"images": ["1", 0], "filename_prefix": "x"}},
    }
    cycles = [p for p in validate(prompt, CORE) if p.kind == "dependency_cycle"]
    assert len(cycles) == 1 and cycles[0].severity == ERROR and "->" in cycles[0].message


def test_v3_combo_options():
    prompt = {"1": {"class_type": "EmptyLatentImage", "inputs": {"width": 64, "height": 64, "batch_size": 1}},
              "2": {"class_type": "LatentConcat", "inputs": {"samples1": ["1", 0], "samples2": ["1", 0], "dim": "z"}},
              "3": {"class_type": "VAEDecode", "inputs": {"samples": ["2", 0], "vae": ["4", 2]}},
              "4": {"class_type": "CheckpointLoaderSimple", "inputs": {"ckpt_name": "x.safetensors"}},
              "5": {"class_type": "SaveImage", "inputs": {"images": ["3", 0], "filename_prefix": "x"}}}
    kinds = {(p.node_id, p.kind) for p in errors(validate(prompt, CORE))}
    assert ("2", "value_not_in_list") in kinds and ("4", "value_not_in_list") in kinds
    fixed = copy.deepcopy(prompt)
    fixed["2"]["inputs"]["dim"] = "t"
    assert ("2", "value_not_in_list") not in {(p.node_id, p.kind) for p in errors(validate(fixed, CORE))}


def test_not_a_prompt():
    (p,) = validate([1, 2], CORE)
    assert p.kind == "invalid_prompt"
    (p,) = validate({}, CORE)
    assert p.kind == "prompt_no_outputs"


# --- whatever a user feeds it, the checker answers with problems, never with a traceback ------------------------

from hypothesis import given, settings as hsettings, strategies as st  # noqa: E402

_values = st.recursive(st.none() | st.booleans() | st.integers() | st.floats() | st.text(max_size=8),
                       lambda inner: st.lists(inner, max_size=3) | st.dictionaries(st.text(max_size=5), inner,
                                                                                 max_size=3), max_leaves=6)
_nodes = st.fixed_dictionaries({
    "class_type": st.sampled_from(["EmptyImage", "SaveImage", "LoadImage", "KSampler", "Nope", "PrimitiveNode"])
    | _values,
    "inputs": st.dictionaries(st.sampled_from(["width", "height", "images", "image", "seed", "model", "x"]),
                              _values | st.tuples(st.sampled_from(["1", "2", "3", 1]), st.integers(-2, 3)).map(list),
                              max_size=5)})


@hsettings(max_examples=300, deadline=None)
@given(st.dictionaries(st.sampled_from(["1", "2", "3"]), _nodes | _values, max_size=3) | _values)
def test_never_raises(prompt):
    for problem in validate(prompt, CORE):
        assert str(problem) and problem.kind and problem.severity in (ERROR, NOTICE)
