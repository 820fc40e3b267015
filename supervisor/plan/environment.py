"""Reading the environment into `Settings` (settings.py declares every variable): each value parsed and checked,
every problem reported at once, the ports two services would share, misspelt names, and the feature switches of
the catalogue with their options."""

from __future__ import annotations

import difflib
from dataclasses import fields
from pathlib import Path
from typing import TYPE_CHECKING, Any, Mapping

from ..errors import ConfigError, Problem
from .settings import FeatureSelection, Settings, declared_variables, variable_defaults
from .values import _address, _is_loopback, _one_edit, _paths, parse_bool

if TYPE_CHECKING:
    from .catalog import Catalog


def catalog_paths(environ: Mapping[str, str]) -> tuple[Path, ...]:
    """SUPERVISOR_CATALOG is needed before the catalogue can be loaded, so it is readable on its own."""
    return _paths(environ.get("SUPERVISOR_CATALOG", ""))


def read_variable(environ: Mapping[str, str], name: str) -> Any:
    """One declared variable alone (for commands that need no more), with the same rules and errors as
    load_settings."""
    (f,) = [f for f in fields(Settings) if f.metadata.get("env") == name]
    raw = environ.get(name, "")
    if not raw.strip():
        return f.default
    try:
        value = f.metadata["parser"](raw)
    except ValueError as exc:
        raise ConfigError(Problem(name, f"{raw!r} is not valid: {exc}", f"default is {f.metadata['raw_default']!r}"),
                          title="invalid environment") from None
    problems = _cross_checks({f.name: value})
    if problems:
        raise ConfigError(problems, title="invalid environment")
    return value


def load_settings(environ: Mapping[str, str], catalog: "Catalog | None" = None) -> Settings:
    """Parse the environment. Raises ConfigError listing every bad variable; warnings go into `Settings.warnings`."""
    problems: list[Problem] = []
    values: dict[str, Any] = {}
    for f in fields(Settings):
        name = f.metadata.get("env")
        if not name or not environ.get(name, "").strip():
            continue  # unset or empty (RunPod's blank template fields): the default
        raw = environ[name]
        try:
            values[f.name] = f.metadata["parser"](raw)
        except ValueError as exc:
            shown = "<hidden>" if f.metadata["secret"] else repr(raw)
            problems.append(Problem(name, f"{shown} is not valid: {exc}", f"default is {f.metadata['raw_default']!r}"))
    problems += _cross_checks(values)
    warnings: list[str] = []
    features: dict[str, FeatureSelection] = {}
    if catalog is not None:
        features, feature_problems, warnings = select_features(environ, catalog)
        problems += feature_problems
    if values.get("enable_r2_sync") and not str(values.get("r2_bucket") or ""):
        problems.append(Problem("R2_BUCKET", "ENABLE_R2_SYNC=true needs the bucket to upload the outputs to",
                                "set R2_BUCKET (and R2_ENDPOINT, R2_ACCESS_KEY_ID, R2_SECRET_ACCESS_KEY for R2), "
                                "or ENABLE_R2_SYNC=false"))
    warnings += misspelt_variables(environ, catalog)
    if problems:
        raise ConfigError(problems, title="invalid environment")
    settings_problems = _port_problems(values)
    if settings_problems:
        raise ConfigError(settings_problems, title="invalid environment")
    if values.get("status_public") and not str(values.get("status_token") or ""):
        warnings.append("STATUS_PUBLIC=true without STATUS_TOKEN: the status page, /status and /metrics are open to "
                        "anyone who reaches the port (no secret is on them, but the plan, file names and recent "
                        "warnings are); set STATUS_TOKEN (on RunPod a secret: {{ RUNPOD_SECRET_status_token }}) unless "
                        "this is a network you trust")
    if values.get("serverless"):
        off = [name for name, attr in (("PUBLIC_KEY", "public_key"), ("JUPYTER_PASSWORD", "jupyter_password"))
               if values.get(attr)]
        if off:
            warnings.append(f"SERVERLESS=true: {' and '.join(off)} ignored; a serverless worker runs no sshd or "
                            "JupyterLab (jobs come through the RunPod queue)")
    return Settings(**values, features=features, warnings=tuple(warnings))


def _cross_checks(values: Mapping[str, Any]) -> list[Problem]:
    """Rules about a parsed value that its parser alone cannot know (the file system, other variables)."""
    problems: list[Problem] = []
    host, _ = values.get("status_addr", _address("127.0.0.1:8189"))
    if not _is_loopback(host) and not values.get("status_public"):
        problems.append(Problem("STATUS_ADDR", f"{host!r} is not a loopback address: the status endpoint shows the "
                                "pod's plan, processes and downloads",
                                "keep it on 127.0.0.1 (the default; `supervisor health` and `docker exec` reach it "
                                "there), or set STATUS_PUBLIC=true (with STATUS_TOKEN) to serve it off loopback"))
    models_dir = values.get("models_dir")
    if models_dir is not None and models_dir.exists() and not models_dir.is_dir():
        problems.append(Problem("MODELS_DIR", f"{str(models_dir)!r} is not valid: it is a file, not a folder",
                                "point MODELS_DIR at a folder on the volume (it is created if missing)"))
    return problems


