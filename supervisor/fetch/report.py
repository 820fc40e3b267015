"""What a fetch did (or, dry, would do): the report `fetch_plan` returns and the CLI prints."""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from typing import Any


@dataclass(frozen=True)
class PlannedFile:
    """A destination that needs bytes, as the dry run lists it."""

    dest: str
    source: str
    size: int | None  # bytes still to fetch for it (resumable bytes already subtracted)
    exact: bool  # size from the server (True) or the catalogue's estimate (False)
    state: str  # missing | wrong_size | unverified | stale
    features: tuple[str, ...] = ()
    note: str = ""


@dataclass
class FetchReport:
    downloaded: list[str] = field(default_factory=list)  # dests written in this run
    verified: list[str] = field(default_factory=list)  # dests already good (marker, hash, or another process)
    repaired: list[str] = field(default_factory=list)  # dests that were wrong on disk (also in downloaded/verified)
    failed: dict[str, str] = field(default_factory=dict)  # dest -> what to do
    planned: list[PlannedFile] = field(default_factory=list)  # dry run: what would be fetched
    bytes_downloaded: int = 0
    bytes_planned: int = 0
    seconds: float = 0.0
    interrupted: bool = False
    dry_run: bool = False
    offline: bool = False

    @property
    def ok(self) -> bool:
        return not self.failed and not self.interrupted

    def to_dict(self) -> dict[str, Any]:
        data = asdict(self)
        data["ok"] = self.ok
        return data


def render_dry_run(report: FetchReport) -> str:
    """The dry run's listing, for stdout."""
    lines = []
    if report.planned:
        width = max(len(p.dest) for p in report.planned)
        lines.append(f"would download {len(report.planned)} item{'s' if len(report.planned) != 1 else ''}:")
        for p in report.planned:
            size = "unknown" if p.size is None else human(p.size) + ("" if p.exact else " (est.)")
            note = f"  [{p.note}]" if p.note else ""
            lines.append(f"  {p.dest:<{width}}  {size:>16}  {p.state:<11} {p.source}{note}")
    else:
        lines.append("nothing to download")
    estimated = any(not p.exact for p in report.planned)
    lines.append(f"total: {human(report.bytes_planned)}{' (some sizes estimated)' if estimated else ''} to download;"
                 f" {len(report.verified)} already present and verified")
    for dest, message in report.failed.items():
        lines.append(f"problem: {dest}: {message}")
    return "\n".join(lines) + "\n"


def human(n: int) -> str:
    from ..plan.hardware import format_size  # the plan's units: one total reads the same in plan and fetch

    return format_size(n)
