"""The stand-in ComfyUI's files: uploads (POST /upload/image), outputs of a finished prompt (in /history and under
the output folder), GET /view, and node validation (mode `validate`). Shapes follow ComfyUI 0.3.64 (server.py
image_upload / view_image, execution.validate_inputs; see tests/data/workflows/comfyui-responses/).

Folders, like ComfyUI's: `--input-directory`, `--output-directory`, `--temp-directory`/temp, else under
`--base-directory` (or the working directory). Output files are written only when `--output-directory` is given
(the supervisor always gives it), so a stand-in started by hand writes nothing.

Output nodes: SaveImage (`images`, type output), PreviewImage (`images`, type temp), VHS_VideoCombine (`gifs`, an
.mp4, type output when save_output is true), and any other class marked `output_node` (no files). A SaveImage fed
straight by a LoadImage saves the loaded file's bytes (so a test can see its upload come back); otherwise it saves
a 1x1 PNG whose text chunk names the prompt.
"""

from __future__ import annotations

import email.parser
import email.policy
import os
import struct
import urllib.parse
import zlib
from dataclasses import dataclass
from pathlib import Path
from typing import Any

FILE_INPUTS = {"LoadImage": ("image", "Invalid image file"), "VHS_LoadVideo": ("video", "Invalid video file")}


@dataclass(frozen=True)
class Dirs:
    input: Path
    output: Path
    temp: Path
    write_outputs: bool

    @classmethod
    def from_args(cls, args: Any) -> "Dirs":
        base = Path(args.base_directory or os.getcwd())
        temp = Path(args.temp_directory) / "temp" if args.temp_directory else base / "temp"
        return cls(input=Path(args.input_directory or base / "input"),
                   output=Path(args.output_directory or base / "output"), temp=temp,
                   write_outputs=bool(args.output_directory))

    def by_type(self, kind: str) -> Path | None:
        return {"input": self.input, "output": self.output, "temp": self.temp}.get(kind)


def is_output_node(class_type: str, object_info: dict[str, Any]) -> bool:
    return class_type in ("SaveImage", "PreviewImage") or bool(object_info.get(class_type, {}).get("output_node"))


# -- validation ---------------------------------------------------------------------------------------------------


def _error(kind: str, message: str, details: str, name: str, **extra: Any) -> dict[str, Any]:
    return {"type": kind, "message": message, "details": details, "extra_info": {"input_name": name, **extra}}


def _node_errors(node: dict[str, Any], spec: dict[str, Any], dirs: Dirs) -> list[dict[str, Any]]:
    errors = []
    inputs = node.get("inputs", {})
    for name, config in (spec.get("input", {}).get("required") or {}).items():
        if name not in inputs:
            errors.append(_error("required_input_missing", "Required input is missing", name, name))
            continue
        value = inputs[name]
        if isinstance(value, list) or not isinstance(config, list) or not config:
            continue  # a link, or a combo/any type
        kind, options = config[0], (config[1] if len(config) > 1 and isinstance(config[1], dict) else {})
        if kind in ("INT", "FLOAT") and isinstance(value, (int, float)) and not isinstance(value, bool):
            if "min" in options and value < options["min"]:
                errors.append(_error("value_smaller_than_min", f"Value {value} smaller than min of {options['min']}",
                                     name, name, input_config=config, received_value=value))
            elif "max" in options and value > options["max"]:
                errors.append(_error("value_bigger_than_max", f"Value {value} bigger than max of {options['max']}",
                                     name, name, input_config=config, received_value=value))
    file_input = FILE_INPUTS.get(node.get("class_type", ""))
    if file_input:
        name, text = file_input
        value = inputs.get(name)
        if isinstance(value, str) and not (dirs.input / value).is_file():
            errors.append({"type": "custom_validation_failed", "message": "Custom validation failed for node",
                           "details": f"{name} - {text}: {value}", "extra_info": {}})
    return errors


def validate(prompt: dict[str, Any], object_info: dict[str, Any], dirs: Dirs) -> dict[str, Any]:
    """ComfyUI's node_errors for this prompt ({} when valid); every failing node is listed."""
    outputs = [k for k, v in prompt.items() if is_output_node(v.get("class_type", ""), object_info)]
    found: dict[str, Any] = {}
    for node_id, node in prompt.items():
        errors = _node_errors(node, object_info.get(node["class_type"], {}), dirs)
        if errors:
            found[node_id] = {"errors": errors, "dependent_outputs": outputs, "class_type": node["class_type"]}
    return found


# -- outputs ------------------------------------------------------------------------------------------------------


def png(text: str) -> bytes:
    """A valid 1x1 PNG with a tEXt chunk."""
    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data) & 0xFFFFFFFF)

    header = struct.pack(">IIBBBBB", 1, 1, 8, 2, 0, 0, 0)
    return (b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", header) + chunk(b"tEXt", b"prompt\x00" + text.encode())
            + chunk(b"IDAT", zlib.compress(b"\x00\xff\x80\x00")) + chunk(b"IEND", b""))


