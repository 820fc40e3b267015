"""Environment + catalogue + hardware -> Plan. `settings` parses the environment, `catalog` the model catalogue,
`hardware` probes (or simulates) the machine, `volume` says what is already downloaded, `planner` decides (a pure
function), `types` holds the plan's data, `report` prints it, `context` loads all of it together."""

from .catalog import Catalog, load_catalog
from .context import Context, HardwareOptions, load_context
from .hardware import Gpu, Hardware
from .planner import make_plan
from .report import log_plan, render
from .settings import Settings, load_settings
from .types import Download, ModelChoice, Plan

__all__ = ["Catalog", "Context", "Download", "Gpu", "Hardware", "HardwareOptions", "ModelChoice", "Plan",
           "Settings", "load_catalog", "load_context", "load_settings", "log_plan", "make_plan", "render"]
