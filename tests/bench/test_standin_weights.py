"""The stand-in weight generator (bench/standin_weights.py) on the committed manifests, on the CPU.

The real-shape manifest is checked against the published file sizes; files are written from the scaled-down
manifest (the DiT's first two blocks and everything outside the blocks) and read back with the libraries the
loaders use (safetensors' own parser, the `gguf` package's reader, `onnx`)."""

from __future__ import annotations

import hashlib
import json
import struct
import sys
from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest

BENCH = Path(__file__).resolve().parents[2] / "bench"
sys.path.insert(0, str(BENCH))

import standin_onnx  # noqa: E402
import standin_tokenizer  # noqa: E402
import standin_weights as sw  # noqa: E402

REAL = sw.layouts(sw.load_manifest(sw.MANIFEST))
TINY = sw.layouts(sw.load_manifest(sw.TINY_MANIFEST))


def two_blocks(layout: sw.Layout) -> sw.Layout:
    keep = [t for t in layout.tensors if t.name.split(".")[0] != "blocks" or int(t.name.split(".")[1]) < 2]
    return replace(layout, tensors=keep)


@pytest.mark.parametrize("key, published", [
    ("steadydancer_fp16", 32_800_000_000),         # "~32.8 GB" (HF discussion)
    ("steadydancer_fp8_scaled", 16_400_000_000),   # HF listing: 16.4 GB
    ("wan21_text_encoder_bf16", 11_400_000_000),   # HF listing: 11.4 GB
    ("clip_vision_h", 1_260_000_000),
    ("wan21_vae_bf16", 254_000_000),               # HF listing: 254 MB
    ("lightx2v_i2v_480p_rank64", 738_000_000),     # HF listing: 738 MB
])
def test_real_manifest_sizes_match_the_published_files(key, published):
    assert abs(REAL[key].data_bytes - published) / published < 0.02


def test_real_dit_is_the_steadydancer_i2v_14b():
    names = {t.name: t.shape for t in REAL["steadydancer_fp16"].tensors}
    assert names["condition_embedding_align.cross_attn.in_proj_bias"]  # the key the loader recognises it by
    assert names["patch_embedding.weight"] == (5120, 36, 1, 2, 2)
    assert names["patch_embedding_fuse.weight"] == (5120, 68, 1, 2, 2)
    assert names["blocks.0.cross_attn.k_img.weight"] == (5120, 5120)
    assert names["blocks.0.ffn.0.weight"] == (13824, 5120)
    assert max(int(n.split(".")[1]) for n in names if n.startswith("blocks.")) == 39
    lora = {t.name: t.shape for t in REAL["lightx2v_i2v_480p_rank64"].tensors}
    assert lora["diffusion_model.blocks.0.self_attn.q.lora_down.weight"] == (64, 5120)


def test_fp8_scaled_layout_pairs_every_fp8_weight_with_a_scale():
    tensors = {t.name: t for t in REAL["steadydancer_fp8_scaled"].tensors}
    fp8 = [n for n, t in tensors.items() if t.dtype == "F8_E4M3"]
    assert len(fp8) > 400
    for name in fp8:
        scale = tensors[name.removesuffix(".weight") + ".scale_weight"]
        assert scale.dtype == "F32" and scale.shape == ()
    assert tensors["blocks.0.norm3.weight"].dtype != "F8_E4M3"
    assert tensors["condition_embedding_align.cross_attn.in_proj_bias"].dtype == "F32"


def test_q4_k_m_mix_follows_the_more_bits_rule():
    types = {t.name: t.dtype for t in REAL["steadydancer_gguf_q4_k_m"].tensors}
    assert types["blocks.0.ffn.2.weight"] == "Q6_K"      # first eighth
    assert types["blocks.6.ffn.2.weight"] == "Q4_K"
    assert types["blocks.7.ffn.2.weight"] == "Q6_K"      # (7 - 5) % 3 == 2
    assert types["blocks.0.self_attn.q.weight"] == "Q4_K"
    assert types["patch_embedding.weight"] == "F16" and types["blocks.0.norm3.weight"] == "F32"


def _safetensors_header(path: Path) -> dict:
    with open(path, "rb") as f:
        (n,) = struct.unpack("<Q", f.read(8))
        return json.loads(f.read(n))


