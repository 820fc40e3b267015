"""A lower bound for the size of the template's image (mensajerokaos/hearmeman-extended `01faf1c`), which cannot be
pulled here, to compare with ours (bench/results/image-<date>.json).

Its Dockerfile builds `FROM runpod/pytorch:2.8.0-py3.11-cuda12.8.1-cudnn-devel-ubuntu22.04` (nvidia/cuda's
cudnn-devel image + torch 2.8.0 with its CUDA 12.8 wheels + JupyterLab), installs node-pack requirements, then
reinstalls torch 2.5.1 from the cu124 index in a later layer, which adds a second torch and second CUDA wheels on top
of the first (a layer cannot delete what a lower one holds). Lower bound, each part measured or undercounted:
  - CUDA libraries in the base: the same libraries as torch's wheels carry (cuDNN, cuBLAS, NCCL, cuSOLVER,
    cuSPARSE, cuFFT, NVRTC, cuRAND, nvJitLink), sized by our image's copies; the devel image's compilers, headers
    and static libraries are not counted;
  - torch 2.8.0 + its CUDA 12.8 wheels: our torch 2.9.1 layer (same CUDA 12.8 wheel set);
  - torch 2.5.1 + its cu124 wheels: the download sizes of those wheels on PyPI (compressed, so below what they
    take installed);
  - node-pack requirements, apt packages: ours (the template installs other packs and a long pip list); the
    strict bound leaves them out;
  - nothing for JupyterLab's extensions, flash_attn/xformers attempts, DWPose, Ubuntu itself.

    python3 bench/template_size.py bench/results/image-<date>.json   # adds "template_estimate" to that file
"""

from __future__ import annotations

import json
import re
import sys
import urllib.request
from pathlib import Path

SIMPLE = "https://pypi.org/simple/{name}/"  # PyPI's simple API, JSON form (PEP 691; sizes: PEP 700)
SAME_LIBRARIES = ["cudnn", "cublas", "nccl", "cusolver", "cusparse", "cufft", "cuda_nvrtc", "curand", "nvjitlink"]


def wheel(name: str, version: str) -> dict:
    """The Linux x86_64 wheel (CPython 3.11 or pure Python) of name==version on PyPI: its simple-API record."""
    request = urllib.request.Request(SIMPLE.format(name=name),
                                     headers={"Accept": "application/vnd.pypi.simple.v1+json"})
    with urllib.request.urlopen(request, timeout=60) as response:
        files = json.load(response)["files"]
    prefix = f"{name.replace('-', '_')}-{version}-"
    for file in files:
        filename = file["filename"]
        if filename.lower().startswith(prefix.lower()) and filename.endswith(".whl") and \
                ("cp311" in filename or "py3-none" in filename) and ("x86_64" in filename or "none-any" in filename):
            return file
    raise LookupError(f"no Linux x86_64 wheel for {name}=={version}")


def torch_251_stack() -> dict[str, int]:
    """torch 2.5.1 and its pinned Linux x86_64 dependencies (the nvidia-*-cu12 wheels and triton), by download
    size; the dependencies come from the wheel's own metadata (PEP 658)."""
    torch = wheel("torch", "2.5.1")
    with urllib.request.urlopen(torch["url"] + ".metadata", timeout=60) as response:
        metadata = response.read().decode()
    sizes = {"torch==2.5.1": torch["size"]}
    for match in re.finditer(r"^Requires-Dist: ([A-Za-z0-9_.-]+) \(==([^)]+)\) ; platform_system == \"Linux\"",
                             metadata, re.M):
        sizes[f"{match[1]}=={match[2]}"] = wheel(match[1], match[2])["size"]
    return sizes


def main(path: Path) -> None:
    results = json.loads(path.read_text())
    layers = results["size"]["layers"]
    ours = results.get("site_packages", {})

    def layer(marker: str) -> int:
        return sum(lay["bytes"] for lay in layers if marker in lay["created_by"])

    nvidia = ours.get("nvidia", {})
    stack = torch_251_stack()
    parts = {
        "CUDA libraries in the cudnn-devel base (same libraries as torch's wheels, sized by ours)":
            sum(nvidia.get(lib, 0) for lib in SAME_LIBRARIES),
        "torch 2.8.0 + CUDA 12.8 wheels (our torch layer)": layer("torch=="),
        "torch 2.5.1 + cu124 wheels, reinstalled on top (PyPI download sizes)": sum(stack.values()),
        "node-pack requirements (ours)": layer("install_packs.py requirements"),
        "apt packages (ours)": layer("apt-get install"),
    }
    total = sum(parts.values())
    # Only what its Dockerfile certainly adds (base CUDA libraries, two torch stacks), none of its pip installs.
    strict = sum(list(parts.values())[:3])
    results["template_estimate"] = {"lower_bound_bytes": total, "strict_lower_bound_bytes": strict, "parts": parts,
                                    "torch_251_wheels": stack,
                                    "ours_bytes": results["size"]["image_bytes"],
                                    "ratio_ours_to_template_lower_bound":
                                        round(results["size"]["image_bytes"] / total, 3)}
    path.write_text(json.dumps(results, indent=2) + "\n")
    gib = 2**30
    for name, value in parts.items():
        print(f"{value / gib:6.2f} GiB  {name}")
    print(f"{strict / gib:6.2f} GiB  template, strict lower bound (the first three alone)")
    print(f"{total / gib:6.2f} GiB  template lower bound; ours {results['size']['image_bytes'] / gib:.2f} GiB")


if __name__ == "__main__":
    main(Path(sys.argv[1]))
