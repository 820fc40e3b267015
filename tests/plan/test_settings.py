from pathlib import Path

import pytest

from supervisor.plan.catalog_load import load_catalog
from supervisor.errors import ConfigError
from supervisor.plan.settings import Secret, declared_variables
from supervisor.plan.environment import load_settings


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
    assert load_settings({"STATUS_ADDR": "127.0.0.1:9000"}, catalog).status_addr == ("127.0.0.1", 9000)
    assert load_settings({"STATUS_ADDR": "[::1]:9000"}, catalog).status_addr == ("::1", 9000)
    assert load_settings({"STATUS_ADDR": "localhost:9000"}, catalog).status_addr == ("localhost", 9000)
    with pytest.raises(ConfigError, match="STATUS_ADDR"):
        load_settings({"STATUS_ADDR": "9000"}, catalog)


@pytest.mark.parametrize("addr", ["0.0.0.0:8189", "[::]:8189", "10.0.0.5:8189", "pod.example:8189"])
def test_a_status_addr_off_loopback_is_refused(catalog, addr):
    # The endpoint has no authentication: README and RUNPOD.md promise loopback only.
    with pytest.raises(ConfigError) as info:
        load_settings({"STATUS_ADDR": addr}, catalog)
    (problem,) = info.value.problems
    assert problem.where == "STATUS_ADDR" and "loopback" in problem.what and "STATUS_PUBLIC=true" in problem.fix
    # Said explicitly (Kubernetes probes come from the node): served there.
    public = load_settings({"STATUS_ADDR": addr, "STATUS_PUBLIC": "true"}, catalog)
    assert public.status_public and public.status_addr[1] == 8189


@pytest.mark.parametrize("variable", ["DISK_RESERVE_GB", "STARTUP_TIMEOUT", "STEADYDANCER_GUIDE_SCALE"])
@pytest.mark.parametrize("raw", ["nan", "NaN", "inf", "-inf"])
def test_non_finite_numbers_are_refused(catalog, variable, raw):
    with pytest.raises(ConfigError) as info:
        load_settings({variable: raw}, catalog)
    assert info.value.problems[0].where == variable and "finite" in info.value.problems[0].what


@pytest.mark.parametrize("name", ["GPU_MEMORY_MODE", "STEADYDANCER_VARIANT", "ENABLE_STEADYDANCER", "COMFYUI_PORT",
                                  "MODELS_DIR", "STATUS_ADDR", "DISK_RESERVE_GB", "CONTROLNET_MODELS"])
@pytest.mark.parametrize("blank", ["", "  "])
def test_an_empty_variable_means_its_default(catalog, name, blank):
    # RunPod's template form sends a blank field as an empty variable.
    assert load_settings({name: blank}, catalog) == load_settings({}, catalog)


@pytest.mark.parametrize("typo, meant", [("STEADYDANCER_VARINT", "STEADYDANCER_VARIANT"),
                                         ("GPU_MEMORY_MOD", "GPU_MEMORY_MODE"),
                                         ("GPU_MEMROY_MODE", "GPU_MEMORY_MODE"),
                                         ("HF_TOKN", "HF_TOKEN"),
                                         ("DISK_RESERVE_GBS", "DISK_RESERVE_GB"),
                                         ("QWEN_EDIT_MODLE", "QWEN_EDIT_MODEL")])
def test_a_variable_one_typo_from_a_known_one_is_warned(catalog, typo, meant):
    s = load_settings({typo: "x"}, catalog)
    assert f"unknown variable {typo} is ignored; did you mean {meant}?" in s.warnings


def test_unrelated_variables_are_not_warned(catalog):
    env = {"PATH": "/bin", "HOME": "/root", "CUDA_VISIBLE_DEVICES": "0", "RUNPOD_POD_ID": "x", "HF_HOME": "/x",
           "PYTHONPATH": "/x", "NVIDIA_VISIBLE_DEVICES": "all"}
    assert load_settings(env, catalog).warnings == ()


def test_models_dir_that_is_a_file_names_the_variable(catalog, tmp_path):
    afile = tmp_path / "models"
    afile.write_text("not a folder")
    with pytest.raises(ConfigError) as info:
        load_settings({"MODELS_DIR": str(afile)}, catalog)
    (problem,) = info.value.problems
    assert problem.where == "MODELS_DIR" and "is a file" in problem.what and problem.fix


def test_warmup_workflow_must_exist_when_configured(catalog, tmp_path):
    with pytest.raises(ConfigError) as info:
        load_settings({"WARMUP_WORKFLOW": str(tmp_path / "missing.json")}, catalog)
    assert info.value.problems[0].where == "WARMUP_WORKFLOW" and "does not exist" in info.value.problems[0].what
    present = tmp_path / "warm.json"
    present.write_text("{}")
    assert load_settings({"WARMUP_WORKFLOW": str(present)}, catalog).warmup_workflow == present


@pytest.mark.parametrize("value, ok", [("0.0.0.0", True), ("127.0.0.1", True), ("::", True), ("0.0.0.0,::", True),
                                       ("localhost", True), ("comfy-host", True), ("not an ip", False),
                                       ("300.1.2.3:8188", False), ("http://0.0.0.0", False)])
def test_comfyui_listen_is_checked_at_configuration_time(catalog, value, ok):
    if ok:
        assert load_settings({"COMFYUI_LISTEN": value}, catalog).comfyui_listen == value
    else:
        with pytest.raises(ConfigError, match="COMFYUI_LISTEN"):
            load_settings({"COMFYUI_LISTEN": value}, catalog)
