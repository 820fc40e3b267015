import json
from pathlib import Path

import pytest

from supervisor.plan import hardware as hw
from supervisor.plan import probe as hwprobe
from supervisor.errors import ConfigError

from .fake_nvml import FakeNvml, NVMLError

H200_UUIDS = ["GPU-e18fae57-fdba-adf4-838d-2729966c9c46", "GPU-d9e63e19-918d-33b4-cb59-c7d708704fbc"]


def probe(tmp_path, reading="h100-x1.json", environ=None, **kwargs):
    nvml = FakeNvml.from_file(reading, **kwargs)
    return hwprobe.probe(tmp_path, environ or {}, nvml=nvml), nvml


def test_h100_reading_gives_nvml_bytes_and_reserved(tmp_path):
    found, nvml = probe(tmp_path)
    (gpu,) = found.gpus
    assert gpu.name == "NVIDIA H100 80GB HBM3"
    assert gpu.total == 85_520_809_984
    assert gpu.reserved == 503_316_480  # memory v2 moves the driver's share out of "used"
    assert gpu.compute_capability == (9, 0)
    assert gpu.uuid == "GPU-225be9ea-b927-46e6-44a3-66a8ab517eae"
    assert gpu.cuda_index == 0
    assert found.driver_version == "580.159.04" and found.cuda_driver_version == 13000
    assert nvml.shutdowns == 1


def test_without_memory_v2_reserved_is_zero_not_a_crash(tmp_path):
    found, _ = probe(tmp_path, v2=False)
    assert found.gpus[0].reserved == 0
    assert found.gpus[0].total == 85_520_809_984


def test_no_driver_gives_cpu_only_description_with_warning(tmp_path):
    nvml = FakeNvml(None, init_error=NVMLError("Driver Not Loaded"))
    found = hwprobe.probe(tmp_path, {}, nvml=nvml)
    assert found.gpus == ()
    assert any("NVML unavailable" in w for w in found.warnings)
    assert any("CPU only" in w for w in found.warnings)
    assert found.ram_total > 0 and found.disk_free > 0


@pytest.mark.parametrize(
    "environ, expected",
    [
        ({}, [0, 1]),
        ({"CUDA_VISIBLE_DEVICES": "1"}, [1]),
        ({"CUDA_VISIBLE_DEVICES": "1,0"}, [1, 0]),
        ({"CUDA_VISIBLE_DEVICES": H200_UUIDS[1]}, [1]),
        ({"CUDA_VISIBLE_DEVICES": "GPU-d9e63e19"}, [1]),  # CUDA accepts a unique UUID prefix
        ({"CUDA_VISIBLE_DEVICES": "0,7,1"}, [0]),  # CUDA stops at the first entry it cannot use
        ({"CUDA_VISIBLE_DEVICES": ""}, []),
        ({"CUDA_VISIBLE_DEVICES": "-1"}, []),
        ({"CUDA_VISIBLE_DEVICES": "all"}, [0, 1]),
        ({"NVIDIA_VISIBLE_DEVICES": "all"}, [0, 1]),
        ({"NVIDIA_VISIBLE_DEVICES": "none"}, []),
        ({"NVIDIA_VISIBLE_DEVICES": "void"}, []),
        ({"NVIDIA_VISIBLE_DEVICES": ""}, []),
        ({"NVIDIA_VISIBLE_DEVICES": H200_UUIDS[0]}, [0]),
        # A privileged container sees both; NVIDIA_VISIBLE_DEVICES=1 then means the second one.
        ({"NVIDIA_VISIBLE_DEVICES": "1"}, [1]),
        # The runtime already mounted exactly two GPUs: their host indexes say nothing about ours.
        ({"NVIDIA_VISIBLE_DEVICES": "3,5"}, [0, 1]),
        ({"NVIDIA_VISIBLE_DEVICES": "0,1", "CUDA_VISIBLE_DEVICES": "1"}, [1]),
    ],
)
def test_visibility_variables_on_the_two_gpu_h200_reading(tmp_path, environ, expected):
    found, _ = probe(tmp_path, "h200-x2.json", environ)
    assert [g.index for g in found.gpus] == expected
    assert [g.cuda_index for g in found.gpus] == list(range(len(expected)))


