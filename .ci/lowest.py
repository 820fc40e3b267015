"""Print the lowest version allowed of each runtime dependency in pyproject.toml ("name==version" lines), for CI's
second job: the code must work with what it declares, not only with today's releases."""

import re
import sys
from pathlib import Path

try:
    import tomllib
except ModuleNotFoundError:  # Python 3.10
    import tomli as tomllib

project = tomllib.loads((Path(__file__).resolve().parents[1] / "pyproject.toml").read_text())["project"]
for requirement in project["dependencies"]:
    spec, _, marker = requirement.partition(";")
    if marker.strip() and "python_version < '3.11'" in marker and sys.version_info >= (3, 11):
        continue
    match = re.fullmatch(r"\s*([A-Za-z0-9_.-]+)\s*>=\s*([0-9][0-9A-Za-z.]*)\s*", spec)
    if not match:
        sys.exit(f"cannot find a lowest version in {requirement!r}: declare dependencies as name>=version")
    print(f"{match.group(1)}=={match.group(2)}")
