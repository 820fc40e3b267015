"""The shipped SteadyDancer workflows: resolved against the plan and the environment, written where ComfyUI's
browser lists user workflows (checking them is check.py's job).

The files in `workflows/` are API-format templates (what POST /prompt takes) with default values. Resolution sets
inputs by node title (`_meta.title`) from one explicit table, `BINDINGS`: model file names of the planned variant,
precision, quantization, attention, block swap, devices, VAE tiling, and the workflow variables (seed, cfg, steps,
pose drawing). Two plan facts change wiring rather than values: no block swap (the block-swap node is removed,
`WanVideoSetBlockSwap` then passes the model through, which is what the wrapper accepts) and a LoRA that is merged
into full-precision weights (it goes to the loader's `lora` input, since `WanVideoSetLoRAs` refuses merged LoRAs).
"""

from __future__ import annotations

import copy
import hashlib
import json
import os
from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import Any, Callable, Mapping

from .. import logs
from ..plan.types import SKIPPED, Plan, WanKnobs
from ..plan.settings import Settings
from .ui import UiFormatError, api_to_ui

FEATURE = "steadydancer"
SHIPPED: tuple[tuple[str, str], ...] = (
    ("steadydancer_quality", "quality"),  # the original SteadyDancer settings where the wrapper has an input
    ("steadydancer_fast", "fast"),  # lightx2v LoRA, 4 steps, cfg 1.0
    ("steadydancer_pose", "pose"),  # pose extraction from the driving video only
)
NODE_DEFS = "node_defs.json"
# The input files the shipped workflows name; the user uploads their own (or copies files under these names).
DEFAULT_INPUTS = ("steadydancer_reference.png", "steadydancer_driving.mp4")
STATE_FILE = Path(".supervisor") / "workflows.json"  # under COMFYUI_DATA_DIR: what was last written, by hash



def _log() -> Any:
    return logs.get_logger("workflows")  # looked up per call: structlog is configured after import


def workflows_dir() -> Path:
    """The shipped workflows: `workflows/` beside the package in a checkout, `supervisor/workflow_files` installed."""
    package = Path(__file__).resolve().parent.parent  # supervisor/
    for candidate in (package.parent / "workflows", package / "workflow_files"):
        if (candidate / f"{SHIPPED[0][0]}.json").is_file():
            return candidate
    raise FileNotFoundError(f"workflows/{SHIPPED[0][0]}.json not found beside {package}; the installation is incomplete")


@dataclass(frozen=True)
class Shipped:
    name: str
    preset: str
    path: Path
    api: dict[str, Any]


def load_shipped() -> list[Shipped]:
    base = workflows_dir()
    out = []
    for name, preset in SHIPPED:
        path = base / f"{name}.json"
        out.append(Shipped(name, preset, path, json.loads(path.read_text(encoding="utf-8"))))
    return out


def load_node_defs() -> dict[str, Any]:
    """The node definitions (an /object_info subset) the UI copies are built from, pinned with the node packs."""
    return json.loads((workflows_dir() / NODE_DEFS).read_text(encoding="utf-8"))


def ui_copy(api: Mapping[str, Any], name: str, node_defs: Mapping[str, Any] | None = None) -> dict[str, Any]:
    return api_to_ui(api, node_defs if node_defs is not None else load_node_defs(), name)


# ---------------------------------------------------------------------------------------------------------------
# Resolution


@dataclass(frozen=True)
class Inputs:
    """What a binding reads: the plan's knobs, the settings, and which preset the workflow is."""

    knobs: WanKnobs
    settings: Settings
    preset: str


@dataclass(frozen=True)
class Binding:
    title: str  # the node's _meta.title in the templates
    input: str
    source: str  # where the value comes from, for logs and the README
    value: Callable[[Inputs], Any]
    presets: tuple[str, ...] = ()  # empty: every workflow that has the node


def _stick(enabled: bool) -> int:
    return -1 if enabled else 0  # DrawViTPose: -1 = automatic width, 0 = do not draw


