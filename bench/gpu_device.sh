#!/usr/bin/env bash
# bench/gpu_classes.py on a bare GPU machine without internet, from a bundle folder (default: .devwork/) holding
#   repo/          this repository (the bench and the supervisor it runs)
#   comfy.tar.xz   ComfyUI at the Dockerfile's pins with its node packs (ComfyUI/...)
#   whl/           wheels the machine lacks: torchsde trampoline spandrel diffusers ftfy wcwidth gguf
#                  imageio-ffmpeg (ffmpeg for VideoHelperSuite's MP4) structlog tenacity
# PyAV is replaced by the import-only stand-in in bench/device_stubs when it is not installed (see there).
# The Hub's files go to a tmpfs so that the disk holds only the volume's copy. Arguments go to gpu_classes.py, or to
# the bench named by BENCH_SCRIPT (per_gpu.py: one ComfyUI per GPU on a multi-GPU host).
set -euo pipefail
BUNDLE=${BUNDLE:-.devwork}
OUT=${OUT:-$PWD/bench-out}
SITE=/tmp/bench-site
python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target "$SITE" "$BUNDLE"/whl/*.whl
python3 -c "import av" 2>/dev/null || cp -r "$BUNDLE/repo/bench/device_stubs/av" "$SITE/"
export PYTHONPATH=$SITE
mkdir -p /tmp/comfy /tmp/emptyweb "$OUT"
[ -d /tmp/comfy/ComfyUI ] || tar -xJf "$BUNDLE/comfy.tar.xz" -C /tmp/comfy
HUB=/mnt/gc-hub
mkdir -p $HUB
mountpoint -q $HUB || mount -t tmpfs -o size=80g tmpfs $HUB || HUB=/dev/shm/gc-hub
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader
df -h / $HUB | tail -2
cd "$BUNDLE/repo"
exec python3 "bench/${BENCH_SCRIPT:-gpu_classes.py}" --comfyui-dir /tmp/comfy/ComfyUI --comfyui-python python3 \
  --comfyui-args "--front-end-root /tmp/emptyweb --disable-api-nodes" --work /root/gpu-classes --hub-root $HUB \
  --out "$OUT" "$@"