def _next_name(folder: Path, prefix: str, suffix: str, vhs: bool) -> str:
    counter = 1
    while True:
        name = f"{prefix}_{counter:05d}{'' if vhs else '_'}{suffix}"
        if not (folder / name).exists():
            return name
        counter += 1


def write_outputs(prompt: dict[str, Any], prompt_id: str, dirs: Dirs,
                  object_info: dict[str, Any]) -> dict[str, Any]:
    """Write the files of the output nodes and return /history's `outputs`."""
    if not dirs.write_outputs:
        return {}
    outputs: dict[str, Any] = {}
    for node_id, node in prompt.items():
        kind, inputs = node.get("class_type"), node.get("inputs", {})
        if kind in ("SaveImage", "PreviewImage"):
            key, kind_dir, suffix = "images", ("output" if kind == "SaveImage" else "temp"), ".png"
        elif kind == "VHS_VideoCombine":
            key, kind_dir, suffix = "gifs", ("output" if inputs.get("save_output", True) else "temp"), ".mp4"
        else:
            continue
        data = png(f"{prompt_id} node {node_id}")
        source = inputs.get("images")
        if isinstance(source, list) and prompt.get(str(source[0]), {}).get("class_type") == "LoadImage":
            loaded = dirs.input / str(prompt[str(source[0])]["inputs"].get("image", ""))
            if loaded.is_file():
                data = loaded.read_bytes()
        if suffix == ".mp4":
            data = b"\x00\x00\x00\x18ftypisom\x00\x00\x02\x00isomiso2" + f"stand-in video {prompt_id}".encode()
        prefix = str(inputs.get("filename_prefix") or "ComfyUI")
        subfolder, _, stem = prefix.rpartition("/")
        folder = dirs.by_type(kind_dir) / subfolder  # type: ignore[operator]
        folder.mkdir(parents=True, exist_ok=True)
        name = _next_name(folder, stem, suffix, vhs=suffix == ".mp4")
        (folder / name).write_bytes(data)
        outputs[node_id] = {key: [{"filename": name, "subfolder": subfolder, "type": kind_dir}]}
    return outputs


# -- HTTP: upload and view ----------------------------------------------------------------------------------------


def upload(content_type: str, body: bytes, dirs: Dirs) -> tuple[int, dict[str, Any] | None]:
    """POST /upload/image: multipart `image` (file), `overwrite`, `type`, `subfolder`."""
    message = email.parser.BytesParser(policy=email.policy.HTTP).parsebytes(
        f"Content-Type: {content_type}\r\n\r\n".encode() + body)
    fields: dict[str, Any] = {}
    for part in message.iter_parts():
        name = part.get_param("name", header="content-disposition")
        if part.get_filename() is not None:
            fields[name] = (part.get_filename(), part.get_payload(decode=True))
        else:
            fields[name] = part.get_content().strip()
    if "image" not in fields or not isinstance(fields["image"], tuple) or not fields["image"][0]:
        return 400, None
    filename, data = fields["image"]
    kind = fields.get("type") or "input"
    folder = dirs.by_type(kind) or dirs.input
    subfolder = fields.get("subfolder", "")
    target_dir = (folder / os.path.normpath(subfolder)).resolve() if subfolder else folder.resolve()
    path = (target_dir / filename).resolve()
    if os.path.commonpath((str(folder.resolve()), str(path))) != str(folder.resolve()):
        return 400, None
    if fields.get("overwrite") not in ("true", "1"):
        stem, suffix = os.path.splitext(filename)
        counter = 1
        while path.exists() and path.read_bytes() != data:
            filename = f"{stem} ({counter}){suffix}"
            path = target_dir / filename
            counter += 1
    target_dir.mkdir(parents=True, exist_ok=True)
    path.write_bytes(data)
    return 200, {"name": filename, "subfolder": subfolder, "type": kind}


def view(query: str, dirs: Dirs) -> tuple[int, bytes]:
    """GET /view?filename=&subfolder=&type=: the file's bytes, 400/403/404 like ComfyUI."""
    params = dict(urllib.parse.parse_qsl(query))
    filename = params.get("filename", "")
    if not filename or filename[0] == "/" or ".." in filename:
        return 400, b""
    folder = dirs.by_type(params.get("type", "output"))
    if folder is None:
        return 400, b""
    if params.get("subfolder"):
        full = (folder / params["subfolder"]).resolve()
        if os.path.commonpath((str(full), str(folder.resolve()))) != str(folder.resolve()):
            return 403, b""
        folder = full
    path = folder / os.path.basename(filename)
    return (200, path.read_bytes()) if path.is_file() else (404, b"")