def test_measured_fact_nvml_count_ignores_cuda_visible_devices():
    # The reading that motivates apply_visibility, kept beside the fixtures.
    text = (hw_data() / "visibility-h200-x2.txt").read_text()
    assert "CUDA_VISIBLE_DEVICES=1" in text and "->  2" in text and "->  1" in text


def hw_data() -> Path:
    return Path(__file__).resolve().parent.parent / "data" / "nvml"


def test_hidden_gpus_are_warned_about(tmp_path):
    found, _ = probe(tmp_path, "h200-x2.json", {"CUDA_VISIBLE_DEVICES": "0,9"})
    assert any("'9' matches no GPU" in w for w in found.warnings)


def test_cgroup_v2_limit_lowers_ram(tmp_path):
    root = tmp_path / "cg"
    root.mkdir()
    (root / "memory.max").write_text("8589934592\n")
    (root / "memory.current").write_text("1073741824\n")
    total, available, source = hwprobe.probe_ram(root)
    assert (total, source) == (8 * 2**30, "cgroup v2")
    assert available <= 7 * 2**30


def test_cgroup_v1_limit_and_unlimited_values(tmp_path):
    root = tmp_path / "cg"
    (root / "memory").mkdir(parents=True)
    (root / "memory" / "memory.limit_in_bytes").write_text(str(2**30 * 4))
    (root / "memory" / "memory.usage_in_bytes").write_text("0")
    assert hwprobe.probe_ram(root)[0::2] == (4 * 2**30, "cgroup v1")
    (root / "memory" / "memory.limit_in_bytes").write_text("9223372036854771712")  # v1's "no limit"
    assert hwprobe.probe_ram(root)[2] == "psutil"
    (root / "memory.max").write_text("max\n")
    assert hwprobe.probe_ram(root)[2] == "psutil"


def test_disk_is_measured_on_the_nearest_existing_parent(tmp_path):
    path, free = hwprobe.probe_disk(tmp_path / "not" / "yet" / "models")
    assert path == tmp_path and free > 0


def test_json_round_trip_and_hardware_file(tmp_path):
    found, _ = probe(tmp_path, "h200-x2.json")
    saved = tmp_path / "hw.json"
    saved.write_text(json.dumps(found.to_dict()))
    loaded = hw.load(saved)
    assert loaded.gpus == found.gpus
    assert loaded.source == "file"


def test_bad_hardware_file_is_a_config_error(tmp_path):
    bad = tmp_path / "hw.json"
    bad.write_text("{\"gpus\": [{\"name\": 1}]}")
    with pytest.raises(ConfigError, match="not a probe description"):
        hw.load(bad)
    with pytest.raises(ConfigError, match="not found"):
        hw.load(tmp_path / "missing.json")


@pytest.mark.parametrize("name, total", [
    ("A100 40GB", 40960 * 2**20), ("a100-80gb", 81920 * 2**20), ("RTX 4090", 24564 * 2**20),
    ("h100", 85_520_809_984), ("NVIDIA H200", 150_754_820_096), ("L40S", 46068 * 2**20)])
def test_simulated_gpus_use_real_nvml_totals(tmp_path, name, total):
    base, _ = probe(tmp_path)
    simulated = hw.simulate(base, gpu=name)
    assert simulated.gpus[0].total == total
    assert simulated.source == "simulated"


def test_simulation_by_size_and_count():
    base = hw.Hardware(gpus=(), ram_total=2**35, ram_available=2**35, disk_free=10**12, disk_path="/")
    sim = hw.simulate(base, vram="24GiB", count=2, ram="64GiB", disk="100GB")
    assert [g.total for g in sim.gpus] == [24 * 2**30] * 2
    assert [g.cuda_index for g in sim.gpus] == [0, 1]
    assert sim.ram_total == 64 * 2**30 and sim.disk_free == 100 * 10**9
    assert not any("CPU only" in w for w in sim.warnings)