# Variables read outside Settings (the GPU probe reads these itself): never "misspelt".
OTHER_VARIABLES = ("CUDA_VISIBLE_DEVICES", "NVIDIA_VISIBLE_DEVICES", "CUDA_DEVICE_ORDER", "NVIDIA_DRIVER_CAPABILITIES")


def misspelt_variables(environ: Mapping[str, str], catalog: "Catalog | None") -> list[str]:
    """Warnings for variables one typo away from one the supervisor reads (STEADYDANCER_VARINT, GPU_MEMORY_MOD):
    such a value would otherwise be ignored without a word. `ENABLE_*` names are checked by select_features."""
    known = set(variable_defaults(catalog)) if catalog is not None else {v["env"] for v in declared_variables()}
    known.update(OTHER_VARIABLES)
    warnings = []
    for name in sorted(environ):
        if name in known or name.startswith("ENABLE_") or len(name) < 5:
            continue
        close = sorted(k for k in known if _one_edit(name, k))
        if close:
            warnings.append(f"unknown variable {name} is ignored; did you mean {close[0]}?")
    return warnings


def _port_problems(values: Mapping[str, Any]) -> list[Problem]:
    """Ports two services of the pod would both bind: found here, before anything is launched."""
    defaults = {f.name: f.default for f in fields(Settings)}

    def get(name: str) -> Any:
        return values.get(name, defaults[name])

    taken = {get("status_addr")[1]: "STATUS_ADDR", get("jupyter_port"): "JUPYTER_PORT"}
    if get("serverless_api_addr") is not None:
        taken[get("serverless_api_addr")[1]] = "SERVERLESS_API_ADDR"
    problems = []
    comfy = [("COMFYUI_PORTS", port) for port in get("comfyui_ports")] or [("COMFYUI_PORT", get("comfyui_port"))]
    for name, port in comfy:
        if port in taken:
            problems.append(Problem(name, f"port {port} is also {taken[port]}'s port",
                                    f"give ComfyUI another port, or move {taken[port]}"))
    if get("comfyui_per_gpu") and any(a == "--port" or a.startswith("--port=") for a in get("comfyui_args")):
        problems.append(Problem("COMFYUI_ARGS", "--port would put every ComfyUI of COMFYUI_PER_GPU on one port",
                                "remove --port; set COMFYUI_PORT (the first instance) or COMFYUI_PORTS (all)"))
    return problems


def select_features(environ: Mapping[str, str], catalog: "Catalog") -> tuple[dict[str, FeatureSelection], list[Problem], list[str]]:
    """Read each feature's switch and variant variable, validated against the catalogue."""
    problems: list[Problem] = []
    warnings: list[str] = []
    selections: dict[str, FeatureSelection] = {}
    for feature in catalog.features.values():
        enabled = feature.default_enabled
        if environ.get(feature.switch, "").strip():
            try:
                enabled = parse_bool(environ[feature.switch])
            except ValueError as exc:
                problems.append(Problem(feature.switch, f"{environ[feature.switch]!r} is not valid: {exc}"))
        variant: str | None = None
        choices: tuple[str, ...] = ()
        if feature.variant_env:
            raw = environ.get(feature.variant_env, "").strip() or feature.variant_default
            try:
                if feature.multi_choice:
                    choices = feature.parse_choices(raw)
                else:
                    variant = feature.parse_variant(raw)
            except ValueError as exc:
                problems.append(Problem(feature.variant_env, f"{raw!r} is not valid: {exc}",
                                        f"default is {feature.variant_default!r}"))
        if feature.dynamic:
            raw = environ.get(feature.dynamic.env, "")
            ids = tuple(part.strip() for part in raw.split(",") if part.strip())
            bad = [i for i in ids if not i.isdigit()]
            if bad:
                problems.append(Problem(feature.dynamic.env, f"{', '.join(bad)} not valid: expected a comma list of "
                                        "CivitAI model version ids (digits, from the download link)"))
            choices = tuple(dict.fromkeys(i for i in ids if i.isdigit()))
        selections[feature.name] = FeatureSelection(enabled=enabled, explicit=bool(environ.get(feature.switch, "").strip()),
                                                    variant=variant, choices=choices)
    known = {f.switch for f in catalog.features.values()} | {
        v["env"] for v in declared_variables() if v["env"].startswith("ENABLE_")}
    for name in sorted(environ):
        if name.startswith("ENABLE_") and name not in known:
            close = difflib.get_close_matches(name, sorted(known), n=1, cutoff=0.75)
            hint = f"; did you mean {close[0]}?" if close else ""
            warnings.append(f"unknown switch {name} is ignored{hint}")
    return selections, problems, warnings
