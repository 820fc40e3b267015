"""Builds a GET /object_info answer for tests, from two saved references (test tooling, not shipped code).

* `comfyui-core-object-info.json`: a real /object_info of ComfyUI 0.3.64 core (496 node types), copied as it is.
* `comfyui-wanvideo-nodes.json`: the static INPUT_TYPES / RETURN_TYPES of 38 node classes of ComfyUI-WanVideoWrapper
  088128b2, ComfyUI-WanAnimatePreprocess 1a35b81a, ComfyUI-KJNodes 3f200542, ComfyUI-VideoHelperSuite 4ee72c06 and
  core, converted here into the /object_info shape (input/input_order/output/output_name/...).

File lists appear in the second file as "<files:FOLDER>"; `build_object_info(files)` puts in the files a test pod has
in each folder, so a test decides which model files are present. `folder_lists` turns "these files are in these
model folders" into what ComfyUI's folder_paths would list (extension filters, the wrapper's `unet_gguf` key).

The fixture is generated at test time (it is cheap and each test wants other files present), never committed;
`python -m tests.workflows.object_info_fixture --write FILE` writes one for `supervisor check --object-info FILE`.
`--shipped` regenerates the data the product ships beside its workflows (workflows/node_defs.json and the UI copies
in workflows/ui/); a test fails while they are out of date.
"""

from __future__ import annotations

import argparse
import copy
import json
import sys
from pathlib import Path
from typing import Any, Iterable, Mapping

DATA = Path(__file__).resolve().parents[1] / "data" / "workflows"
CORE_FILE = DATA / "comfyui-core-object-info.json"
NODES_FILE = DATA / "comfyui-wanvideo-nodes.json"

# ComfyUI folder_paths.supported_pt_extensions: what the model folders list.
PT_EXTENSIONS = (".ckpt", ".pt", ".pt2", ".bin", ".pth", ".safetensors", ".pkl", ".sft")
IMAGE_EXTENSIONS = (".png", ".jpg", ".jpeg", ".webp", ".bmp", ".gif", ".tiff")
VIDEO_EXTENSIONS = (".webm", ".mp4", ".mkv", ".gif", ".mov")  # VHS load_video_nodes.video_extensions

# VHS 4ee72c06: VHSLoadFormats keys and the ffmpeg presets of video_formats/ (gifski is left out without gifski).
VHS_LOAD_FORMATS = ["None", "AnimateDiff", "Mochi", "LTXV", "Hunyuan", "Cosmos", "Wan"]
VHS_FFMPEG_FORMATS = ["video/16bit-png", "video/8bit-png", "video/ProRes", "video/av1-webm", "video/ffmpeg-gif",
                      "video/ffv1-mkv", "video/h264-mp4", "video/h265-mp4", "video/nvenc_av1-mp4",
                      "video/nvenc_h264-mp4", "video/nvenc_hevc-mp4", "video/webm"]
BIGMAX = 2**53 - 1

# The transcribed VHS entries carry types and order but not every option; these come from the same VHS source.
VHS_OPTIONS: dict[str, dict[str, dict[str, Any]]] = {
    "VHS_LoadVideo": {
        "force_rate": {"default": 0, "min": 0, "max": 60, "step": 1, "disable": 0},
        "custom_width": {"default": 0, "min": 0, "max": 8192, "disable": 0},
        "custom_height": {"default": 0, "min": 0, "max": 8192, "disable": 0},
        "frame_load_cap": {"default": 0, "min": 0, "max": BIGMAX, "step": 1, "disable": 0},
        "skip_first_frames": {"default": 0, "min": 0, "max": BIGMAX, "step": 1},
        "select_every_nth": {"default": 1, "min": 1, "max": BIGMAX, "step": 1},
        "format": {"default": "AnimateDiff"},
    },
    "VHS_VideoCombine": {
        "frame_rate": {"default": 8, "min": 1, "step": 1},
        "loop_count": {"default": 0, "min": 0, "max": 100, "step": 1},
        "filename_prefix": {"default": "AnimateDiff"},
        "pingpong": {"default": False},
        "save_output": {"default": True},
    },
}
VHS_OUTPUTS = {"VHS_LoadVideo": ["IMAGE", "frame_count", "audio", "video_info"], "VHS_VideoCombine": ["Filenames"]}
VHS_HIDDEN = {"VHS_LoadVideo": {"force_size": "STRING", "unique_id": "UNIQUE_ID"},
              "VHS_VideoCombine": {"prompt": "PROMPT", "extra_pnginfo": "EXTRA_PNGINFO", "unique_id": "UNIQUE_ID"}}
