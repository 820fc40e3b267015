"""Weight files of the real shapes with random values: what a SteadyDancer plan names, for measuring memory and time.

Memory and time depend on tensor names, shapes and dtypes, not on values. `bench/data/steadydancer-manifest.json.gz`
records the shapes from the pinned loaders' own model definitions (`bench/weights_manifest.py`); this module turns
them into per-file layouts and writes safetensors and GGUF files with those names, shapes and dtypes:

    python bench/standin_weights.py --out DIR [--files KEY,...] [--device cuda] [--manifest PATH] [--list]

Layouts (file keys as in config/catalog.toml):

- `steadydancer_fp16`: every DiT tensor in F16 (Kijai's single fp16 file);
- `steadydancer_fp8_scaled`: the layout `WanVideoModelLoader` reads as `fp8_e4m3fn_scaled` (Kijai's `_KJ` file):
  every 2-D linear weight in F8_E4M3, each with a per-tensor F32 `<layer>.scale_weight` beside it (the loader
  collects every `*.scale_weight` key and multiplies the weight by it), except `img_emb`; biases, norms,
  modulation and SteadyDancer's condition modules in BF16/F32 as the loader keeps them (16.42 GB: the published
  file is listed at 16.4 GB);
- `steadydancer_gguf_q4_k_m`: a GGUF file written by the `gguf` package: the 2-D weights of the 40 blocks as Q4_K,
  with llama.cpp's Q4_K_M rule of "more bits" (Q6_K) for the value projections and the FFN down projection in the
  first and last eighth of the blocks and every third block between, all other tensors (including the 5-D
  patch-embedding convolutions, which GGUF stores as 5-D since MCG-NJU's `fix_5d_tensor` files) as F32/F16.
  The `gguf` package cannot *quantize* to K-quants (its numpy quantizer stops at Q8_0/Q5_x/Q4_x), so the Q4_K and
  Q6_K blocks are written as raw blocks with random quants and a small valid fp16 scale: the same bytes per
  block and the same dequantization work as a real file, without the quantizer;
- `wan21_text_encoder_bf16`, `lightx2v_i2v_480p_rank64`, `wan21_vae_bf16`: BF16; `clip_vision_h`: F16;
- `vitpose_h_model` + `vitpose_h_data`, `yolov10m`: ONNX stand-ins (bench/standin_onnx.py).

Writing: with `--device cuda` values are generated on the GPU with torch (normal, std 0.02; K-quant blocks as random
bytes) in chunks of up to 256 MiB, copied to pinned host buffers and written by a second thread in large
sequential writes, hashing (sha256) as they go, so a file is complete, hashed and on disk in one pass; on the CPU
(numpy and ml_dtypes only, as in CI) the chunks are slices of a random pool made once.
"""

from __future__ import annotations

import argparse
import gzip
import hashlib
import json
import os
import queue
import struct
import sys
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Iterable

REPO = Path(__file__).resolve().parents[1]
MANIFEST = REPO / "bench" / "data" / "steadydancer-manifest.json.gz"
TINY_MANIFEST = REPO / "bench" / "data" / "steadydancer-manifest-tiny.json.gz"
CHUNK = 256 << 20

# bytes per element, or (block elements, block bytes) for GGML block types
ELEMENT_BYTES = {"F32": 4, "F16": 2, "BF16": 2, "F8_E4M3": 1}
GGML_BLOCKS = {"Q4_K": (256, 144), "Q6_K": (256, 210)}
GGML_TYPE_IDS = {"F32": 0, "F16": 1, "Q4_K": 12, "Q6_K": 14, "BF16": 30}
# Where each block type keeps its fp16 super-block scales (ggml's block_q4_K: d, dmin first; block_q6_K: d last),
# and the value given to them so that dequantized weights stay below about 0.1 (Q6_K's sub-scales are int8).
GGML_SCALE_OFFSETS = {"Q4_K": (0, 2), "Q6_K": (208,)}
GGML_SUPER_SCALE = {"Q4_K": 2.0 ** -13, "Q6_K": 2.0 ** -15}
GGUF_FILE_TYPE_Q4_K_M = 15  # llama.cpp's LLAMA_FTYPE_MOSTLY_Q4_K_M
STD = 0.02  # of the random weights (fp8: 1.0, with a scale of 1.0)