BINDINGS: tuple[Binding, ...] = (
    Binding("Load SteadyDancer model", "model", "plan: the variant's model file", lambda i: i.knobs.files["model"]),
    Binding("Load SteadyDancer model", "base_precision", "plan: precision", lambda i: i.knobs.base_precision),
    Binding("Load SteadyDancer model", "quantization", "plan: quantization", lambda i: i.knobs.quantization),
    Binding("Load SteadyDancer model", "load_device", "plan: load device", lambda i: i.knobs.load_device),
    Binding("Load SteadyDancer model", "attention_mode", "plan: ATTENTION_MODE", lambda i: i.knobs.attention_mode),
    Binding("Block swap", "blocks_to_swap", "plan: blocks to swap", lambda i: i.knobs.blocks_to_swap),
    Binding("Block swap", "prefetch_blocks", "plan: prefetch blocks", lambda i: i.knobs.prefetch_blocks),
    Binding("Load VAE", "model_name", "plan: VAE file", lambda i: i.knobs.files["vae"]),
    Binding("Load CLIP vision", "clip_name", "plan: CLIP vision file", lambda i: i.knobs.files["clip_vision"]),
    Binding("Encode prompt", "model_name", "plan: text encoder file", lambda i: i.knobs.files["text_encoder"]),
    Binding("Encode prompt", "device", "plan: text encoder device", lambda i: i.knobs.text_encoder_device),
    Binding("Speed LoRA (lightx2v)", "lora", "plan: speed LoRA file", lambda i: i.knobs.files["lora"]),
    Binding("Speed LoRA (lightx2v)", "merge_loras", "plan: merge LoRAs", lambda i: i.knobs.merge_loras),
    Binding("Load pose models", "vitpose_model", "plan: ViTPose file", lambda i: i.knobs.files["vitpose"]),
    Binding("Load pose models", "yolo_model", "plan: YOLO file", lambda i: i.knobs.files["yolo"]),
    Binding("Load pose models", "onnx_device", "plan: ONNX device", lambda i: i.knobs.onnx_device),
    Binding("Decode video", "enable_vae_tiling", "plan: VAE tiling", lambda i: i.knobs.vae_tiling),
    Binding("Encode pose video", "enable_vae_tiling", "plan: VAE tiling", lambda i: i.knobs.vae_tiling),
    Binding("Encode reference (image to video)", "tiled_vae", "plan: VAE tiling", lambda i: i.knobs.vae_tiling),
    Binding("Sampler", "seed", "STEADYDANCER_SEED", lambda i: i.settings.steadydancer_seed),
    Binding("Sampler", "steps", "STEADYDANCER_STEPS", lambda i: i.settings.steadydancer_steps, ("quality",)),
    Binding("Sampler", "cfg", "STEADYDANCER_GUIDE_SCALE", lambda i: i.settings.steadydancer_guide_scale, ("quality",)),
    Binding("Sampler", "steps", "TURBO_STEPS", lambda i: i.settings.turbo_steps, ("fast",)),
    Binding("Sampler", "cfg", "TURBO_GUIDE_SCALE", lambda i: i.settings.turbo_guide_scale, ("fast",)),
    Binding("Draw pose", "body_stick_width", "DWPOSE_DETECT_BODY", lambda i: _stick(i.settings.dwpose_detect_body)),
    Binding("Draw pose", "hand_stick_width", "DWPOSE_DETECT_HAND", lambda i: _stick(i.settings.dwpose_detect_hand)),
    Binding("Draw pose", "draw_head", "DWPOSE_DETECT_FACE", lambda i: i.settings.dwpose_detect_face),
)

# Variables of the template that no input of this path can honour, and why (README "Workflows" says the same).
NO_EFFECT: tuple[tuple[str, str, str], ...] = (
    ("steadydancer_condition_guide", "STEADYDANCER_CONDITION_GUIDE",
     "the original's condition guidance (a third model pass against augmented negative poses) has no counterpart "
     "in ComfyUI-WanVideoWrapper"),
    ("steadydancer_end_cfg", "STEADYDANCER_END_CFG",
     "end_cond_cfg ends that condition-guidance window; the wrapper's pose end_percent would switch all pose "
     "conditioning off after that share of the steps, which is a different thing, so it stays at 1.0"),
    ("turbo_condition_guide", "TURBO_CONDITION_GUIDE", "no condition-guidance input exists in the wrapper"),
    ("turbo_end_cfg", "TURBO_END_CFG", "no condition-guidance window exists in the wrapper (see STEADYDANCER_END_CFG)"),
    ("dwpose_resolution", "DWPOSE_RESOLUTION",
     "the workflows detect poses with YOLO + ViTPose at their fixed network sizes and draw them at the generation "
     "size; there is no detection-resolution input"),
)


