"""A job's input, checked before anything is sent to ComfyUI. Two shapes:

* worker-comfyui's: `{"workflow": {API-format prompt}, "images": [{"name": "in.png", "image": "<base64>"}]}`;
  `image` may also be a data URI or an http(s) URL (fetched by the worker).
* one of the shipped workflows by name, with its variables:
  `{"preset": "fast", "reference_image": "<base64 or URL>", "driving_video": "<base64 or URL>", "prompt": "...",
  "seed": 1, ...}` (`VARIABLES` lists them; `quality`, `fast` and `pose` are the SteadyDancer presets).

Every problem is a `JobError` whose message names the field and says what was expected; all problems of an input
are reported together.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import json
import re
from dataclasses import dataclass, field
from typing import Any, Callable, Mapping

MAX_INPUT_BYTES = 512 * 1024 * 1024  # one input file, decoded or fetched
_NAME = re.compile(r"^[\w][\w .()+=-]{0,199}$")
_DATA_URI = re.compile(r"^data:([\w.+/-]*)(;[\w=.+-]+)*;base64,", re.I)


class JobError(Exception):
    """A job that cannot run or failed; the message is the job's error as the client sees it."""

    def __init__(self, message: str, details: Mapping[str, Any] | None = None):
        super().__init__(message)
        self.details = dict(details or {})


@dataclass(frozen=True)
class InputFile:
    """A file the prompt reads from ComfyUI's input folder: given inline (data) or to be fetched (url)."""

    field: str  # where it came from, for messages: "images[0]", "reference_image"
    name: str  # its name in ComfyUI's input folder ("" = derived from the content once known)
    data: bytes | None = None
    url: str | None = None
    kind: str = "any"  # any | image | video: what the content must be


@dataclass
class Job:
    workflow: dict[str, Any] | None = None  # API format
    preset: str | None = None  # a shipped workflow's name (steadydancer_fast, ...)
    variables: dict[str, Any] = field(default_factory=dict)
    files: list[InputFile] = field(default_factory=list)


# -- presets ------------------------------------------------------------------------------------------------------

PRESET_ALIASES = {"quality": "steadydancer_quality", "fast": "steadydancer_fast", "pose": "steadydancer_pose"}


@dataclass(frozen=True)
class Variable:
    title: str  # the node's _meta.title in the shipped workflows
    input: str
    parse: Callable[[Any], Any]
    help: str


def _int(low: int, high: int, multiple: int = 1) -> Callable[[Any], int]:
    def parse(value: Any) -> int:
        if isinstance(value, bool) or not isinstance(value, (int, float)) or int(value) != value:
            raise ValueError(f"expected a whole number from {low} to {high}")
        number = int(value)
        if not low <= number <= high or number % multiple:
            extra = f", a multiple of {multiple}" if multiple > 1 else ""
            raise ValueError(f"expected a whole number from {low} to {high}{extra}, got {number}")
        return number
    return parse


def _float(low: float, high: float) -> Callable[[Any], float]:
    def parse(value: Any) -> float:
        if isinstance(value, bool) or not isinstance(value, (int, float)) or not low <= value <= high:
            raise ValueError(f"expected a number from {low:g} to {high:g}")
        return float(value)
    return parse


def _text(limit: int) -> Callable[[Any], str]:
    def parse(value: Any) -> str:
        if not isinstance(value, str) or len(value) > limit:
            raise ValueError(f"expected text of at most {limit} characters")
        return value
    return parse


VARIABLES: dict[str, Variable] = {
    "prompt": Variable("Encode prompt", "positive_prompt", _text(20_000), "what the video shows"),
    "negative_prompt": Variable("Encode prompt", "negative_prompt", _text(20_000), "what it must not show"),
    "seed": Variable("Sampler", "seed", _int(0, 2**64 - 1), "sampler seed"),
    "steps": Variable("Sampler", "steps", _int(1, 200), "sampler steps"),
    "cfg": Variable("Sampler", "cfg", _float(0, 30), "guidance scale"),
    "width": Variable("Resize reference", "width", _int(64, 4096, 16), "output width"),
    "height": Variable("Resize reference", "height", _int(64, 4096, 16), "output height"),
    "frames": Variable("Driving video", "frame_load_cap", _int(1, 10_000), "frames read from the driving video"),
}
# Input files of the presets: variable -> (node title, input, kind).
FILE_VARIABLES: dict[str, tuple[str, str, str]] = {
    "reference_image": ("Reference image", "image", "image"),
    "driving_video": ("Driving video", "video", "video"),
}


# -- parsing ------------------------------------------------------------------------------------------------------


