"""What can go wrong while fetching, sorted by what to do about it.

- `Transient`: retry with backoff (connection errors, resets, clean closes, stalls, 408, 429, 5xx). `Expired` is a
  transient error that also needs a fresh download URL (a CDN 403 on a signed URL).
- `Permanent`: retrying cannot help (gated, missing, pinned sha256 differs, ...): the file fails with this message.
- `DiskFull`: every download stops; partials are kept for the next start.
- `FetchError`: what `fetch_plan` raises for a failure the user must act on; carries Problems and the report.

No message here ever contains a token: URLs we log carry no credentials (tokens travel in headers only), and
exception texts are passed through `logs.scrub` before they are shown.
"""

from __future__ import annotations

import errno
from typing import TYPE_CHECKING

from ..errors import Problem, SupervisorError
from ..logs import scrub

if TYPE_CHECKING:
    from .report import FetchReport


class FetchFailure(Exception):
    """Base of the errors one file's download can end with."""

    def __init__(self, message: str, cause: str = ""):
        super().__init__(scrub(message))
        self.cause = cause or type(self).__name__.lower()


class Transient(FetchFailure):
    """Worth another try after a pause; `retry_after` is the server's wish (Retry-After), in seconds."""

    def __init__(self, message: str, cause: str, retry_after: float | None = None):
        super().__init__(message, cause)
        self.retry_after = retry_after


class Expired(Transient):
    """The signed download URL is no longer accepted: resolve the file again before retrying."""


class SourceChanged(Transient):
    """What the server sends does not match what was resolved (size, version): resolve again."""


class Permanent(FetchFailure):
    """Retrying will not help; `access` marks problems the user fixes with a token or a licence."""

    def __init__(self, message: str, cause: str = "", *, access: bool = False, fix: str = ""):
        super().__init__(message, cause)
        self.access = access
        self.fix = fix


class Unreachable(FetchFailure):
    """The Hub never answered (connection refused, DNS, timeouts) for `Tuning.unreachable_after` seconds: every file
    that still needs it fails at once with one message, instead of each retrying for minutes."""

    def __init__(self, message: str):
        super().__init__(message, "unreachable")


class Corrupt(FetchFailure):
    """The finished bytes do not hash to the expected sha256 (or have the wrong size)."""


class DiskFull(FetchFailure):
    """ENOSPC (or EDQUOT) while writing."""

    def __init__(self, message: str, path: str = ""):
        super().__init__(message, "disk_full")
        self.path = path


class Interrupted(FetchFailure):
    """`stop` was set: leave promptly, keeping the partial for the next start."""


class Deadline(FetchFailure):
    """DOWNLOAD_TIMEOUT ran out for this file."""


class LockLost(FetchFailure):
    """Another process took this file's lock (ours looked stale to it): stop writing."""


def is_disk_full(exc: BaseException) -> bool:
    return isinstance(exc, OSError) and exc.errno in (errno.ENOSPC, errno.EDQUOT)


class FetchError(SupervisorError):
    """Fetching cannot finish without the user's help. Exit code 1, or 2 when every problem is one of access or
    configuration (gated or missing repo/file, bad token, pinned sha256 differs: fixed in the environment or
    catalogue, not by trying again)."""

    def __init__(self, problems: list[Problem], title: str, *, report: "FetchReport | None" = None,
                 config: bool = False):
        self.problems = problems
        self.title = title
        self.report = report
        self.exit_code = 2 if config else 1
        super().__init__(self.render())

    def render(self) -> str:
        lines = [f"{self.title} ({len(self.problems)} problem{'s' if len(self.problems) != 1 else ''}):"]
        lines += [f"  - {p}" for p in self.problems]
        return scrub("\n".join(lines))