@dataclass
class Resolution:
    name: str
    preset: str
    api: dict[str, Any]
    values: dict[str, Any] = field(default_factory=dict)  # "title.input" -> value set
    rewired: list[str] = field(default_factory=list)


def _titles(api: Mapping[str, Any], name: str) -> dict[str, str]:
    titles: dict[str, str] = {}
    for node_id, node in api.items():
        title = (node.get("_meta") or {}).get("title")
        if title in titles:
            raise ValueError(f"{name}: title {title!r} is used by nodes {titles[title]} and {node_id}; titles bind "
                             "values, so they must be unique")
        if title:
            titles[title] = node_id
    return titles


def resolve(api: Mapping[str, Any], preset: str, knobs: WanKnobs, settings: Settings,
            name: str = "workflow") -> Resolution:
    """A copy of template `api` with the plan's and the environment's values in it."""
    out = copy.deepcopy(dict(api))
    titles = _titles(out, name)
    result = Resolution(name, preset, out)
    source = Inputs(knobs, settings, preset)
    for binding in BINDINGS:
        if binding.presets and preset not in binding.presets:
            continue
        node_id = titles.get(binding.title)
        if node_id is None:
            continue
        value = binding.value(source)
        out[node_id]["inputs"][binding.input] = value
        result.values[f"{binding.title}.{binding.input}"] = value
    swap, apply_swap = titles.get("Block swap"), titles.get("Apply block swap")
    if knobs.blocks_to_swap == 0 and swap and apply_swap:
        # WanVideoSetBlockSwap returns the model unchanged without block_swap_args; 0 blocks would still set it up.
        out[apply_swap]["inputs"].pop("block_swap_args", None)
        del out[swap]
        result.values.pop("Block swap.blocks_to_swap", None)
        result.values.pop("Block swap.prefetch_blocks", None)
        result.rewired.append("no block swap: 'Block swap' removed, 'Apply block swap' passes the model through")
    lora, apply_lora, loader = (titles.get("Speed LoRA (lightx2v)"), titles.get("Apply speed LoRA"),
                                titles.get("Load SteadyDancer model"))
    if knobs.merge_loras and lora and apply_lora and loader:
        # Full-precision weights: merge the LoRA at load time (faster steps); WanVideoSetLoRAs refuses merged LoRAs.
        out[apply_lora]["inputs"].pop("lora", None)
        out[loader]["inputs"]["lora"] = [lora, 0]
        result.rewired.append("LoRA merged into the weights: 'Speed LoRA' feeds the loader, 'Apply speed LoRA' "
                              "passes the model through")
    return result


def _defaults() -> dict[str, Any]:
    return {f.name: f.default for f in fields(Settings) if f.metadata.get("env")}


def no_effect(settings: Settings) -> tuple[list[str], list[str]]:
    """(warnings for variables the user changed that cannot act, the names of those left at their default)."""
    defaults = _defaults()
    warnings, quiet = [], []
    for attr, env, why in NO_EFFECT:
        value = getattr(settings, attr)
        if value != defaults[attr]:
            warnings.append(f"{env}={value} has no effect on the SteadyDancer workflows: {why}")
        else:
            quiet.append(env)
    if settings.turbo_guide_scale != 1.0:
        warnings.append(f"TURBO_GUIDE_SCALE={settings.turbo_guide_scale:g}: the fast workflow's lightx2v LoRA is "
                        "distilled for cfg 1.0; above 1 every step also runs the negative pass (twice the time)")
    if not settings.dwpose_detect_body:
        warnings.append("DWPOSE_DETECT_BODY=false: the pose video has no body, so SteadyDancer gets no motion to "
                        "follow")
    return warnings, quiet


def _planned(plan: Plan) -> tuple[WanKnobs | None, str]:
    choice = plan.model(FEATURE)
    if choice is None:
        return None, "ENABLE_STEADYDANCER is off"
    if choice.offload == SKIPPED or choice.knobs is None:
        return None, f"SteadyDancer is not planned on this pod: {choice.reason}"
    return choice.knobs, ""