OUTPUT_NODES = {"VHS_VideoCombine"}  # OUTPUT_NODE = True in its source; none of the other converted classes has it

PACKS = {"wvw_up/": "ComfyUI-WanVideoWrapper", "kijai_ComfyUI-WanAnimatePreprocess/": "ComfyUI-WanAnimatePreprocess",
         "kijai_ComfyUI-KJNodes/": "ComfyUI-KJNodes", "vhs/": "ComfyUI-VideoHelperSuite", "comfyui/": ""}


def folder_lists(models: Mapping[str, Iterable[str]] | None = None, inputs: Iterable[str] = ()) -> dict[str, list[str]]:
    """What ComfyUI lists per folder key when `models[folder]` files sit in models/<folder>/ and `inputs` in input/.

    Model folders list files with a model extension; WanVideoWrapper adds `unet_gguf` (.gguf files of diffusion_models/
    and unet/); WanAnimatePreprocess registers `detection` without an extension filter, so it lists every file."""
    out: dict[str, list[str]] = {}
    for folder, names in (models or {}).items():
        names = list(names)
        if folder == "detection":
            out.setdefault(folder, []).extend(names)
            continue
        out.setdefault(folder, []).extend(n for n in names if n.lower().endswith(PT_EXTENSIONS))
        if folder in ("diffusion_models", "unet"):
            out.setdefault("unet_gguf", []).extend(n for n in names if n.lower().endswith(".gguf"))
    inputs = list(inputs)
    out["input"] = [n for n in inputs if n.lower().endswith(IMAGE_EXTENSIONS)]
    out["input video"] = [n for n in inputs if n.lower().endswith(VIDEO_EXTENSIONS)]
    return {folder: sorted(set(names)) for folder, names in out.items()}


def _expand(choices: list[Any], files: Mapping[str, list[str]]) -> list[Any]:
    out: list[Any] = []
    for choice in choices:
        if isinstance(choice, str) and choice.startswith("<files:"):
            out.extend(files.get(choice[len("<files:"):-1], []))
        elif choice == "<load formats, e.g. AnimateDiff, Wan, None>":
            out.extend(VHS_LOAD_FORMATS)
        elif choice == "<other ffmpeg formats>":
            out.extend(f for f in VHS_FFMPEG_FORMATS if f not in out)
        elif isinstance(choice, str) and choice.startswith("<"):
            raise ValueError(f"unknown placeholder {choice!r}: teach the fixture builder what it lists")
        else:
            out.append(choice)
    return out


def _spec(spec: Any, files: Mapping[str, list[str]], extra: Mapping[str, Any] | None = None) -> Any:
    if not isinstance(spec, list):
        return spec  # hidden inputs are plain strings
    spec = copy.deepcopy(spec)
    if spec and isinstance(spec[0], list):
        spec[0] = _expand(spec[0], files)
    if extra:
        opts = dict(spec[1]) if len(spec) > 1 and isinstance(spec[1], dict) else {}
        opts.update(extra)
        spec = [spec[0], opts]
    return spec