# WanVideoWrapper's loader keeps parameters whose names contain these in F32
FP32_KEEP = ("patch_embedding", "motion_encoder", "condition_embedding")


@dataclass(frozen=True)
class Tensor:
    name: str
    shape: tuple[int, ...]
    dtype: str  # F32 F16 BF16 F8_E4M3 (safetensors) or Q4_K Q6_K (GGUF)

    @property
    def numel(self) -> int:
        n = 1
        for d in self.shape:
            n *= d
        return n

    @property
    def nbytes(self) -> int:
        if self.dtype in GGML_BLOCKS:
            elements, size = GGML_BLOCKS[self.dtype]
            return self.numel // elements * size
        return self.numel * ELEMENT_BYTES[self.dtype]


@dataclass
class Layout:
    key: str  # catalogue file key
    filename: str
    format: str  # safetensors | gguf
    tensors: list[Tensor]
    metadata: dict[str, object] = field(default_factory=dict)

    @property
    def data_bytes(self) -> int:
        return sum(t.nbytes for t in self.tensors)


def load_manifest(path: Path = MANIFEST) -> dict:
    with gzip.open(path, "rt") as f:
        return json.load(f)


def _tensors(entries: Iterable, dtype: str) -> list[Tensor]:
    return [Tensor(name, tuple(shape), dtype) for name, shape in entries]


def _block(name: str) -> int | None:
    if name.startswith("blocks."):
        return int(name.split(".")[1])
    return None


def fp8_scaled(dit: list[Tensor]) -> list[Tensor]:
    """Every 2-D linear weight (blocks, head, text/time embeddings and projection) in F8_E4M3 with its F32
    `scale_weight`, except `img_emb` (the loader casts it to the base dtype); the rest BF16, or F32 where the loader
    keeps F32. This comes to 16.42 GB, the size of the published `_KJ` file (16.4 GB)."""
    out: list[Tensor] = []
    for t in dit:
        if len(t.shape) == 2 and t.name.endswith(".weight") and "norm" not in t.name and "img_emb" not in t.name:
            out.append(Tensor(t.name, t.shape, "F8_E4M3"))
            out.append(Tensor(t.name.removesuffix(".weight") + ".scale_weight", (), "F32"))
        elif any(k in t.name for k in FP32_KEEP):
            out.append(Tensor(t.name, t.shape, "F32"))
        else:
            out.append(Tensor(t.name, t.shape, "BF16"))
    return out


def _more_bits(block: int, blocks: int) -> bool:
    """llama.cpp's use_more_bits(i, n): the first and last eighth of the layers and every third in between."""
    return block < blocks // 8 or block >= 7 * blocks // 8 or (block - blocks // 8) % 3 == 2


def gguf_q4_k_m(dit: list[Tensor]) -> list[Tensor]:
    blocks = 1 + max((_block(t.name) for t in dit if _block(t.name) is not None), default=-1)
    out: list[Tensor] = []
    for t in dit:
        block = _block(t.name)
        if block is not None and len(t.shape) == 2 and t.shape[-1] % 256 == 0:
            v_or_down = t.name.endswith((".v.weight", ".v_img.weight", "ffn.2.weight"))
            out.append(Tensor(t.name, t.shape, "Q6_K" if v_or_down and _more_bits(block, blocks) else "Q4_K"))
        elif len(t.shape) <= 1 or "norm" in t.name or "modulation" in t.name:
            out.append(Tensor(t.name, t.shape, "F32"))
        else:
            out.append(Tensor(t.name, t.shape, "F16"))
    return out


