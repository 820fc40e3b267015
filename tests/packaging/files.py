"""Readers for the packaging files (Dockerfile, compose, .env.example, .dockerignore) and the code's reference.

Small, strict parsers: just enough of each format to check what the image promises, with errors that point at
the line. The configuration reference is read from the code itself (settings declarations and the catalogue).
"""

from __future__ import annotations

import json
import re
import shlex
from dataclasses import dataclass, field
from pathlib import Path

from supervisor.plan.catalog_load import load_catalog
from supervisor.plan.settings import declared_variables, variable_defaults

REPO = Path(__file__).resolve().parents[2]
DOCKERFILE = REPO / "docker" / "Dockerfile"
COMPOSE = REPO / "docker" / "docker-compose.yml"
ENV_EXAMPLE = REPO / "docker" / ".env.example"
DOCKERIGNORE = REPO / ".dockerignore"
IMAGE_WORKFLOW = REPO / ".github" / "workflows" / "image.yml"


# ---------------------------------------------------------------------------------------------------------------
# The configuration reference: what the code reads, with the text default of each variable.


def reference() -> dict[str, str]:
    """Every variable the supervisor reads -> its default text (settings, then catalogue switches and options)."""
    return variable_defaults(load_catalog())


def catalogue_variables() -> set[str]:
    names: set[str] = set()
    for feature in load_catalog().features.values():
        names.add(feature.switch)
        if feature.variant_env:
            names.add(feature.variant_env)
        if feature.dynamic:
            names.add(feature.dynamic.env)
    return names


def secret_variables() -> set[str]:
    return {v["env"] for v in declared_variables() if v["secret"]}


def variables_in_group(*groups: str) -> set[str]:
    return {v["env"] for v in declared_variables() if v["group"] in groups}


# ---------------------------------------------------------------------------------------------------------------
# Dockerfile


@dataclass
class Instruction:
    keyword: str  # upper case: FROM, RUN, ARG, ...
    args: str  # the arguments, continuation lines joined with single spaces
    line: int  # 1-based line of the keyword
    stage: str  # name (or index) of the build stage it belongs to; "" before the first FROM
    comments: list[str] = field(default_factory=list)  # the comment block right above it, without "# "

    def exec_form(self) -> list[str] | None:
        """JSON-array arguments (`["a", "b"]`), or None for the shell form."""
        text = self.args.strip()
        if not text.startswith("["):
            return None
        value = json.loads(text)
        assert isinstance(value, list) and all(isinstance(v, str) for v in value), f"line {self.line}: bad exec form"
        return value


def parse_dockerfile(text: str) -> list[Instruction]:
    instructions: list[Instruction] = []
    comments: list[str] = []
    stage = ""
    stage_count = 0
    lines = text.splitlines()
    i = 0
    while i < len(lines):
        raw = lines[i]
        stripped = raw.strip()
        if not stripped:
            comments = []
            i += 1
            continue
        if stripped.startswith("#"):
            comments.append(stripped[1:].strip())
            i += 1
            continue
        start = i
        parts = []
        while True:
            piece = lines[i].rstrip()
            continued = piece.endswith("\\")
            parts.append(piece[:-1] if continued else piece)
            i += 1
            # Inside a continued instruction, comment lines are dropped by Docker; so are blank lines.
            while continued and i < len(lines) and (not lines[i].strip() or lines[i].strip().startswith("#")):
                i += 1
            if not continued or i >= len(lines):
                break
        joined = " ".join(p.strip() for p in parts)
        keyword, _, args = joined.partition(" ")
        keyword = keyword.upper()
        if keyword == "FROM":
            words = args.split()
            stage = words[words.index("AS") + 1] if "AS" in words else str(stage_count)
            stage_count += 1
        instructions.append(Instruction(keyword, args.strip(), start + 1, stage, comments))
        comments = []
    return instructions


def dockerfile() -> list[Instruction]:
    return parse_dockerfile(DOCKERFILE.read_text())