def _convert(name: str, raw: Mapping[str, Any], files: Mapping[str, list[str]]) -> dict[str, Any]:
    """One INPUT_TYPES/RETURN_TYPES record -> one /object_info entry (ComfyUI server.py node_info's shape)."""
    types = raw.get("INPUT_TYPES", {})
    options = VHS_OPTIONS.get(name, {})
    inputs: dict[str, dict[str, Any]] = {}
    for section in ("required", "optional"):
        if section in types:
            inputs[section] = {n: _spec(s, files, options.get(n)) for n, s in types[section].items()}
    hidden = VHS_HIDDEN.get(name, types.get("hidden"))
    if hidden:
        inputs["hidden"] = dict(hidden)
    outputs = list(raw.get("RETURN_TYPES", []))
    names = VHS_OUTPUTS.get(name) or raw.get("RETURN_NAMES") or outputs
    pack = next((p for prefix, p in PACKS.items() if raw.get("file", "").startswith(prefix)), "")
    return {
        "input": inputs,
        "input_order": {section: list(specs) for section, specs in inputs.items()},
        "output": outputs,
        "output_is_list": [False] * len(outputs),
        "output_name": list(names),
        "name": name,
        "display_name": name,
        "description": "",
        "python_module": f"custom_nodes.{pack}" if pack else "nodes",
        "category": pack or "core",
        "output_node": name in OUTPUT_NODES,
    }


def _fill_core(entry: dict[str, Any], raw: Mapping[str, Any], files: Mapping[str, list[str]]) -> None:
    """A core node in both references: keep the real entry, put the pod's files into its file inputs."""
    for section, specs in raw.get("INPUT_TYPES", {}).items():
        for name, spec in specs.items():
            if isinstance(spec, list) and spec and isinstance(spec[0], list) and any(
                    isinstance(c, str) and c.startswith("<files:") for c in spec[0]):
                real = entry["input"][section][name]
                real[0] = _expand(spec[0], files)


def build_object_info(files: Mapping[str, Iterable[str]] | None = None) -> dict[str, Any]:
    """The /object_info of a ComfyUI with the SteadyDancer node packs whose folders hold `files` (folder -> names,
    already filtered like `folder_lists` does)."""
    lists = {folder: list(names) for folder, names in (files or {}).items()}
    core = json.loads(CORE_FILE.read_text(encoding="utf-8"))
    nodes = json.loads(NODES_FILE.read_text(encoding="utf-8"))
    info = dict(core)
    for name, raw in nodes.items():
        if name in core:
            _fill_core(info[name], raw, lists)
        else:
            info[name] = _convert(name, raw, lists)
    return info


def node_defs(classes: Iterable[str]) -> dict[str, Any]:
    """The definitions the product ships for its UI converter: the used classes, with no files listed."""
    info = build_object_info()
    return {name: info[name] for name in sorted(set(classes))}


def _write_shipped() -> None:
    from supervisor.workflows import resolve as workflows

    shipped = workflows.load_shipped()
    classes = {node["class_type"] for wf in shipped for node in wf.api.values()}
    defs = node_defs(classes)
    (workflows.workflows_dir() / workflows.NODE_DEFS).write_text(json.dumps(defs, indent=1) + "\n", encoding="utf-8")
    for wf in shipped:
        ui = workflows.ui_copy(wf.api, wf.name, defs)
        path = workflows.workflows_dir() / "ui" / f"{wf.name}.json"
        path.write_text(json.dumps(ui, indent=1, ensure_ascii=False) + "\n", encoding="utf-8")
        print(f"wrote {path}")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--write", type=Path, metavar="FILE", help="write an /object_info with the catalogue's "
                        "SteadyDancer files and the default input files present")
    parser.add_argument("--shipped", action="store_true", help="regenerate workflows/node_defs.json and workflows/ui/")
    args = parser.parse_args(argv)
    if args.shipped:
        _write_shipped()
    if args.write:
        from supervisor.plan.catalog_load import load_catalog
        from supervisor.workflows import resolve as workflows

        catalog = load_catalog()
        feature = catalog.features["steadydancer"]
        keys = set(feature.files) | {k for v in feature.variants.values() for k in v.files}
        models: dict[str, list[str]] = {}
        for key in keys:
            spec = catalog.files[key]
            models.setdefault(spec.folder, []).append(spec.name)
        info = build_object_info(folder_lists(models, workflows.DEFAULT_INPUTS))
        args.write.write_text(json.dumps(info), encoding="utf-8")
        print(f"wrote {args.write}")
    if not (args.shipped or args.write):
        parser.print_help(sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