def parse(raw: Any) -> Job:
    """The job's `input` -> Job, or JobError listing every problem."""
    if isinstance(raw, str):
        try:
            raw = json.loads(raw)
        except ValueError:
            raise JobError("input must be a JSON object with `workflow` (API format) or `preset`") from None
    if not isinstance(raw, dict):
        raise JobError("input must be an object with `workflow` (API format) or `preset`")
    if "workflow" in raw and "preset" in raw:
        raise JobError("input has both `workflow` and `preset`: send one")
    problems: list[str] = []
    job = _parse_preset(raw, problems) if "preset" in raw else _parse_workflow(raw, problems)
    if problems:
        raise JobError("invalid input: " + "; ".join(problems), {"problems": problems})
    return job


def _parse_workflow(raw: dict[str, Any], problems: list[str]) -> Job:
    unknown = sorted(set(raw) - {"workflow", "images"})
    if unknown:
        problems.append(f"unknown key(s) {', '.join(unknown)}; expected `workflow` and optional `images` "
                        f"(or `preset` with {', '.join(sorted(VARIABLES) + sorted(FILE_VARIABLES))})")
    workflow = raw.get("workflow")
    if isinstance(workflow, str):
        try:
            workflow = json.loads(workflow)
        except ValueError:
            problems.append("workflow: a string that is not JSON")
            workflow = None
    if workflow is None and "workflow" not in raw:
        problems.append("`workflow` is missing: send an API-format workflow (ComfyUI: Workflow > Export (API))")
    elif workflow is not None:
        _check_workflow(workflow, problems)
    files = _parse_images(raw.get("images"), problems)
    return Job(workflow=workflow if isinstance(workflow, dict) else None, files=files)


def _check_workflow(workflow: Any, problems: list[str]) -> None:
    from ..workflows.ui import is_ui_format

    if is_ui_format(workflow):
        problems.append("workflow is in the browser (UI) format; export it with Workflow > Export (API)")
        return
    if not isinstance(workflow, dict) or not workflow:
        problems.append('workflow must be a non-empty object of nodes ({"1": {"class_type": ..., "inputs": ...}})')
        return
    for node_id, node in workflow.items():
        if not isinstance(node, dict) or not isinstance(node.get("class_type"), str):
            problems.append(f"workflow node {node_id}: needs a `class_type`")
        elif not isinstance(node.get("inputs", {}), dict):
            problems.append(f"workflow node {node_id} ({node['class_type']}): `inputs` must be an object")


def _parse_images(images: Any, problems: list[str]) -> list[InputFile]:
    if images is None:
        return []
    if not isinstance(images, list):
        problems.append("images must be a list of {\"name\": ..., \"image\": base64 or URL}")
        return []
    files: list[InputFile] = []
    seen: set[str] = set()
    for index, item in enumerate(images):
        where = f"images[{index}]"
        if not isinstance(item, dict) or not isinstance(item.get("name"), str) or "image" not in item:
            problems.append(f"{where}: expected {{\"name\": \"file.png\", \"image\": base64 or URL}}")
            continue
        name = item["name"]
        if not _NAME.match(name) or ".." in name:
            problems.append(f"{where}: name {name!r} must be a plain file name (letters, digits, . _ - and spaces)")
            continue
        if name in seen:
            problems.append(f"{where}: name {name!r} is used twice")
            continue
        seen.add(name)
        loaded = _content(item["image"], where, problems)
        if loaded is not None:
            files.append(InputFile(field=where, name=name, **loaded))
    return files


def _content(value: Any, where: str, problems: list[str]) -> dict[str, Any] | None:
    """{"data": bytes} or {"url": str}, from base64, a data URI or an http(s) URL."""
    if not isinstance(value, str) or not value.strip():
        problems.append(f"{where}: expected base64 data, a data: URI or an http(s) URL")
        return None
    text = value.strip()
    if text.startswith(("http://", "https://")):
        return {"url": text}
    text = _DATA_URI.sub("", text, count=1)
    try:
        data = base64.b64decode("".join(text.split()), validate=True)
    except (binascii.Error, ValueError):
        problems.append(f"{where}: not valid base64 (and not an http(s) URL)")
        return None
    if not data:
        problems.append(f"{where}: empty file")
        return None
    if len(data) > MAX_INPUT_BYTES:
        problems.append(f"{where}: {len(data)} bytes, more than {MAX_INPUT_BYTES} allowed")
        return None
    return {"data": data}