def layouts(manifest: dict) -> dict[str, Layout]:
    """Every weight file a SteadyDancer plan can name, by catalogue key."""
    models = manifest["models"]
    dit = _tensors(models["steadydancer_dit"], "F16")
    gguf_meta = {"general.architecture": "wan", "general.file_type": GGUF_FILE_TYPE_Q4_K_M,
                 "general.quantization_version": 2}
    return {layout.key: layout for layout in [
        Layout("steadydancer_fp16", "Wan21_I2V_SteadyDancer_fp16.safetensors", "safetensors", dit),
        Layout("steadydancer_fp8_scaled", "Wan21_SteadyDancer_fp8_e4m3fn_scaled_KJ.safetensors", "safetensors",
               fp8_scaled(dit)),
        Layout("steadydancer_gguf_q4_k_m", "Wan21_I2V_SteadyDancer_fp16-Q4_K_M_fix_5d_tensor.gguf", "gguf",
               gguf_q4_k_m(dit), gguf_meta),
        Layout("wan21_text_encoder_bf16", "umt5-xxl-enc-bf16.safetensors", "safetensors",
               _tensors(models["umt5_xxl_enc"], "BF16")),
        Layout("clip_vision_h", "clip_vision_h.safetensors", "safetensors", _tensors(models["clip_vision_h"], "F16")),
        Layout("wan21_vae_bf16", "Wan2_1_VAE_bf16.safetensors", "safetensors", _tensors(models["wan21_vae"], "BF16")),
        Layout("lightx2v_i2v_480p_rank64", "lightx2v_I2V_14B_480p_cfg_step_distill_rank64_bf16.safetensors",
               "safetensors", _tensors(models["lightx2v_lora"], "BF16")),
    ]}


# -- writing ------------------------------------------------------------------------------------------------------


