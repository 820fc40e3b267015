"""docker/.env.example, rendered from the code: every variable, commented out, at the default a container of the
image sees, with the code's own description. Regenerate after changing a declaration:

    python -m tests.packaging.env_example > docker/.env.example
"""

from __future__ import annotations

import textwrap

from supervisor.plan.catalog_load import load_catalog
from supervisor.plan.settings import declared_variables

from .files import dockerfile, effective_env

WIDTH = 116
GROUP_TITLES = {
    "hardware": "Hardware and planning",
    "paths": "Paths",
    "comfyui": "ComfyUI launch",
    "supervise": "Health, restarts, shutdown",
    "fetch": "Downloads",
    "workflow": "Workflow values (the shipped SteadyDancer workflows)",
    "services": "Side services",
    "serverless": "RunPod Serverless worker",
    "logging": "Logging",
}
# What the image changes, said next to the variable (the value shown is the image's, from the Dockerfile).
IMAGE_NOTES = {
    "COMFYUI_PYTHON": "This image sets it (Dockerfile ENV): ComfyUI and its node packs live in /opt/venv, the "
                      "supervisor in /opt/supervisor. Do not set it empty here.",
    "MODELS_DIR": "An image built with BAKE_MODELS=true sets /opt/models.",
}
HEADER = """\
# Every environment variable the supervisor reads, at its default. Copy to docker/.env for `docker compose`, or
# use it as the list of RunPod template variables (docker/RUNPOD.md).
#
# Every line is commented out on purpose: the defaults live in the supervisor's code, so an unset variable already
# has the value shown, and copying this file changes nothing. Uncomment and edit only what you want different.
# (Setting a switch to its default is not quite a no-op: an explicitly set switch is reported when it cannot run.)
#
# Booleans: true/false/1/0/yes/no/on/off, any case; any other value stops the start with an error naming the
# variable. Secrets (HF_TOKEN, CIVITAI_API_KEY, JUPYTER_PASSWORD, R2_*_KEY*) are never logged; keep .env out of
# version control. Generated from the code by tests/packaging/env_example.py; tests keep it in step.
"""


def _comment(text: str) -> list[str]:
    return ["# " + line for line in textwrap.wrap(text.replace("`", ""), WIDTH - 2)]


def _section(title: str) -> list[str]:
    return ["", f"# {'-' * 20} {title} ".ljust(WIDTH, "-")]


def render() -> str:
    image_env = effective_env(dockerfile(), "models-false")
    lines = HEADER.rstrip("\n").splitlines()
    group = None
    for variable in declared_variables():
        if variable["group"] != group:
            group = variable["group"]
            lines += _section(GROUP_TITLES.get(group, group))
        name = variable["env"]
        doc = variable["doc"]
        if variable["secret"]:
            doc += " Secret: keep it out of version control."
        if name in IMAGE_NOTES:
            doc += " " + IMAGE_NOTES[name]
        lines += _comment(doc)
        lines.append(f"# {name}={image_env.get(name, variable['raw_default'])}")
    lines += _section("Feature switches and their options")
    for feature in load_catalog().features.values():
        lines += _comment(feature.description)
        lines.append(f"# {feature.switch}={'true' if feature.default_enabled else 'false'}")
        if feature.variant_env:
            accepted = (["auto"] if feature.auto else []) + feature._accepted_names()
            kind = "comma list of" if feature.multi_choice else "one of"
            lines += _comment(f"{kind}: {', '.join(accepted)}")
            lines.append(f"# {feature.variant_env}={feature.variant_default}")
        if feature.dynamic:
            lines += _comment(f"comma list of CivitAI model version ids (digits), downloaded to "
                              f"{feature.dynamic.folder}/")
            lines.append(f"# {feature.dynamic.env}=")
    return "\n".join(lines) + "\n"


if __name__ == "__main__":  # pragma: no cover - a maintenance command
    print(render(), end="")
