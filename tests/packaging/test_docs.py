"""docker/RUNPOD.md states the image's pins and how each secret is given; keep it in step with the Dockerfile."""

from __future__ import annotations

import tomllib

from .files import REPO, args_of, dockerfile, secret_variables

RUNPOD = REPO / "docker" / "RUNPOD.md"


def test_runpod_notes_show_the_pins_the_dockerfile_uses():
    text = RUNPOD.read_text()
    base = args_of(dockerfile(), "base")
    for name in ("ONNXRUNTIME_GPU_VERSION", "JUPYTERLAB_VERSION"):
        assert base[name] in text, f"docker/RUNPOD.md does not show {name}={base[name]}"
    for name, pack in tomllib.loads((REPO / "config" / "packs.toml").read_text())["packs"].items():
        assert f"| {name} |" in text and f"`{pack['commit']}`" in text, f"docker/RUNPOD.md does not show {name}'s pin"
    torch = f"{base['TORCH_VERSION']} / {base['TORCHVISION_VERSION']} / {base['TORCHAUDIO_VERSION']}"
    assert torch in text
    assert f"`{args_of(dockerfile(), '')['BASE_IMAGE']}`" in text


def test_runpod_notes_say_how_each_secret_is_given():
    text = RUNPOD.read_text()
    for name in secret_variables():
        assert f"`{name}`" in text, f"docker/RUNPOD.md does not say how to give {name}"
    for name in ("hf_token", "jupyter_password", "civitai_api_key"):
        assert f"{{{{ RUNPOD_SECRET_{name} }}}}" in text