class _Writer:
    """Writes one file in order and hashes it (sha256) on a second thread. On CUDA each chunk is generated on the
    GPU with torch and copied into one of two pinned host buffers that the thread drains; on the CPU (numpy, no
    torch needed) chunks are slices of a pool of random values made once per dtype, since generating fresh values
    there is slower than the disk."""

    POOL = 32 << 20  # CPU pool: bytes per dtype

    def __init__(self, path: Path, device: str = "cpu", seed: int = 0):
        self.cuda = device.startswith("cuda")
        self.seed = seed
        self.sha = hashlib.sha256()
        self.fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o644)
        self.written = 0
        self.full: queue.Queue = queue.Queue(maxsize=4)
        self.free: queue.Queue = queue.Queue()
        self.pools: dict[str, memoryview] = {}
        if self.cuda:
            import torch

            self.torch = torch
            self.device = torch.device(device)
            self.gen = torch.Generator(device=self.device).manual_seed(seed)
            for _ in range(2):
                self.free.put(torch.empty(CHUNK, dtype=torch.uint8, pin_memory=True))
        else:
            import numpy as np

            self.np = np
            self.rng = np.random.default_rng(seed)
        self.error: BaseException | None = None
        self.thread = threading.Thread(target=self._drain, daemon=True)
        self.thread.start()

    # -- the writer thread --------------------------------------------------------------------------------------

    def _drain(self) -> None:
        try:
            while (item := self.full.get()) is not None:
                view, event, buffer = item
                if event is not None:
                    event.synchronize()
                self.sha.update(view)
                done = 0
                while done < len(view):
                    done += os.write(self.fd, view[done:])
                if buffer is not None:
                    self.free.put(buffer)
        except BaseException as exc:  # noqa: BLE001 - re-raised in the producer
            self.error = exc
            while self.full.get() is not None:  # unblock the producer
                pass

    def _put(self, view: memoryview, event=None, buffer=None) -> None:
        if self.error:
            raise self.error
        self.full.put((view, event, buffer))
        self.written += len(view)

    def raw(self, data: bytes) -> None:
        """Header or padding bytes, in order with the data."""
        self._put(memoryview(bytes(data)))

    def pad_to(self, alignment: int) -> None:
        pad = -self.written % alignment
        if pad:
            self.raw(b"\0" * pad)

    def close(self) -> str:
        self.full.put(None)
        self.thread.join()
        os.close(self.fd)
        if self.error:
            raise self.error
        return self.sha.hexdigest()

    # -- data ---------------------------------------------------------------------------------------------------

    def tensor(self, t: Tensor) -> None:
        if t.name.endswith(".scale_weight"):  # per-tensor scales of 1.0: the fp8 values are the weights
            self.raw(struct.pack("<f", 1.0) * max(t.numel, 1))
            return
        if t.dtype in GGML_BLOCKS:
            unit, count = GGML_BLOCKS[t.dtype][1], t.numel // GGML_BLOCKS[t.dtype][0]
        else:
            unit, count = ELEMENT_BYTES[t.dtype], t.numel
        step = CHUNK // unit
        for start in range(0, count, step):
            n = min(step, count - start)
            if self.cuda:
                self._emit_cuda(t.dtype, n)
            else:
                self._emit_pool(t.dtype, n * unit, unit)

    def _emit_cuda(self, kind: str, n: int) -> None:
        torch = self.torch
        if kind in GGML_BLOCKS:
            size = GGML_BLOCKS[kind][1]
            data = torch.randint(0, 256, (n, size), dtype=torch.uint8, device=self.device, generator=self.gen)
            scale = torch.tensor([GGML_SUPER_SCALE[kind]], dtype=torch.float16, device=self.device).view(torch.uint8)
            for offset in GGML_SCALE_OFFSETS[kind]:
                data[:, offset:offset + 2] = scale
        else:
            dtype = {"F32": torch.float32, "F16": torch.float16, "BF16": torch.bfloat16,
                     "F8_E4M3": torch.float8_e4m3fn}[kind]
            data = torch.randn(n, dtype=torch.float32, device=self.device, generator=self.gen)
            data = data.mul_(STD if kind != "F8_E4M3" else 1.0).to(dtype)
        data = data.view(torch.uint8).view(-1)
        buffer = self.free.get()
        if self.error:
            raise self.error
        buffer[:data.numel()].copy_(data, non_blocking=True)
        event = torch.cuda.Event()
        event.record()
        self._put(memoryview(buffer.numpy())[:data.numel()], event, buffer)

    def _pool(self, kind: str) -> memoryview:
        if kind not in self.pools:
            np = self.np
            if kind in GGML_BLOCKS:
                size = GGML_BLOCKS[kind][1]
                data = self.rng.integers(0, 256, (self.POOL // size, size), dtype=np.uint8)
                scale = np.array([GGML_SUPER_SCALE[kind]], np.float16).view(np.uint8)
                for offset in GGML_SCALE_OFFSETS[kind]:
                    data[:, offset:offset + 2] = scale
            else:
                import ml_dtypes

                dtype = {"F32": np.float32, "F16": np.float16, "BF16": ml_dtypes.bfloat16,
                         "F8_E4M3": ml_dtypes.float8_e4m3fn}[kind]
                values = self.rng.standard_normal(self.POOL // ELEMENT_BYTES[kind], dtype=np.float32)
                data = (values * (STD if kind != "F8_E4M3" else 1.0)).astype(dtype)
            self.pools[kind] = memoryview(np.ascontiguousarray(data).view(np.uint8).reshape(-1))
        return self.pools[kind]

    def _emit_pool(self, kind: str, nbytes: int, unit: int) -> None:
        pool = self._pool(kind)
        offset = int(self.rng.integers(0, len(pool) // unit)) * unit
        while nbytes:
            n = min(nbytes, len(pool) - offset)
            self._put(pool[offset:offset + n])
            nbytes -= n
            offset = 0


def safetensors_header(layout: Layout) -> bytes:
    header: dict[str, object] = {"__metadata__": {k: str(v) for k, v in layout.metadata.items()}} if layout.metadata else {}
    offset = 0
    for t in layout.tensors:
        header[t.name] = {"dtype": t.dtype, "shape": list(t.shape), "data_offsets": [offset, offset + t.nbytes]}
        offset += t.nbytes
    text = json.dumps(header, separators=(",", ":")).encode()
    text += b" " * (-(len(text) + 8) % 8)  # the data starts 8-byte aligned
    return struct.pack("<Q", len(text)) + text


def write(layout: Layout, path: Path, device: str = "cpu", seed: int = 0) -> dict[str, object]:
    """Write `layout` to `path`; returns size, sha256 and seconds."""
    started = time.perf_counter()
    path.parent.mkdir(parents=True, exist_ok=True)
    if layout.format == "safetensors":
        writer = _Writer(path, device, seed)
        writer.raw(safetensors_header(layout))
        for t in layout.tensors:
            writer.tensor(t)
        sha = writer.close()
    else:
        sha = _write_gguf(layout, path, device, seed)
    size = path.stat().st_size
    return {"key": layout.key, "path": str(path), "bytes": size, "sha256": sha,
            "seconds": round(time.perf_counter() - started, 3)}


def _write_gguf(layout: Layout, path: Path, device: str, seed: int) -> str:
    """Header, key-values and tensor infos by the `gguf` package's GGUFWriter; then the data in the same order."""
    import gguf
    import numpy as np

    np_dtypes = {"F32": np.float32, "F16": np.float16}
    writer = gguf.GGUFWriter(path, arch=str(layout.metadata.get("general.architecture", "wan")))
    for key, value in layout.metadata.items():
        if key == "general.architecture":
            continue
        if isinstance(value, int):
            writer.add_uint32(key, value)
        else:
            writer.add_string(key, str(value))
    for t in layout.tensors:
        if t.dtype in np_dtypes:
            writer.add_tensor_info(t.name, t.shape, np.dtype(np_dtypes[t.dtype]), t.nbytes)
        else:
            elements, size = GGML_BLOCKS[t.dtype]
            byte_shape = (*t.shape[:-1], t.shape[-1] // elements * size)
            writer.add_tensor_info(t.name, byte_shape, np.dtype(np.uint8), t.nbytes,
                                   raw_dtype=gguf.GGMLQuantizationType[t.dtype])
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_ti_data_to_file()
    writer.flush()
    alignment = writer.data_alignment
    head = path.read_bytes() if path.stat().st_size < (64 << 20) else None
    writer.close()
    assert head is not None, "GGUF header larger than expected"
    out = _Writer(path, device, seed)
    out.raw(head)
    for t in layout.tensors:
        out.pad_to(alignment)
        out.tensor(t)
    out.pad_to(alignment)
    return out.close()


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--manifest", type=Path, default=MANIFEST)
    parser.add_argument("--out", type=Path, help="folder for the files (flat, real file names)")
    parser.add_argument("--files", default="", help="comma list of catalogue keys (default: all)")
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--list", action="store_true", help="print the layouts' sizes and exit")
    args = parser.parse_args()
    all_layouts = layouts(load_manifest(args.manifest))
    keys = [k for k in args.files.split(",") if k] or list(all_layouts)
    if args.list or not args.out:
        for key in keys:
            layout = all_layouts[key]
            kinds = sorted({t.dtype for t in layout.tensors})
            print(f"{key:28s} {layout.data_bytes:>15,d} B  {len(layout.tensors):5d} tensors  {'/'.join(kinds)}")
        return 0
    for key in keys:
        result = write(all_layouts[key], args.out / all_layouts[key].filename, args.device)
        rate = result["bytes"] / max(result["seconds"], 1e-9) / 1e9
        print(json.dumps({**result, "gb_per_s": round(rate, 2)}), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
