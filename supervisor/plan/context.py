"""Everything a command starts from: settings, catalogue and hardware, loaded with all their errors at once."""

from __future__ import annotations

import os
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Mapping

from . import hardware as hw
from . import probe as hwprobe
from .. import logs
from . import memory, volume
from .catalog import Catalog
from .catalog_load import load_catalog
from .instances import Instance, instances
from ..errors import ConfigError
from .types import Plan
from .planner import make_plan
from .settings import Settings, declared_variables
from .environment import catalog_paths, load_settings


@dataclass(frozen=True)
class HardwareOptions:
    """The simulation options shared by plan, probe, fetch and run."""

    hardware_file: Path | None = None
    gpu: str | None = None
    vram: str | None = None
    gpu_count: int | None = None
    ram: str | None = None
    disk: str | None = None

    @property
    def simulated(self) -> bool:
        return bool(self.gpu or self.vram or self.ram or self.disk or self.gpu_count is not None)


@dataclass(frozen=True)
class Context:
    settings: Settings
    catalog: Catalog
    hardware: hw.Hardware
    instances: tuple[Instance, ...] = ()  # the ComfyUIs this pod runs (one, or one per GPU); see instances.py

    def plan(self, degrade: Mapping[str, int] | None = None, instance: Instance | None = None) -> Plan:
        """Plan against what is on the volume now (one stat per file, no hashing), for one instance (the first
        by default). Without `degrade`, the plan a start begins with (see `starting`)."""
        if degrade is None:
            return self.starting(instance)[0]
        return make_plan(self.settings, self.catalog, self._hardware(instance), self._present(), degrade)

    def starting(self, instance: Instance | None = None) -> tuple[Plan, str]:
        """The plan a start begins with, and its memory key: a step down remembered from an earlier run applies
        while the plan's inputs are the same (memory.py)."""
        present, hardware = self._present(), self._hardware(instance)
        base = make_plan(self.settings, self.catalog, hardware, present)
        key, file = memory.key(base), memory.path(self.settings)
        entry = memory.load(file, key)
        if entry is None:
            return base, key
        plan = make_plan(self.settings, self.catalog, hardware, present, entry["degrade"])
        return replace(plan, remembered={**entry, "file": str(file)}), key

    def all_plans(self) -> list[Plan]:
        """The starting plan of every instance, in instance order."""
        return [self.plan(instance=instance) for instance in self.instances or (None,)]

    def _hardware(self, instance: Instance | None) -> hw.Hardware:
        if instance is None:
            return self.instances[0].hardware if self.instances else self.hardware
        return instance.hardware

    def _present(self) -> frozenset[str]:
        return volume.present(self.settings.models_dir, self.catalog.files.values())


def load_context(environ: Mapping[str, str] | None = None, options: HardwareOptions = HardwareOptions(),
                 nvml: object = None) -> Context:
    """Parse the environment and catalogue (reporting every problem together), then probe or simulate hardware."""
    environ = os.environ if environ is None else environ
    # Before anything can fail and echo a value: a secret pasted into the wrong variable must not be printed.
    for variable in declared_variables():
        if variable["secret"]:
            logs.register_secret(environ.get(variable["env"]))
    catalog_error: ConfigError | None = None
    catalog = None
    try:
        catalog = load_catalog(catalog_paths(environ))
    except ConfigError as exc:
        catalog_error = exc
    try:
        # With a broken overlay, the feature variables are still checked against the shipped catalogue, so one
        # run reports the catalogue's problems and the environment's together.
        settings = load_settings(environ, catalog if catalog_error is None else _shipped_catalog())
    except ConfigError as exc:
        problems = exc.problems + (catalog_error.problems if catalog_error else [])
        raise ConfigError(problems, title="configuration error") from None
    if catalog_error:
        raise catalog_error
    assert catalog is not None
    for secret in settings.secrets():
        logs.register_secret(secret)
    hardware = resolve_hardware(settings.models_dir, options, environ, nvml)
    return Context(settings=settings, catalog=catalog, hardware=hardware,
                   instances=tuple(instances(settings, hardware)))


def _shipped_catalog() -> Catalog | None:
    try:
        return load_catalog()
    except ConfigError:
        return None


def resolve_hardware(models_dir: Path, options: HardwareOptions, environ: Mapping[str, str],
                     nvml: object = None) -> hw.Hardware:
    if options.hardware_file:
        base = hw.load(options.hardware_file)
    elif options.gpu or options.vram:
        # Simulating a GPU: do not touch NVML at all, only this machine's RAM and disk.
        ram_total, ram_available, ram_source = hwprobe.probe_ram()
        disk_path, disk_free = hwprobe.probe_disk(models_dir)
        base = hw.Hardware(gpus=(), ram_total=ram_total, ram_available=ram_available, disk_free=disk_free,
                           disk_path=str(disk_path), ram_source=ram_source, source="simulated")
    else:
        base = hwprobe.probe(models_dir, environ, nvml=nvml)
    if options.simulated:
        return hw.simulate(base, gpu=options.gpu, vram=options.vram, count=options.gpu_count, ram=options.ram,
                           disk=options.disk)
    return base
