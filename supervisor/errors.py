"""Errors a user can act on. `cli` turns them into exit codes; nothing else prints them."""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class Problem:
    """One thing that is wrong: where it is, what is wrong, how to fix it."""

    where: str
    what: str
    fix: str = ""

    def __str__(self) -> str:
        text = f"{self.where}: {self.what}"
        return f"{text} ({self.fix})" if self.fix else text


class SupervisorError(Exception):
    """Base class; `exit_code` is what the CLI exits with."""

    exit_code = 1


class ConfigError(SupervisorError):
    """Bad environment, catalogue or arguments. Carries every problem found, not only the first."""

    exit_code = 2

    def __init__(self, problems: list[Problem] | Problem, title: str = "configuration error"):
        self.problems = [problems] if isinstance(problems, Problem) else list(problems)
        self.title = title
        super().__init__(self.render())

    def render(self) -> str:
        lines = [f"{self.title} ({len(self.problems)} problem{'s' if len(self.problems) != 1 else ''}):"]
        lines += [f"  - {p}" for p in self.problems]
        return "\n".join(lines)


class PlanError(SupervisorError):
    """The configuration is valid but cannot run on this hardware."""

    exit_code = 3

    def __init__(self, problems: list[Problem]):
        self.problems = problems
        super().__init__("plan cannot run:\n" + "\n".join(f"  - {p}" for p in problems))
