"""A job's input: both shapes accepted, every problem reported with the field and what was expected."""

from __future__ import annotations

import base64
import json

import pytest

from supervisor.serverless import jobs
from supervisor.serverless.jobs import InputFile, JobError, parse, preset_prompt
from supervisor.workflows import load_shipped

PNG = b"\x89PNG\r\n\x1a\n" + b"\x00" * 24
MP4 = b"\x00\x00\x00\x18ftypisom\x00\x00\x02\x00isomiso2"
WORKFLOW = {"1": {"class_type": "EmptyImage", "inputs": {"width": 8}},
            "2": {"class_type": "SaveImage", "inputs": {"images": ["1", 0]}}}


def b64(data: bytes) -> str:
    return base64.b64encode(data).decode()


def problems_of(raw) -> str:
    with pytest.raises(JobError) as info:
        parse(raw)
    return str(info.value)


def test_worker_comfyui_input_with_base64_data_uri_and_url_images():
    job = parse({"workflow": WORKFLOW, "images": [
        {"name": "a.png", "image": b64(PNG)},
        {"name": "b.png", "image": "data:image/png;base64," + b64(PNG)},
        {"name": "c.png", "image": "https://example.com/c.png?sig=1"}]})
    assert job.workflow == WORKFLOW and job.preset is None
    assert [(f.field, f.name, f.data, f.url) for f in job.files] == [
        ("images[0]", "a.png", PNG, None), ("images[1]", "b.png", PNG, None),
        ("images[2]", "c.png", None, "https://example.com/c.png?sig=1")]


def test_a_workflow_sent_as_a_json_string_is_accepted():
    assert parse({"workflow": json.dumps(WORKFLOW)}).workflow == WORKFLOW


@pytest.mark.parametrize("raw, expected", [
    ({}, "`workflow` is missing"),
    ("not json", "input must be a JSON object"),
    ([1], "input must be an object"),
    ({"workflow": WORKFLOW, "preset": "fast"}, "both `workflow` and `preset`"),
    ({"workfow": WORKFLOW}, "unknown key(s) workfow"),
    ({"workflow": {"nodes": [], "links": []}}, "browser (UI) format"),
    ({"workflow": {"1": {"inputs": {}}}}, "node 1: needs a `class_type`"),
    ({"workflow": {}}, "non-empty object of nodes"),
    ({"workflow": WORKFLOW, "images": [{"name": "../x.png", "image": b64(PNG)}]}, "must be a plain file name"),
    ({"workflow": WORKFLOW, "images": [{"name": "x.png", "image": "%%%"}]}, "images[0]: not valid base64"),
    ({"workflow": WORKFLOW, "images": [{"name": "x.png", "image": b64(PNG)}, {"name": "x.png", "image": b64(PNG)}]},
     "name 'x.png' is used twice"),
    ({"workflow": WORKFLOW, "images": {"name": "x.png"}}, "images must be a list"),
])
def test_bad_workflow_inputs_are_clear_errors(raw, expected):
    assert expected in problems_of(raw)


def test_all_problems_of_a_preset_input_are_reported_together():
    message = problems_of({"preset": "fastest", "seed": -1, "steps": 2.5, "width": 500, "cfg": "high",
                           "reference_image": "", "driving_vid": "x"})
    for part in ("preset 'fastest' is not one of quality, fast, pose", "unknown key(s) driving_vid",
                 "seed: expected a whole number from 0", "steps: expected a whole number from 1 to 200",
                 "width: expected a whole number from 64 to 4096, a multiple of 16, got 500",
                 "cfg: expected a number from 0 to 30", "reference_image: expected base64 data"):
        assert part in message


def test_preset_input_becomes_the_resolved_workflow_with_the_jobs_values():
    shipped = {wf.preset: wf for wf in load_shipped()}
    job = parse({"preset": "fast", "reference_image": b64(PNG), "driving_video": b64(MP4), "prompt": "a dancer",
                 "seed": 7, "steps": 6, "width": 512, "height": 768, "frames": 33})
    assert job.preset == "steadydancer_fast" and job.variables["seed"] == 7
    names = {f.field: jobs.name_for(f, f.data) for f in job.files}
    assert names["reference_image"].startswith("reference_image-") and names["reference_image"].endswith(".png")
    assert names["driving_video"].endswith(".mp4")
    prompt = preset_prompt(job, shipped["fast"].api, names)
    by_title = {n["_meta"]["title"]: n["inputs"] for n in prompt.values()}
    assert by_title["Encode prompt"]["positive_prompt"] == "a dancer"
    assert (by_title["Sampler"]["seed"], by_title["Sampler"]["steps"]) == (7, 6)
    assert (by_title["Resize reference"]["width"], by_title["Resize reference"]["height"]) == (512, 768)
    assert by_title["Driving video"]["frame_load_cap"] == 33
    assert by_title["Reference image"]["image"] == names["reference_image"]
    assert by_title["Driving video"]["video"] == names["driving_video"]
    # The template itself is untouched.
    assert {n["_meta"]["title"]: n["inputs"] for n in shipped["fast"].api.values()}["Sampler"]["seed"] == 106060


def test_a_preset_needs_its_input_files_and_rejects_variables_it_has_no_node_for():
    shipped = {wf.preset: wf for wf in load_shipped()}
    job = parse({"preset": "pose", "driving_video": b64(MP4)})
    with pytest.raises(JobError, match="reference_image is required by preset steadydancer_pose"):
        preset_prompt(job, shipped["pose"].api, {"driving_video": "v.mp4"})
    job = parse({"preset": "pose", "prompt": "x", "reference_image": b64(PNG), "driving_video": b64(MP4)})
    with pytest.raises(JobError, match="prompt does not apply to preset steadydancer_pose"):
        preset_prompt(job, shipped["pose"].api, {"reference_image": "r.png", "driving_video": "v.mp4"})


def test_content_must_match_what_the_preset_reads():
    image = InputFile(field="reference_image", name="", kind="image")
    video = InputFile(field="driving_video", name="", kind="video")
    with pytest.raises(JobError, match="reference_image: expected a PNG, JPEG or WebP image, got a MP4 file"):
        jobs.name_for(image, MP4)
    with pytest.raises(JobError, match="driving_video: expected an MP4.*got text \\(HTML or JSON\\?\\)"):
        jobs.name_for(video, b"<html>not found</html>")
    assert jobs.name_for(video, b"GIF89a" + b"\x00" * 10).endswith(".gif")
    # Same bytes, same name: repeated jobs reuse one file in ComfyUI's input folder.
    assert jobs.name_for(image, PNG) == jobs.name_for(image, PNG) != jobs.name_for(image, PNG + b"\x01")
