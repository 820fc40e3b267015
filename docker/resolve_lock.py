#!/usr/bin/env python3
"""Resolve one Python set for ComfyUI and every pinned node pack: config/packs.toml -> docker/requirements.lock.

    python docker/resolve_lock.py --comfyui-dir /path/to/ComfyUI [--uv uv]

`--comfyui-dir` is a ComfyUI checkout at the pinned commit with every pack of config/packs.toml in custom_nodes/
at its pin (the requirement files are read from there). The resolution is for the image's platform (manylinux x86_64;
resolved for CPython 3.11, the lowest this is tested on, and checked to install from wheels on 3.12, the image's)
against the image's torch, so it runs on any machine with uv and PyPI. A requirement that no
version can satisfy together with the others makes uv fail, naming the packs' conflicting lines: the set is then
not installable and the pins must change (or the plan must refuse the combination).
"""

from __future__ import annotations

import argparse
import subprocess
import sys
import tempfile
from pathlib import Path

try:
    import tomllib
except ModuleNotFoundError:  # pragma: no cover
    import tomli as tomllib  # type: ignore[no-redef]

ROOT = Path(__file__).resolve().parent.parent
# The image's torch (docker/Dockerfile TORCH_VERSION ...) and the onnxruntime built for its CUDA 12 + cuDNN 9.
PINNED = ["torch==2.9.1", "torchvision==0.24.1", "torchaudio==2.9.1", "onnxruntime-gpu==1.23.2"]
# Pure-Python packages published as source only (built without a compiler).
SDIST_OK = ["fvcore", "iopath", "antlr4-python3-runtime", "ml-collections", "yacs", "matrix-client", "ffmpy"]


def requirement_lines(comfyui_dir: Path, packs: dict) -> list[str]:
    lines: list[str] = []
    for pack_id, pack in packs["packs"].items():
        folder = comfyui_dir if pack_id == "ComfyUI" else comfyui_dir / "custom_nodes" / pack_id
        for name in pack.get("requirements", []):
            path = folder / name
            if not path.is_file():
                raise SystemExit(f"{pack_id}: {path} is missing; extract the pack at {pack['commit']} first")
            lines.append(f"-r {path}")
        lines += pack.get("pip", [])
    return lines


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--comfyui-dir", type=Path, required=True)
    parser.add_argument("--uv", default="uv")
    parser.add_argument("--output", type=Path, default=ROOT / "docker" / "requirements.lock")
    args = parser.parse_args(argv)
    packs = tomllib.loads((ROOT / "config" / "packs.toml").read_text())
    with tempfile.TemporaryDirectory() as tmp:
        req = Path(tmp, "requirements.in")
        req.write_text("\n".join(requirement_lines(args.comfyui_dir, packs) + PINNED) + "\n")
        cons = Path(tmp, "constraints.txt")
        cons.write_text("\n".join(PINNED) + "\n")
        # Resolved for 3.11 (the CPU check's Python) so one identical set installs on both; then checked for
        # 3.12 with wheels only, which the image needs (no compiler surprises at build time).
        command = [args.uv, "pip", "compile", str(req), "-c", str(cons), "--python-version", "3.11",
                   "--python-platform", "x86_64-manylinux_2_28", "--no-header", "--no-annotate",
                   "--index-strategy", "unsafe-best-match", "-o", str(args.output)]
        check = [args.uv, "pip", "compile", str(args.output), "--python-version", "3.12",
                 "--python-platform", "x86_64-manylinux_2_28", "--no-header", "--no-annotate", "--no-deps",
                 "--only-binary", ":all:", *[a for name in SDIST_OK for a in ("--no-binary", name)], "--index-strategy", "unsafe-best-match", "-o", str(Path(tmp, "check.txt"))]
        for step in (command, check):
            result = subprocess.run(step, text=True, capture_output=True)
            sys.stderr.write(result.stderr)
            if result.returncode:
                return result.returncode
    header = ("# One resolved Python set for ComfyUI v0.3.64 and every pack of config/packs.toml, for CPython 3.11 and\n"
              "# 3.12 (wheels only) on manylinux x86_64 with torch 2.9.1 (the image's). Made by docker/resolve_lock.py; install with\n"
              "#   pip install -c docker/requirements.lock -r <each requirement file> ... && pip check\n")
    args.output.write_text(header + args.output.read_text())
    print(f"wrote {args.output}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
