from pathlib import Path

import pytest

from supervisor.plan.catalog import load_catalog
from supervisor.errors import ConfigError
from supervisor.plan.settings import Secret, declared_variables, load_settings


@pytest.fixture(scope="module")
def catalog():
    return load_catalog()


def test_defaults(catalog):
    s = load_settings({}, catalog)
    assert s.comfyui_port == 8188
    assert s.gpu_memory_mode == "auto"
    assert s.models_dir == Path("/workspace/ComfyUI/models")
    assert s.features["steadydancer"].enabled and s.features["steadydancer"].variant == "auto"
    assert not s.features["controlnet"].enabled
    assert s.features["controlnet"].choices == ("canny", "depth", "openpose")
    assert s.features["vibevoice"].variant == "Large"
    assert s.warnings == ()


@pytest.mark.parametrize("word, value", [("true", True), ("TRUE", True), ("1", True), ("yes", True), ("On", True),
                                         ("false", False), ("0", False), ("NO", False), ("off", False),
                                         (" true ", True)])
def test_booleans_in_any_case(catalog, word, value):
    s = load_settings({"ENABLE_VACE": word, "PREWARM": word}, catalog)
    assert s.features["vace"].enabled is value
    assert s.prewarm is value


def test_every_bad_value_is_reported_together_with_name_value_and_accepted_values(catalog):
    env = {"ENABLE_STEADYDANCER": "maybe", "COMFYUI_PORT": "80808", "GPU_MEMORY_MODE": "turbo",
           "STEADYDANCER_VARIANT": "gguf:Q3_K", "HEALTH_INTERVAL": "soon", "CONTROLNET_MODELS": "canny,scribble"}
    with pytest.raises(ConfigError) as info:
        load_settings(env, catalog)
    text = info.value.render()
    assert len(info.value.problems) == 6
    assert "ENABLE_STEADYDANCER: 'maybe' is not valid: expected one of true/1/yes/on/false/0/no/off" in text
    assert "COMFYUI_PORT: '80808' is not valid: expected a whole number from 1 to 65535" in text
    assert "GPU_MEMORY_MODE: 'turbo' is not valid: expected one of: auto, full, model_cpu_offload, " \
           "sequential_cpu_offload" in text
    assert "STEADYDANCER_VARIANT: 'gguf:Q3_K' is not valid: expected one of: auto, bf16, fp16, fp8, gguf, " \
           "gguf:Q6_K" in text
    assert "HEALTH_INTERVAL: 'soon'" in text
    assert "CONTROLNET_MODELS: 'canny,scribble' is not valid: unknown scribble" in text


@pytest.mark.parametrize("raw, parsed", [("auto", "auto"), ("fp16", "fp16"), ("BF16", "bf16"), ("fp8", "fp8"),
                                         ("gguf", "gguf"), ("gguf:Q4_K_M", "gguf:Q4_K_M"),
                                         ("GGUF:q6_k", "gguf:Q6_K")])
def test_steadydancer_variant_values(catalog, raw, parsed):
    assert load_settings({"STEADYDANCER_VARIANT": raw}, catalog).features["steadydancer"].variant == parsed


@pytest.mark.parametrize("mode", ["auto", "full", "model_cpu_offload", "sequential_cpu_offload", "FULL"])
def test_gpu_memory_modes(catalog, mode):
    assert load_settings({"GPU_MEMORY_MODE": mode}, catalog).gpu_memory_mode == mode.lower()


def test_unknown_switch_is_a_warning_with_a_suggestion(catalog):
    s = load_settings({"ENABLE_STEADYDANCR": "true", "ENABLE_NOTHING_LIKE_IT": "1"}, catalog)
    assert "unknown switch ENABLE_STEADYDANCR is ignored; did you mean ENABLE_STEADYDANCER?" in s.warnings
    assert "unknown switch ENABLE_NOTHING_LIKE_IT is ignored" in s.warnings


def test_known_non_catalogue_switch_is_not_unknown(catalog):
    s = load_settings({"ENABLE_R2_SYNC": "false"}, catalog)
    assert s.warnings == ()


def test_secret_values_are_never_in_errors_or_repr(catalog):
    s = load_settings({"HF_TOKEN": "hf_supersecretvalue123456789", "JUPYTER_PASSWORD": "pw-1234"}, catalog)
    assert isinstance(s.hf_token, Secret) and str(s.hf_token) == "hf_supersecretvalue123456789"
    assert "supersecret" not in repr(s) and "pw-1234" not in repr(s)
    assert set(s.secrets()) >= {"hf_supersecretvalue123456789", "pw-1234"}


def test_comfyui_args_are_split_like_a_shell_and_bad_quotes_rejected(catalog):
    s = load_settings({"COMFYUI_ARGS": "--reserve-vram 1.5 --output-directory '/a b'"}, catalog)
    assert s.comfyui_args == ("--reserve-vram", "1.5", "--output-directory", "/a b")
    with pytest.raises(ConfigError, match="COMFYUI_ARGS.*check the quotes"):
        load_settings({"COMFYUI_ARGS": "--x 'open"}, catalog)


def test_civitai_lists_need_version_ids(catalog):
    s = load_settings({"CIVITAI_LORAS": "123, 456,123"}, catalog)
    assert s.features["civitai"].choices == ("123", "456")
    with pytest.raises(ConfigError, match="CIVITAI_LORAS: abc not valid"):
        load_settings({"CIVITAI_LORAS": "123,abc"}, catalog)


def test_declared_variable_defaults_parse():
    names = [v["env"] for v in declared_variables()]
    assert len(names) == len(set(names))
    for v in declared_variables():
        v["parser"](v["raw_default"]) if v["raw_default"] else None


def test_status_addr_parse(catalog):
    assert load_settings({"STATUS_ADDR": "0.0.0.0:9000"}, catalog).status_addr == ("0.0.0.0", 9000)
    with pytest.raises(ConfigError, match="STATUS_ADDR"):
        load_settings({"STATUS_ADDR": "9000"}, catalog)