def stages(instructions: list[Instruction]) -> dict[str, str]:
    """Stage name -> what it is built FROM."""
    found: dict[str, str] = {}
    for ins in instructions:
        if ins.keyword == "FROM":
            found[ins.stage] = ins.args.split()[0]
    return found


def args_of(instructions: list[Instruction], stage: str) -> dict[str, str | None]:
    """ARG name -> default (None when declared without one) in one stage ("" = global, before the first FROM)."""
    found: dict[str, str | None] = {}
    for ins in instructions:
        if ins.keyword == "ARG" and ins.stage == stage:
            name, eq, default = ins.args.partition("=")
            found[name.strip()] = default if eq else None
    return found


def env_of(instructions: list[Instruction], stage: str) -> dict[str, str]:
    found: dict[str, str] = {}
    for ins in instructions:
        if ins.keyword == "ENV" and ins.stage == stage:
            for word in shlex.split(ins.args):
                name, eq, value = word.partition("=")
                assert eq, f"line {ins.line}: use the ENV NAME=value form"
                found[name] = value
    return found


def lineage(instructions: list[Instruction], stage: str) -> list[str]:
    """The stage and the stages it is built on, nearest first."""
    parents = stages(instructions)
    chain = [stage]
    while parents.get(chain[-1]) in parents:
        chain.append(parents[chain[-1]])
    return chain


def effective_env(instructions: list[Instruction], stage: str) -> dict[str, str]:
    """ENV of a stage including what it inherits from the stages it is built on."""
    env: dict[str, str] = {}
    for name in reversed(lineage(instructions, stage)):
        env.update(env_of(instructions, name))
    return env


def healthcheck_options(ins: Instruction) -> tuple[dict[str, str], list[str]]:
    """`HEALTHCHECK --a=b ... CMD [...]` -> ({a: b}, command)."""
    options_text, marker, command = ins.args.partition(" CMD ")
    assert marker, f"line {ins.line}: HEALTHCHECK without CMD"
    options = dict(word[2:].split("=", 1) for word in options_text.split())
    value = json.loads(command.strip()) if command.strip().startswith("[") else None
    assert value is not None, f"line {ins.line}: use the exec form for the HEALTHCHECK command"
    return options, value


# ---------------------------------------------------------------------------------------------------------------
# Durations as Docker and Compose write them ("30s", "1m30s", "30m", "1h").

_DURATION = re.compile(r"(\d+(?:\.\d+)?)(ms|us|ns|h|m|s)")
_UNIT = {"h": 3600.0, "m": 60.0, "s": 1.0, "ms": 1e-3, "us": 1e-6, "ns": 1e-9}


def seconds(text: str | int | float) -> float:
    if isinstance(text, (int, float)):
        return float(text)
    text = text.strip()
    pieces = _DURATION.findall(text)
    if not pieces or "".join(n + u for n, u in pieces) != text:
        raise ValueError(f"not a duration: {text!r}")
    return sum(float(n) * _UNIT[u] for n, u in pieces)


# ---------------------------------------------------------------------------------------------------------------
# .env.example: `# NAME=value` lines are the listing; anything else that looks like an assignment is reported.

_COMMENTED = re.compile(r"^#\s?([A-Z][A-Z0-9_]*)=(.*)$")
_ACTIVE = re.compile(r"^\s*(?:export\s+)?([A-Za-z_][A-Za-z0-9_]*)\s*=")


@dataclass
class EnvListing:
    entries: dict[str, str]  # name -> value shown
    duplicates: list[str]
    active: list[str]  # uncommented assignments (line numbers and names)


def parse_env_example(text: str) -> EnvListing:
    entries: dict[str, str] = {}
    duplicates: list[str] = []
    active: list[str] = []
    for number, line in enumerate(text.splitlines(), 1):
        match = _COMMENTED.match(line.rstrip())
        if match:
            name, value = match.groups()
            if name in entries:
                duplicates.append(name)
            entries[name] = value
            continue
        if not line.lstrip().startswith("#"):
            assignment = _ACTIVE.match(line)
            if assignment:
                active.append(f"line {number}: {assignment.group(1)}")
    return EnvListing(entries, duplicates, active)


