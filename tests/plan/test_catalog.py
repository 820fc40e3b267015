import textwrap

import pytest

from supervisor.plan.catalog import config_dir

from supervisor.plan.catalog_load import load_catalog
from supervisor.errors import ConfigError


def write(tmp_path, text, name="extra.toml"):
    path = tmp_path / name
    path.write_text(textwrap.dedent(text))
    return path


def test_shipped_catalogue_is_valid_and_covers_the_template():
    catalog = load_catalog()
    switches = {f.switch for f in catalog.features.values()}
    template = {"ENABLE_VIBEVOICE", "ENABLE_ZIMAGE", "ENABLE_ILLUSTRIOUS", "ENABLE_ILLUSTRIOUS_EMBEDDINGS",
                "ENABLE_XTTS", "ENABLE_CONTROLNET", "ENABLE_I2V", "ENABLE_VACE", "ENABLE_FUN_INP",
                "ENABLE_STEADYDANCER", "ENABLE_SCAIL", "ENABLE_DWPOSE", "ENABLE_WAN22_DISTILL", "ENABLE_CIVITAI",
                "ENABLE_GENFOCUS", "ENABLE_QWEN_EDIT", "ENABLE_MVINVERSE", "ENABLE_FLASHPORTRAIT",
                "ENABLE_STORYMEM", "ENABLE_INFCAM", "WAN_720P", "WAN_480P"}
    assert template <= switches


def test_steadydancer_uses_the_real_files():
    catalog = load_catalog()
    sd = catalog.features["steadydancer"]
    dests = {catalog.files[k].dest for v in sd.variants.values() for k in v.files}
    assert "diffusion_models/Wan21_SteadyDancer_fp8_e4m3fn_scaled_KJ.safetensors" in dests
    assert "diffusion_models/Wan21_I2V_SteadyDancer_fp16.safetensors" in dests
    assert all(catalog.files[k].folder == "diffusion_models" for v in sd.variants.values() for k in v.files)
    fp8 = catalog.files["steadydancer_fp8_scaled"]
    assert (fp8.repo, fp8.size) == ("Kijai/WanVideo_comfy_fp8_scaled", 16_400_000_000)
    # Known template defects are gone: no bf16 file under an fp8 name, no nonexistent repos.
    sources = {f.repo for f in catalog.files.values()}
    assert not sources & {"kijai/SteadyDancer-14B-pruned", "kijai/wan-2.1-turbodiffusion",
                          "smthem/SteadyDancer-14B-diffusers-gguf-dit"}
    assert catalog.files[sd.roles["text_encoder"]].path == "umt5-xxl-enc-bf16.safetensors"


def test_user_catalogue_adds_a_feature_and_overrides_a_file(tmp_path):
    extra = write(tmp_path, """
        [files.my_lora]
        repo = "me/loras"
        path = "style.safetensors"
        dest = "loras/style.safetensors"
        size = 1000

        [files.wan21_vae_bf16]
        revision = "0123456789abcdef0123456789abcdef01234567"

        [features.my_style]
        switch = "ENABLE_MY_STYLE"
        description = "my LoRA"
        files = ["my_lora", "wan21_vae_bf16"]
    """)
    catalog = load_catalog([extra])
    assert catalog.features["my_style"].files == ("my_lora", "wan21_vae_bf16")
    vae = catalog.files["wan21_vae_bf16"]
    assert vae.revision == "0123456789abcdef0123456789abcdef01234567"
    assert vae.repo == "Kijai/WanVideo_comfy"  # the rest of the entry is kept


def test_validation_errors_name_each_entry_and_come_together(tmp_path):
    extra = write(tmp_path, """
        [files.escapes]
        repo = "a/b"
        path = "x.safetensors"
        dest = "../../etc/x.safetensors"
        size = 1

        [files.absolute]
        repo = "a/b"
        path = "x.safetensors"
        dest = "/etc/x.safetensors"
        size = 1

        [files.odd_folder]
        repo = "a/b"
        path = "x.safetensors"
        dest = "weights/x.safetensors"
        size = 1

        [files.second_source]
        repo = "someone/else"
        path = "vae.safetensors"
        dest = "vae/Wan2_1_VAE_bf16.safetensors"
        size = 1

        [files.bad_size]
        repo = "a/b"
        path = "y.safetensors"
        dest = "loras/y.safetensors"
        size = "12GB"

        [files.negative]
        repo = "a/b"
        path = "z.safetensors"
        dest = "loras/z.safetensors"
        size = -5

        [files.bad_hash]
        repo = "a/b"
        path = "w.safetensors"
        dest = "loras/w.safetensors"
        size = 5
        sha256 = "abc"
        colour = "red"

        [features.broken]
        switch = "ENABLE_BROKEN"
        files = ["nope"]
    """)
    with pytest.raises(ConfigError) as info:
        load_catalog([extra])
    text = info.value.render()
    assert "[files.escapes] in" in text and "escapes models/" in text
    assert "[files.absolute]" in text
    assert "[files.odd_folder]" in text and "unknown folder 'weights'" in text
    assert "[files.second_source]" in text and "also comes from [files.wan21_vae_bf16]" in text
    assert "[files.bad_size]" in text and "field 'size' must be int, got '12GB'" in text
    assert "[files.negative]" in text and "size -5" in text
    assert "[files.bad_hash]" in text and "64 lowercase hex" in text and "unknown field(s) colour" in text
    assert "[features.broken]" in text and "unknown file 'nope'" in text
    assert len(info.value.problems) == 9


def test_two_features_cannot_share_a_switch(tmp_path):
    extra = write(tmp_path, """
        [features.again]
        switch = "ENABLE_STEADYDANCER"
    """)
    with pytest.raises(ConfigError, match="switch ENABLE_STEADYDANCER is also used by feature 'steadydancer'"):
        load_catalog([extra])


def test_unreadable_or_missing_user_catalogue(tmp_path):
    with pytest.raises(ConfigError, match="catalogue file not found"):
        load_catalog([tmp_path / "missing.toml"])
    with pytest.raises(ConfigError, match="cannot read TOML"):
        load_catalog([write(tmp_path, "[files.x\n")])


def test_config_dir_is_found():
    assert (config_dir() / "catalog.toml").is_file()
    assert (config_dir() / "gpus.toml").is_file()