def _parse_preset(raw: dict[str, Any], problems: list[str]) -> Job:
    preset = raw.get("preset")
    name = PRESET_ALIASES.get(preset, preset) if isinstance(preset, str) else None
    if name not in PRESET_ALIASES.values():
        problems.append(f"preset {preset!r} is not one of {', '.join(PRESET_ALIASES)}")
    accepted = {"preset", *VARIABLES, *FILE_VARIABLES}
    unknown = sorted(set(raw) - accepted)
    if unknown:
        takes = ", ".join(sorted(accepted - {"preset"}))
        problems.append(f"unknown key(s) {', '.join(unknown)}; a preset takes {takes}")
    variables: dict[str, Any] = {}
    for key, variable in VARIABLES.items():
        if key in raw:
            try:
                variables[key] = variable.parse(raw[key])
            except ValueError as exc:
                problems.append(f"{key}: {exc}")
    files: list[InputFile] = []
    for key, (_, _, kind) in FILE_VARIABLES.items():
        if key not in raw:
            continue
        loaded = _content(raw[key], key, problems)
        if loaded is not None:
            files.append(InputFile(field=key, name="", kind=kind, **loaded))
    return Job(preset=name, variables=variables, files=files)


# -- content ------------------------------------------------------------------------------------------------------

_SIGNATURES: tuple[tuple[str, str, Callable[[bytes], bool]], ...] = (
    ("image", ".png", lambda b: b.startswith(b"\x89PNG\r\n\x1a\n")),
    ("image", ".jpg", lambda b: b.startswith(b"\xff\xd8\xff")),
    ("image", ".webp", lambda b: b[:4] == b"RIFF" and b[8:12] == b"WEBP"),
    ("gif", ".gif", lambda b: b[:6] in (b"GIF87a", b"GIF89a")),
    ("video", ".mp4", lambda b: b[4:8] == b"ftyp" and b[8:10] != b"qt"),
    ("video", ".mov", lambda b: b[4:8] == b"ftyp"),
    ("video", ".webm", lambda b: b.startswith(b"\x1a\x45\xdf\xa3")),
    ("video", ".avi", lambda b: b[:4] == b"RIFF" and b[8:12] == b"AVI "),
)
_ACCEPTS = {"image": ("image",), "video": ("video", "gif")}


def sniff(data: bytes) -> tuple[str, str] | None:
    """(kind, extension) from the first bytes, or None."""
    for kind, ext, test in _SIGNATURES:
        if test(data[:16]):
            return kind, ext
    return None


def name_for(file: InputFile, data: bytes) -> str:
    """The name in ComfyUI's input folder: the given one, or `<field>-<sha256 prefix><ext>` for a preset's file
    (the same content maps to the same name, so repeated jobs do not fill the folder). Checks the content's kind."""
    found = sniff(data)
    if file.kind != "any":
        if found is None or found[0] not in _ACCEPTS[file.kind]:
            expected = "a PNG, JPEG or WebP image" if file.kind == "image" else "an MP4, MOV, WebM, AVI or GIF video"
            raise JobError(f"{file.field}: expected {expected}, got {_describe(data)}")
    if file.name:
        return file.name
    ext = found[1] if found else ".bin"
    return f"{file.field}-{hashlib.sha256(data).hexdigest()[:16]}{ext}"


def _describe(data: bytes) -> str:
    found = sniff(data)
    if found:
        return f"a {found[1][1:].upper()} file"
    head = data[:16]
    if head.lstrip().startswith((b"<", b"{")):
        return "text (HTML or JSON?), not a media file"
    return f"unknown content starting with {head[:8].hex()}"


# -- the prompt ---------------------------------------------------------------------------------------------------


def preset_prompt(job: Job, resolved: Mapping[str, Any], names: Mapping[str, str]) -> dict[str, Any]:
    """The shipped workflow `resolved` (as the supervisor resolved it for this pod's plan) with the job's
    variables and uploaded file names (`names`: field -> name in ComfyUI's input folder) set by node title."""
    import copy

    prompt = copy.deepcopy(dict(resolved))
    titles = {(node.get("_meta") or {}).get("title"): node_id for node_id, node in prompt.items()}
    assignments: list[tuple[str, str, str, Any]] = [
        (key, VARIABLES[key].title, VARIABLES[key].input, value) for key, value in job.variables.items()]
    for key, (title, input_name, _) in FILE_VARIABLES.items():
        if key in names:
            assignments.append((key, title, input_name, names[key]))
        elif title in titles:
            raise JobError(f"{key} is required by preset {job.preset} (its node '{title}' reads it)")
    for key, title, input_name, value in assignments:
        node_id = titles.get(title)
        if node_id is None:
            raise JobError(f"{key} does not apply to preset {job.preset} (it has no node '{title}')")
        prompt[node_id]["inputs"][input_name] = value
    return prompt