@pytest.mark.parametrize("text, value", [("24", 24 * 2**30), ("24GB", 24 * 10**9), ("24 GiB", 24 * 2**30),
                                         ("24576MiB", 24 * 2**30), ("1.5TB", 15 * 10**11)])
def test_parse_size(text, value):
    assert hw.parse_size(text) == value


def test_unknown_gpu_and_bad_size_are_actionable():
    with pytest.raises(ConfigError, match="unknown GPU 'Voodoo 5'.*use one of"):
        hw.find_gpu("Voodoo 5")
    with pytest.raises(ConfigError, match="'24 bananas' is not a size"):
        hw.parse_size("24 bananas", "--vram")


def test_main_gpu_is_the_largest_visible_one():
    small = hw.Gpu(index=0, cuda_index=0, name="a", uuid="GPU-a", total=8 * 2**30, free=0, reserved=0,
                   compute_capability=(8, 6))
    large = hw.Gpu(index=1, cuda_index=1, name="b", uuid="GPU-b", total=24 * 2**30, free=0, reserved=0,
                   compute_capability=(8, 9))
    machine = hw.Hardware(gpus=(small, large), ram_total=1, ram_available=1, disk_free=1, disk_path="/")
    assert machine.main_gpu() is large


def test_the_real_probe_never_loads_nvml_into_the_supervisor(tmp_path):
    # NVML costs ~21 MB of RSS that nvmlShutdown keeps (measured on an H100 pod): the probe runs in a forked child.
    import subprocess
    import sys

    code = ("import sys; from supervisor.plan import probe; h = probe.probe(sys.argv[1]); "
            "print('pynvml' in sys.modules, h.source, h.ram_total > 0)")
    out = subprocess.run([sys.executable, "-c", code, str(tmp_path)], capture_output=True, text=True, check=True)
    assert out.stdout.split() == ["False", "nvml", "True"]


def test_isolated_probe_reports_like_the_in_process_one():
    isolated: list[str] = []
    direct: list[str] = []
    assert hwprobe.probe_gpus_isolated(isolated) == hwprobe.probe_gpus(None, direct)
    assert isolated == direct


def test_an_ambiguous_uuid_prefix_selects_nothing_as_in_cuda():
    # CUDA refuses a UUID prefix that matches two GPUs (and stops there); so does the probe.
    gpus = [hw.Gpu(index=i, name="H200", uuid=f"GPU-abc{i}0000-1111", total=2**37, free=2**37, reserved=0,
                   compute_capability=(9, 0), pci_bus_id=f"0000:{i:02x}") for i in range(2)]
    warnings: list[str] = []
    assert hwprobe.apply_visibility(gpus, {"CUDA_VISIBLE_DEVICES": "GPU-abc"}, warnings) == []
    assert any("'GPU-abc' matches no GPU" in w for w in warnings)
    chosen = hwprobe.apply_visibility(gpus, {"CUDA_VISIBLE_DEVICES": "GPU-abc1,GPU-abc"}, [])
    assert [(g.index, g.cuda_index) for g in chosen] == [(1, 0)]


def test_the_summary_says_when_nvml_could_not_be_read(tmp_path):
    nvml = FakeNvml(None, init_error=NVMLError("Driver Not Loaded"))
    summary = hwprobe.probe(tmp_path, {}, nvml=nvml).summary()
    assert summary.endswith("[no NVML]") and "[nvml]" not in summary
    ok, _ = probe(tmp_path, "h100-x1.json")
    assert ok.summary().endswith("[nvml]")


def test_a_card_simulated_by_size_is_named_once():
    base = hw.Hardware(gpus=(), ram_total=2**35, ram_available=2**35, disk_free=10**12, disk_path="/")
    summary = hw.simulate(base, vram="12GiB").summary()
    assert summary.startswith("simulated GPU 12.0 GiB (cuda:0);"), summary