def resolve_shipped(plan: Plan, settings: Settings) -> list[Resolution]:
    knobs, why = _planned(plan)
    if knobs is None:
        raise LookupError(why)
    return [resolve(wf.api, wf.preset, knobs, settings, wf.name) for wf in load_shipped()]


# ---------------------------------------------------------------------------------------------------------------
# Writing the resolved copies


def user_dir(settings: Settings, user_root: Path | None = None) -> Path:
    """ComfyUI's user folder for the single default user (`--user-directory COMFYUI_DATA_DIR/user`, or the
    instance's own with COMFYUI_PER_GPU)."""
    return (user_root or settings.comfyui_data_dir / "user") / "default"


def _text(data: Any) -> str:
    return json.dumps(data, indent=1, ensure_ascii=False) + "\n"


def _write(path: Path, text: str) -> str:
    """Write beside, then rename: ComfyUI never lists half a workflow. Returns the content's sha256."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    tmp.write_text(text, encoding="utf-8")
    os.replace(tmp, path)
    return hashlib.sha256(text.encode()).hexdigest()


def _sha(path: Path) -> str | None:
    try:
        return hashlib.sha256(path.read_bytes()).hexdigest()
    except OSError:
        return None


def prepare(plan: Plan, settings: Settings, user_root: Path | None = None) -> list[str]:
    """Resolve the shipped workflows and write their API and browser copies; returns warnings (never raises for a
    problem of these convenience files: ComfyUI must start anyway).

    Browser copies go to `<user>/workflows/`, the list the browser shows; API copies to `<user>/workflows_api/`
    (served at /api/userdata/workflows_api%2F<name>.json), outside that list because the browser cannot open
    API format. A copy the user edited since the supervisor wrote it is kept, with a warning."""
    knobs, why = _planned(plan)
    if knobs is None:
        _log().info("workflows.skipped", reason=why)
        return []
    warnings, quiet = no_effect(settings)
    for warning in warnings:
        _log().warning("workflows.no_effect", message=warning)
    if quiet:
        _log().info("workflows.no_effect", variables=quiet,
                    message="these variables have no input on the ComfyUI-WanVideoWrapper path (see README)")
    if settings.features.get("wan22_distill") and settings.features["wan22_distill"].enabled:
        _log().info("workflows.wan22_distill", message="ENABLE_WAN22_DISTILL downloads the Wan 2.2 image-to-video "
                    "pair; it does not speed up SteadyDancer (the fast workflow's lightx2v LoRA does)")
    try:
        defs = load_node_defs()
        resolutions = resolve_shipped(plan, settings)
    except (OSError, ValueError, LookupError) as exc:
        message = f"shipped workflows not resolved: {exc}"
        _log().error("workflows.resolve_failed", message=message)
        return warnings + [message]
    base = user_dir(settings, user_root)
    state_path = settings.comfyui_data_dir / STATE_FILE
    try:
        state = json.loads(state_path.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        state = {}
    written: list[str] = []
    for res in resolutions:
        _log().info("workflows.resolved", workflow=res.name, preset=res.preset, values=res.values, rewired=res.rewired)
        try:
            targets = ((base / "workflows_api" / f"{res.name}.json", res.api),
                       (base / "workflows" / f"{res.name}.json", api_to_ui(res.api, defs, res.name)))
        except UiFormatError as exc:
            message = f"{res.name}: browser copy not built: {exc}"
            _log().error("workflows.write_failed", message=message)
            warnings.append(message)
            targets = ((base / "workflows_api" / f"{res.name}.json", res.api),)
        for path, data in targets:
            key, text = str(path), _text(data)
            current = _sha(path)
            if current is not None and current not in (state.get(key), hashlib.sha256(text.encode()).hexdigest()):
                message = (f"{path} was changed since the supervisor wrote it; kept as it is, so this plan's values "
                           "are not in it (delete it to get a fresh copy at the next start)")
                _log().warning("workflows.kept_user_copy", path=key, message=message)
                warnings.append(message)
                continue
            try:
                state[key] = _write(path, text)
                written.append(key)
            except OSError as exc:
                message = f"cannot write {path}: {exc}"
                _log().error("workflows.write_failed", message=message)
                warnings.append(message)
    try:
        _write(state_path, _text(state))
    except OSError as exc:
        _log().warning("workflows.state_not_saved", path=str(state_path), error=str(exc))
    _log().info("workflows.written", paths=written)
    return warnings