@pytest.mark.parametrize("key", ["steadydancer_fp16", "steadydancer_fp8_scaled", "lightx2v_i2v_480p_rank64"])
def test_safetensors_files_have_the_layout(tmp_path, key):
    from safetensors import safe_open

    layout = two_blocks(TINY[key])
    path = tmp_path / layout.filename
    record = sw.write(layout, path)
    assert record["sha256"] == hashlib.sha256(path.read_bytes()).hexdigest()
    assert record["bytes"] == path.stat().st_size
    with safe_open(str(path), framework="numpy") as f:  # the Rust parser validates offsets and sizes
        assert list(f.keys()) == sorted(t.name for t in layout.tensors)
        for t in layout.tensors:
            piece = f.get_slice(t.name)
            assert tuple(piece.get_shape()) == t.shape and piece.get_dtype() == t.dtype
    header = _safetensors_header(path)
    import ml_dtypes
    dtypes = {"F16": np.float16, "BF16": ml_dtypes.bfloat16, "F32": np.float32, "F8_E4M3": ml_dtypes.float8_e4m3fn}
    start = path.stat().st_size - sum(t.nbytes for t in layout.tensors)
    raw = path.read_bytes()[start:]
    for t in layout.tensors:
        lo, hi = header[t.name]["data_offsets"]
        values = np.frombuffer(raw[lo:hi], dtype=dtypes[t.dtype]).astype(np.float32)
        assert np.isfinite(values).all(), t.name
        if t.name.endswith(".scale_weight"):
            assert values.tolist() == [1.0]
        elif t.numel > 10_000 and t.dtype != "F8_E4M3":
            assert 0.01 < values.std() < 0.03, t.name


def test_gguf_file_has_the_layout(tmp_path):
    import gguf
    from gguf.quants import dequantize

    layout = two_blocks(TINY["steadydancer_gguf_q4_k_m"])
    path = tmp_path / layout.filename
    record = sw.write(layout, path)
    assert record["sha256"] == hashlib.sha256(path.read_bytes()).hexdigest()
    reader = gguf.GGUFReader(path)
    assert [t.name for t in reader.tensors] == [t.name for t in layout.tensors]
    field = reader.get_field("general.file_type")
    assert int(field.parts[field.data[0]][0]) == sw.GGUF_FILE_TYPE_Q4_K_M
    seen = set()
    for spec, tensor in zip(layout.tensors, reader.tensors):
        assert tensor.tensor_type.name == spec.dtype
        assert tuple(int(d) for d in reversed(tensor.shape)) == spec.shape  # GGUF stores dims innermost first
        if spec.dtype in ("Q4_K", "Q6_K"):
            values = dequantize(tensor.data, tensor.tensor_type)
            assert values.shape == spec.shape and np.isfinite(values).all() and np.abs(values).max() < 0.2
            seen.add(spec.dtype)
    assert seen == {"Q4_K", "Q6_K"}
    assert next(t for t in reader.tensors if t.name == "patch_embedding.weight").data.shape == (768, 36, 1, 2, 2)


def test_onnx_standins_have_the_real_names_and_shapes(tmp_path):
    import onnx

    sizes = standin_onnx.vitpose(tmp_path, 1 << 20)
    sizes.update(standin_onnx.yolo(tmp_path, 2 << 20))
    assert sizes[standin_onnx.VITPOSE_DATA] == 1 << 20
    assert abs(sizes[standin_onnx.YOLO_MODEL] - (2 << 20)) < 64 << 10

    def io(model):
        dims = lambda v: [d.dim_param or d.dim_value for d in v.type.tensor_type.shape.dim]  # noqa: E731
        return ([(v.name, dims(v)) for v in model.graph.input], [(v.name, dims(v)) for v in model.graph.output])

    vit = onnx.load(str(tmp_path / standin_onnx.VITPOSE_MODEL), load_external_data=False)
    assert io(vit) == ([("input_0", ["batch", 3, 256, 192])], [("output_0", ["batch", 133, 64, 48])])
    weights = next(t for t in vit.graph.initializer if t.name == "weights")
    assert {e.key: e.value for e in weights.external_data}["location"] == standin_onnx.VITPOSE_DATA
    yolo = onnx.load(str(tmp_path / standin_onnx.YOLO_MODEL))
    assert io(yolo) == ([("images", [1, 3, 640, 640])], [("output0", [1, 300, 6])])
    onnx.checker.check_model(str(tmp_path / standin_onnx.VITPOSE_MODEL))


def test_stand_in_tokenizer_has_umt5s_vocabulary_size_and_special_ids(tmp_path):
    from tokenizers import Tokenizer

    assert standin_tokenizer.missing(tmp_path)
    path = standin_tokenizer.write(tmp_path)
    assert not standin_tokenizer.missing(tmp_path)
    tokenizer = Tokenizer.from_file(str(path))
    assert tokenizer.get_vocab_size() == 256_300
    assert [tokenizer.token_to_id(t) for t in ("<pad>", "</s>", "<s>", "<unk>")] == [0, 1, 2, 3]
    assert tokenizer.token_to_id("<extra_id_0>") == 256_299 and tokenizer.token_to_id("<extra_id_299>") == 256_000
    ids = tokenizer.encode("a person dancing, 色调艳丽").ids
    assert ids[-1] == 1 and 3 not in ids and len(ids) > 10 and max(ids) < 256_384
