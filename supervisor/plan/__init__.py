"""Environment + catalogue + hardware -> Plan. `settings` declares every variable and `environment` reads them,
`catalog` holds the model catalogue's types and `catalog_load` reads and checks it (`packs`: the pinned node packs,
`features`: what the features need beside each other), `hardware` describes (and simulates) a machine and `probe`
reads the real one, `volume` says what is already downloaded, `planner` decides (a pure function; `sizing` says how
much GPU memory a DiT variant needs in each phase), `instances` splits a multi-GPU pod into one ComfyUI per GPU,
`memory` remembers out-of-memory step downs, `types` holds the plan's data, `report` prints it, `context` loads all
of it together."""

from .catalog import Catalog, config_dir
from .catalog_load import load_catalog
from .context import Context, HardwareOptions, load_context
from .environment import load_settings
from .hardware import Gpu, Hardware
from .planner import make_plan
from .report import log_plan, render
from .settings import Settings
from .types import Download, ModelChoice, Plan

__all__ = ["Catalog", "Context", "Download", "Gpu", "Hardware", "HardwareOptions", "ModelChoice", "Plan",
           "Settings", "config_dir", "load_catalog", "load_context", "load_settings", "log_plan", "make_plan",
           "render"]
