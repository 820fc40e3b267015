"""Record the tensor layout of every SteadyDancer file from the pinned loaders' own model definitions.

Run with the Python of a ComfyUI checkout at the Dockerfile's pins (ComfyUI v0.3.64 + ComfyUI-WanVideoWrapper
088128b2); nothing is downloaded and no weights are allocated (every module is built on the `meta` device):

    python bench/weights_manifest.py --comfyui-dir /path/to/ComfyUI [--out bench/data/steadydancer-manifest.json.gz]

It also writes `steadydancer-manifest-tiny.json.gz` beside it: the same with a scaled-down DiT and LoRA that the same
loader accepts (for CPU rehearsals of the whole pipeline and for the generator's tests).

What is instantiated, and where the facts come from:

- the DiT: WanVideoWrapper's `WanModel` with the configuration its `WanVideoModelLoader` derives from a Wan 2.1
  I2V 14B state dict (dim 5120, 40 heads, 40 layers, in_dim 36, ffn 13824, model_type i2v), plus the modules the
  loader adds when it sees SteadyDancer's `condition_embedding_align.cross_attn.in_proj_bias` key
  (`patch_embedding_fuse`, `patch_embedding_ref_c`, `condition_embedding_spatial/temporal/align`). The file must
  hold exactly the transformer's `named_parameters()` (the loader reads `sd[name]` for each);
- umt5-xxl: WanVideoWrapper's `umt5_xxl(encoder_only=True)` (what `WanVideoTextEncodeCached` builds);
- clip_vision_h: core ComfyUI's `ClipVisionModel` with `clip_vision_config_h.json` (what `CLIPVisionLoader` picks
  when `vision_model.encoder.layers.30.layer_norm1.weight` is present);
- the Wan 2.1 VAE: WanVideoWrapper's `WanVideoVAE` (keys stored without the `model.` prefix, which the loader adds);
- the lightx2v LoRA: rank 64 (the file name), `lora_down`/`lora_up` pairs for every linear layer of the 40 blocks
  in the `diffusion_model.` namespace that the wrapper's LoRA loader maps, `diff_b` for their biases and `diff` for
  the blocks' norm weights.

The per-file layouts (fp16, fp8_e4m3fn_scaled with `.scale_weight` tensors, GGUF Q4_K_M) are derived from the DiT
tensors by `bench/standin_weights.py` with rules that follow the loader (see there).
"""

from __future__ import annotations

import argparse
import gzip
import json
import os
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
DEFAULT_OUT = REPO / "bench" / "data" / "steadydancer-manifest.json.gz"
PINS = {"comfyui": "a125cd84 (v0.3.64)", "ComfyUI-WanVideoWrapper": "088128b2"}

# What WanVideoModelLoader derives from a Wan 2.1 I2V 14B state dict (nodes_model_loading.py: dim 5120 -> 40 heads,
# 40 layers; in_dim from patch_embedding; ffn from blocks.0.ffn.0.bias; "k_img" present -> i2v).
DIT_CONFIG = dict(model_type="i2v", patch_size=(1, 2, 2), text_len=512, in_dim=36, dim=5120, in_features=5120,
                  out_features=5120, ffn_dim=13824, ffn2_dim=13824, freq_dim=256, text_dim=4096, out_dim=16,
                  num_heads=40, num_layers=40, eps=1e-6)
LORA_RANK = 64
# A scaled-down DiT the same loader accepts (dim 768: not 5120, so it takes 12 heads and 30 layers; 768 and 256 are
# multiples of GGUF's 256-element K-quant rows), for CPU rehearsals and tests; text, image and VAE interfaces as real.
TINY_CONFIG = {**DIT_CONFIG, "dim": 768, "in_features": 768, "out_features": 768, "ffn_dim": 256, "ffn2_dim": 256,
               "num_heads": 12, "num_layers": 30}
TINY_LORA_RANK = 8


def _shapes(module) -> list[list]:
    return [[name, list(t.shape)] for name, t in module.named_parameters()]


def _state(module) -> list[list]:
    return [[name, list(t.shape)] for name, t in module.state_dict().items()]


def dit(config: dict) -> list[list]:
    import torch
    import torch.nn as nn
    from accelerate import init_empty_weights

    wrapper = _wrapper()
    WanModel = wrapper.wanvideo.modules.model.WanModel
    from importlib import import_module
    DYModule = import_module(f"{wrapper.__name__}.steadydancer.mobilenetv2_dcd").DYModule
    small = import_module(f"{wrapper.__name__}.steadydancer.small_archs")
    meta = torch.device("meta")
    with init_empty_weights():
        model = WanModel(**config, main_device=meta, offload_device=meta, dtype=torch.bfloat16,
                         attention_mode="sdpa")
        # The loader's SteadyDancer branch (in_dim_c = 16, patch_size as above).
        dim, in_dim, patch = config["dim"], config["in_dim"], config["patch_size"]
        model.patch_embedding_fuse = nn.Conv3d(in_dim + 16 + 16, dim, kernel_size=patch, stride=patch)
        model.patch_embedding_ref_c = nn.Conv3d(16, dim, kernel_size=patch, stride=patch)
        model.condition_embedding_spatial = DYModule(inp=16, oup=16)
        model.condition_embedding_temporal = nn.Sequential(
            small.FactorConv3d(in_channels=16, out_channels=16, kernel_size=(3, 3, 3), stride=1), nn.SiLU(),
            small.FactorConv3d(in_channels=16, out_channels=16, kernel_size=(3, 3, 3), stride=1), nn.SiLU(),
            small.FactorConv3d(in_channels=16, out_channels=16, kernel_size=(3, 3, 3), stride=1), nn.SiLU())
        model.condition_embedding_align = small.PoseRefNetNoBNV3(in_channels_x=16, in_channels_c=16, hidden_dim=128,
                                                                 num_heads=8)
    return _shapes(model)


