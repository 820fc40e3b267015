"""Shipped workflows: resolved against a plan and written for ComfyUI's browser (resolve), converted between API
and browser format (ui), validated against ComfyUI's node definitions (validate), checked live and by
`supervisor check` (check)."""

from .check import check_command, check_live, file_describer
from .resolve import Resolution, load_shipped, prepare, resolve_shipped, workflows_dir
from .ui import UiFormatError, api_to_ui, is_ui_format, ui_to_api
from .validate import CheckProblem, errors, notices, validate

__all__ = ["CheckProblem", "Resolution", "UiFormatError", "api_to_ui", "check_command", "check_live", "errors",
           "file_describer", "is_ui_format", "load_shipped", "notices", "prepare", "resolve_shipped", "ui_to_api",
           "validate", "workflows_dir"]