def env_example_problems(listing: EnvListing, expected: dict[str, str]) -> list[str]:
    """Differences between a .env.example listing and the expected name -> default map, as readable lines."""
    problems = [f"{name} is listed twice" for name in listing.duplicates]
    problems += [f"{where} is set (uncommented); list it as `# NAME=default`" for where in listing.active]
    for name in sorted(set(expected) - set(listing.entries)):
        problems.append(f"{name} is missing: add `# {name}={expected[name]}` with a line saying what it does")
    for name in sorted(set(listing.entries) - set(expected)):
        problems.append(f"{name} is not read by the supervisor (typo, or a variable that was removed)")
    for name in sorted(set(expected) & set(listing.entries)):
        if listing.entries[name] != expected[name]:
            problems.append(f"{name}: shows {listing.entries[name]!r}, the default is {expected[name]!r}")
    return problems


# ---------------------------------------------------------------------------------------------------------------
# compose environment: a list of NAME[=value] or a mapping.


def compose_environment(service: dict) -> dict[str, str | None]:
    env = service.get("environment") or {}
    if isinstance(env, list):
        result: dict[str, str | None] = {}
        for item in env:
            name, eq, value = str(item).partition("=")
            result[name] = value if eq else None
        return result
    return {str(k): (None if v is None else str(v)) for k, v in env.items()}


def compose_problems(service: dict, known: dict[str, str], secrets: set[str]) -> list[str]:
    """Variables a compose service sets that the code does not read, secrets written into the file, host paths."""
    problems = []
    for name, value in compose_environment(service).items():
        if name not in known:
            problems.append(f"environment: {name} is not read by the supervisor")
        elif name in secrets and value not in (None, "") and not value.startswith("${"):
            problems.append(f"environment: {name} holds a literal secret; put it in .env")
        elif value == known[name]:
            problems.append(f"environment: {name}={value} repeats the code's default; drop it")
    for volume in service.get("volumes") or []:
        source = volume.get("source", "") if isinstance(volume, dict) else str(volume).split(":", 1)[0]
        if source.startswith(("/", ".", "~")):
            problems.append(f"volumes: {source} is a host path; use a named volume")
    return problems


# ---------------------------------------------------------------------------------------------------------------
# .dockerignore (Docker's rules: patterns in order, the last matching one wins, `!` re-includes; a pattern that
# matches a directory covers everything under it).


def dockerignore_rules(text: str) -> list[tuple[bool, str]]:
    rules = []
    for line in text.splitlines():
        line = line.strip()
        if not line or line.startswith("#"):
            continue
        include = line.startswith("!")
        pattern = line[1:] if include else line
        rules.append((include, pattern.strip().strip("/")))
    return rules


def _pattern_matches(pattern: str, path: str) -> bool:
    regex = ""
    i = 0
    while i < len(pattern):
        if pattern.startswith("**/", i):
            regex += "(?:.*/)?"
            i += 3
        elif pattern.startswith("**", i):
            regex += ".*"
            i += 2
        elif pattern[i] == "*":
            regex += "[^/]*"
            i += 1
        elif pattern[i] == "?":
            regex += "[^/]"
            i += 1
        else:
            regex += re.escape(pattern[i])
            i += 1
    parts = path.split("/")
    # A pattern matching any leading part of the path matches the path (a directory covers its contents).
    return any(re.fullmatch(regex, "/".join(parts[:n])) for n in range(1, len(parts) + 1))


def dockerignore_excludes(rules: list[tuple[bool, str]], path: str) -> bool:
    excluded = False
    for include, pattern in rules:
        if _pattern_matches(pattern, path):
            excluded = not include
    return excluded