def linear_names(config: dict) -> list[tuple[str, list[int], bool]]:
    """(module name, weight shape, has bias) of every nn.Linear in the DiT's blocks."""
    import torch
    import torch.nn as nn
    from accelerate import init_empty_weights

    WanModel = _wrapper().wanvideo.modules.model.WanModel
    meta = torch.device("meta")
    with init_empty_weights():
        model = WanModel(**config, main_device=meta, offload_device=meta, dtype=torch.bfloat16)
    return [(name, list(m.weight.shape), m.bias is not None) for name, m in model.named_modules()
            if isinstance(m, nn.Linear) and name.startswith("blocks.")]


def lora(config: dict, rank: int) -> list[list]:
    """lightx2v-style LoRA over the blocks' linear layers, in the namespace ComfyUI's LoRA key map accepts."""
    import torch
    from accelerate import init_empty_weights

    out: list[list] = []
    for name, (o, i), bias in linear_names(config):
        out.append([f"diffusion_model.{name}.lora_down.weight", [rank, i]])
        out.append([f"diffusion_model.{name}.lora_up.weight", [o, rank]])
        if bias:
            out.append([f"diffusion_model.{name}.diff_b", [o]])
    WanModel = _wrapper().wanvideo.modules.model.WanModel
    meta = torch.device("meta")
    with init_empty_weights():
        model = WanModel(**config, main_device=meta, offload_device=meta, dtype=torch.bfloat16)
    for name, p in model.named_parameters():
        if name.startswith("blocks.") and p.dim() == 1 and "norm" in name:
            out.append([f"diffusion_model.{name.removesuffix('.weight')}.diff", list(p.shape)])
    return out


def umt5() -> list[list]:
    import torch
    from accelerate import init_empty_weights

    t5 = __import__(f"{_wrapper().__name__}.wanvideo.modules.t5", fromlist=["umt5_xxl"])
    with init_empty_weights():
        model = t5.umt5_xxl(encoder_only=True, return_tokenizer=False, dtype=torch.bfloat16, device="meta")
    return _shapes(model)


def clip_vision_h(comfyui: Path) -> list[list]:
    import torch
    import comfy.clip_vision
    import comfy.model_management

    with torch.device("meta"):
        clip = comfy.clip_vision.ClipVisionModel(str(comfyui / "comfy" / "clip_vision_config_h.json"))
    return _state(clip.model)


def wan_vae() -> list[list]:
    import torch
    from accelerate import init_empty_weights

    vae_mod = __import__(f"{_wrapper().__name__}.wanvideo.wan_video_vae", fromlist=["WanVideoVAE"])
    with init_empty_weights():
        vae = vae_mod.WanVideoVAE(dtype=torch.bfloat16)
    return [[name.removeprefix("model."), shape] for name, shape in _state(vae)]


_WRAPPER = None
WRAPPER_DIR = "ComfyUI-WanVideoWrapper"


def _wrapper():
    """The pinned ComfyUI-WanVideoWrapper's modules, without running its __init__ (which needs a live PromptServer):
    the package is registered with its folder as __path__, so its submodules import as they would inside ComfyUI."""
    global _WRAPPER
    if _WRAPPER is None:
        import importlib
        import types
        folder = next(Path(p) / WRAPPER_DIR for p in sys.path if (Path(p) / WRAPPER_DIR).is_dir())
        package = types.ModuleType("wanvideo_wrapper_pinned")
        package.__path__ = [str(folder)]
        sys.modules[package.__name__] = package
        importlib.import_module(f"{package.__name__}.wanvideo.modules.model")
        _WRAPPER = package
    return _WRAPPER


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--comfyui-dir", type=Path, required=True)
    parser.add_argument("--out", type=Path, default=DEFAULT_OUT)
    args = parser.parse_args()
    comfyui = args.comfyui_dir.resolve()
    sys.argv = [sys.argv[0], "--cpu"]  # ComfyUI's modules parse argv at import
    sys.path[:0] = [str(comfyui), str(comfyui / "custom_nodes")]
    os.chdir(comfyui)
    import comfy.options
    comfy.options.enable_args_parsing()
    import utils.install_util  # noqa: F401  (as main.py does, before a node pack's imports shadow `utils`)
    others = {"umt5_xxl_enc": umt5(), "clip_vision_h": clip_vision_h(comfyui), "wan21_vae": wan_vae()}
    for out, config, rank in ((args.out, DIT_CONFIG, LORA_RANK),
                              (args.out.with_name(args.out.name.replace(".json", "-tiny.json")), TINY_CONFIG,
                               TINY_LORA_RANK)):
        manifest = {
            "pins": PINS,
            "dit_config": {k: list(v) if isinstance(v, tuple) else v for k, v in config.items()},
            "lora_rank": rank,
            "models": {"steadydancer_dit": dit(config), **others, "lightx2v_lora": lora(config, rank)},
        }
        out.parent.mkdir(parents=True, exist_ok=True)
        with gzip.open(out, "wt") as f:
            json.dump(manifest, f, separators=(",", ":"))
        for name, tensors in manifest["models"].items():
            count = sum(_numel(shape) for _, shape in tensors)
            print(f"{name:24s} {len(tensors):5d} tensors {count / 1e9:7.3f} G elements")
        print(f"written {out} ({out.stat().st_size} bytes)")
    return 0


def _numel(shape: list[int]) -> int:
    n = 1
    for d in shape:
        n *= d
    return n


if __name__ == "__main__":
    raise SystemExit(main())
