"""fetch_plan end to end against the stand-in Hub: placement, markers, warm boot, repair, snapshots, URLs, dry run,
offline, disk check."""

import os

import pytest

from supervisor.plan import volume
from supervisor.fetch import FetchError, fetch_plan
from supervisor.fetch.report import render_dry_run
from supervisor.plan.types import Download
from tests.fetch.conftest import FAST, TOKEN, hub_file, make_plan, make_settings, payload, sha256

MB = 1_000_000


def gets(hub, key=None):
    return [r for r in hub.requests(key=key) if r.method == "GET"]


def test_files_land_whole_with_markers_and_nothing_else_left_behind(hub, models, events):
    big, small = payload(3 * MB), b'{"dim": 5120}'
    hub.add_file("org/repo", "w.safetensors", big)
    hub.add_file("org/repo", "config.json", small)
    plan = make_plan(hub_file("org/repo", "w.safetensors", "diffusion_models/w.safetensors", 3 * MB),
                     hub_file("org/repo", "config.json", "diffusion_models/config.json", len(small)))
    report = fetch_plan(plan, make_settings(hub, models), tuning=FAST)
    assert report.ok and sorted(report.downloaded) == ["diffusion_models/config.json", "diffusion_models/w.safetensors"]
    assert (models / "diffusion_models/w.safetensors").read_bytes() == big
    assert (models / "diffusion_models/config.json").read_bytes() == small
    marker = volume.read_marker(models, "diffusion_models/w.safetensors")
    assert marker.sha256 == sha256(big) and marker.source == "org/repo@main:w.safetensors"
    assert report.bytes_downloaded == len(big) + len(small)
    # Several ranged connections for the large file; the CDN never saw the token (none was set here anyway).
    ranged = [r for r in gets(hub, "org/repo/w.safetensors") if r.range]
    assert len({r.range for r in ranged}) > 4
    leftovers = [p for p in models.rglob("*") if p.name.endswith((".partial", ".tmp", ".lock"))]
    assert leftovers == []
    names = {e["event"] for e in events.all()}
    assert {"fetch.resolve", "fetch.start", "fetch.done", "fetch.summary"} <= names


def test_warm_boot_makes_no_request_and_hashes_nothing(hub, models, events):
    for i in range(20):
        hub.add_file("org/repo", f"f{i}.bin", payload(150_000, seed=i))
    plan = make_plan(*(hub_file("org/repo", f"f{i}.bin", f"loras/f{i}.bin", 150_000) for i in range(20)))
    settings = make_settings(hub, models)
    assert fetch_plan(plan, settings, tuning=FAST).ok
    hub.reset_log()
    hashed = len([e for e in events.all("fetch.verified") if e["how"] != "marker"])
    report = fetch_plan(plan, settings, tuning=FAST)
    assert hub.log == [] and len(report.verified) == 20 and report.downloaded == []
    # Markers only: no hashing (the milliseconds are measured by bench/download.py's warm boot).
    assert len([e for e in events.all("fetch.verified") if e["how"] != "marker"]) == hashed


def test_token_goes_to_the_hub_only_never_to_the_cdn(hub, models, events):
    data = payload(400_000)
    hub.add_file("org/gated", "w.bin", data)
    hub.gate("org/gated", TOKEN)
    plan = make_plan(hub_file("org/gated", "w.bin", "loras/w.bin", len(data)))
    assert fetch_plan(plan, make_settings(hub, models, HF_TOKEN=TOKEN), tuning=FAST).ok
    hub_requests = hub.requests(origin="hub")
    cdn_requests = hub.requests(origin="cdn")
    assert hub_requests and all(r.authorization == f"Bearer {TOKEN}" for r in hub_requests)
    assert cdn_requests and all(r.authorization is None for r in cdn_requests)
    assert TOKEN not in events.text


def test_snapshot_lists_the_tree_keeps_allowed_files_and_verifies_each(hub, models):
    hub.add_file("org/snap", "model.safetensors", payload(500_000, seed=1))
    hub.add_file("org/snap", "config.json", b'{"a": 1}')
    hub.add_file("org/snap", "sub/tokenizer.json", b'{"t": 2}')
    hub.add_file("org/snap", "extra.bin", payload(200_000, seed=2))
    snap = Download(key="snap", dest="vibevoice/Snap", kind="snapshot", size=0, repo="org/snap", auth_env="HF_TOKEN",
                    allow=("*.json", "model.safetensors"), features=("test",))
    settings = make_settings(hub, models)
    report = fetch_plan(make_plan(snap), settings, tuning=FAST)
    assert report.ok and report.downloaded == ["vibevoice/Snap"]
    assert (models / "vibevoice/Snap/sub/tokenizer.json").read_bytes() == b'{"t": 2}'
    assert not (models / "vibevoice/Snap/extra.bin").exists()
    assert volume.file_state(models, snap) == volume.VERIFIED
    assert [p for p in hub.requests(origin="hub") if "/tree/" in p.path]
    hub.reset_log()
    assert fetch_plan(make_plan(snap), settings, tuning=FAST).verified == ["vibevoice/Snap"]
    assert hub.log == []
    # One file damaged: only that one is fetched again.
    (models / "vibevoice/Snap/config.json").write_bytes(b"{}")
    report = fetch_plan(make_plan(snap), settings, tuning=FAST)
    assert report.ok and (models / "vibevoice/Snap/config.json").read_bytes() == b'{"a": 1}'
    assert {r.key for r in gets(hub) if r.key.startswith("org/snap/")} == {"org/snap/config.json"}


def test_url_file_follows_the_redirect_and_keeps_the_token_on_the_first_origin(hub, models, events):
    data = payload(700_000, seed=9)
    hub.add_file("civitai/models", "12345", data)
    hub.civitai_token = "civitai-secret-key-123"
    url = Download(key="c", dest="loras/civitai_12345.safetensors", kind="url", size=0,
                   url=f"{hub.url}/api/download/models/12345", auth_env="CIVITAI_API_KEY", features=("illustrious",))
    report = fetch_plan(make_plan(url), make_settings(hub, models, CIVITAI_API_KEY="civitai-secret-key-123"),
                        tuning=FAST)
    assert report.ok and (models / url.dest).read_bytes() == data
    assert all(r.authorization == "Bearer civitai-secret-key-123" for r in hub.requests(origin="hub"))
    assert all(r.authorization is None for r in hub.requests(origin="cdn"))
    assert "civitai-secret-key-123" not in events.text
    assert volume.read_marker(models, url.dest).sha256 == sha256(data)


def test_url_file_without_the_key_is_an_access_error(hub, models):
    hub.add_file("civitai/models", "7", b"x" * 10)
    hub.civitai_token = "needed-key-0000"
    url = Download(key="c", dest="loras/c7.safetensors", kind="url", size=0, url=f"{hub.url}/api/download/models/7",
                   auth_env="CIVITAI_API_KEY", features=("illustrious",))
    with pytest.raises(FetchError) as caught:
        fetch_plan(make_plan(url), make_settings(hub, models), tuning=FAST)
    assert caught.value.exit_code == 2 and "CIVITAI_API_KEY" in str(caught.value)


def test_truncated_leftover_is_repaired_by_resuming_from_its_last_byte(hub, models, events):
    data = payload(2 * MB, seed=4)
    hub.add_file("org/repo", "w.bin", data)
    target = models / "loras/w.bin"
    target.parent.mkdir(parents=True)
    target.write_bytes(data[:1_200_000])  # the old template counted anything over 1 MB as complete
    plan = make_plan(hub_file("org/repo", "w.bin", "loras/w.bin", 2 * MB))
    report = fetch_plan(plan, make_settings(hub, models), tuning=FAST)
    assert report.ok and report.repaired == ["loras/w.bin"] and target.read_bytes() == data
    assert report.bytes_downloaded == 800_000
    starts = [int(r.range.split("=")[1].split("-")[0]) for r in gets(hub, "org/repo/w.bin")]
    assert starts and min(starts) == 1_200_000
    assert events.all("fetch.repaired")[0]["size_found"] == 1_200_000


def test_leftover_of_the_right_size_is_hashed_and_adopted_without_downloading(hub, models, events):
    data = payload(600_000, seed=5)
    hub.add_file("org/repo", "w.bin", data)
    (models / "loras").mkdir()
    (models / "loras/w.bin").write_bytes(data)
    report = fetch_plan(make_plan(hub_file("org/repo", "w.bin", "loras/w.bin", 123)), make_settings(hub, models),
                        tuning=FAST)
    assert report.ok and report.verified == ["loras/w.bin"] and report.downloaded == []
    assert gets(hub) == [] and [e["how"] for e in events.all("fetch.verified")] == ["hashed"]
    assert events.all("fetch.size_differs")[0]["server"] == 600_000


def test_same_size_but_other_bytes_is_downloaded_again(hub, models):
    data = payload(300_000, seed=6)
    hub.add_file("org/repo", "w.bin", data)
    (models / "loras").mkdir()
    (models / "loras/w.bin").write_bytes(bytes(300_000))
    report = fetch_plan(make_plan(hub_file("org/repo", "w.bin", "loras/w.bin", 300_000)),
                        make_settings(hub, models), tuning=FAST)
    assert report.ok and report.repaired == ["loras/w.bin"] and (models / "loras/w.bin").read_bytes() == data


def test_verify_rehashes_and_repairs_silent_corruption(hub, models, events):
    data = payload(500_000, seed=7)
    hub.add_file("org/repo", "w.bin", data)
    plan = make_plan(hub_file("org/repo", "w.bin", "loras/w.bin", 500_000))
    settings = make_settings(hub, models)
    assert fetch_plan(plan, settings, tuning=FAST).ok
    target = models / "loras/w.bin"
    stat = target.stat()
    with open(target, "r+b") as handle:  # bit rot: same size, same mtime
        handle.seek(1000)
        handle.write(b"\x00")
    os.utime(target, ns=(stat.st_atime_ns, stat.st_mtime_ns))
    hub.reset_log()
    assert fetch_plan(plan, settings, tuning=FAST).verified == ["loras/w.bin"], "markers trust size and mtime"
    assert hub.log == []
    report = fetch_plan(plan, settings, verify=True, tuning=FAST)
    assert report.ok and report.repaired == ["loras/w.bin"] and target.read_bytes() == data
    assert any(e["reason"].startswith("sha256 differs") for e in events.all("fetch.repaired"))


def test_verify_without_damage_needs_no_network(hub, models):
    hub.add_file("org/repo", "w.bin", payload(200_000))
    plan = make_plan(hub_file("org/repo", "w.bin", "loras/w.bin", 200_000))
    settings = make_settings(hub, models)
    fetch_plan(plan, settings, tuning=FAST)
    hub.reset_log()
    assert fetch_plan(plan, settings, verify=True, tuning=FAST).verified == ["loras/w.bin"]
    assert hub.log == []


def test_pinned_sha256_that_the_hub_contradicts_is_a_clear_error(hub, models):
    hub.add_file("org/repo", "w.bin", payload(200_000))
    plan = make_plan(hub_file("org/repo", "w.bin", "loras/w.bin", 200_000, sha256="ab" * 32))
    with pytest.raises(FetchError) as caught:
        fetch_plan(plan, make_settings(hub, models), tuning=FAST)
    message = str(caught.value)
    assert "catalogue pins sha256" in message and "abab" in message and caught.value.exit_code == 2
    assert not (models / "loras/w.bin").exists() and gets(hub) == []


def test_dry_run_lists_exact_sizes_and_downloads_nothing(hub, models):
    hub.add_file("org/repo", "a.bin", payload(250_000))
    hub.add_file("org/repo", "b.bin", payload(150_000))
    plan = make_plan(hub_file("org/repo", "a.bin", "loras/a.bin", 1), hub_file("org/repo", "b.bin", "loras/b.bin", 1))
    report = fetch_plan(plan, make_settings(hub, models, DRY_RUN="true"), tuning=FAST)
    assert report.dry_run and report.bytes_planned == 400_000 and gets(hub) == []
    assert not (models / "loras").exists()
    text = render_dry_run(report)
    assert "loras/a.bin" in text and "total: 390.6 KiB" in text


def test_offline_succeeds_when_all_is_present_and_lists_what_is_missing_otherwise(hub, models):
    hub.add_file("org/repo", "a.bin", payload(150_000))
    plan = make_plan(hub_file("org/repo", "a.bin", "loras/a.bin", 150_000))
    fetch_plan(plan, make_settings(hub, models), tuning=FAST)
    hub.reset_log()
    offline = make_settings(hub, models, HF_HUB_OFFLINE="1")
    assert fetch_plan(plan, offline, tuning=FAST).ok
    missing = make_plan(hub_file("org/repo", "a.bin", "loras/a.bin", 150_000),
                        hub_file("org/repo", "b.bin", "loras/b.bin", 9_000_000_000))
    with pytest.raises(FetchError) as caught:
        fetch_plan(missing, offline, tuning=FAST)
    assert "loras/b.bin" in str(caught.value) and "8.38 GiB" in str(caught.value)
    assert "HF_HUB_OFFLINE" in str(caught.value) and caught.value.report.failed.keys() == {"loras/b.bin"}
    assert hub.log == []


def test_not_enough_disk_is_refused_before_any_byte(hub, models):
    hub.add_file("org/repo", "a.bin", payload(150_000))
    plan = make_plan(hub_file("org/repo", "a.bin", "loras/a.bin", 150_000))
    with pytest.raises(FetchError) as caught:
        fetch_plan(plan, make_settings(hub, models, DISK_RESERVE_GB="100000"), tuning=FAST)
    assert "free" in str(caught.value) and "DISK_RESERVE_GB=100000" in str(caught.value)
    assert gets(hub) == []


def test_progress_reaches_the_callback_and_the_log(hub, models, events):
    hub.rate = 400_000  # bytes/s per connection: the download lasts long enough for a few ticks
    hub.add_file("org/repo", "w.bin", payload(1 * MB))
    snapshots = []
    fetch_plan(make_plan(hub_file("org/repo", "w.bin", "loras/w.bin", MB)), make_settings(hub, models),
               on_progress=snapshots.append, tuning=FAST)
    assert len(snapshots) >= 2
    last = snapshots[-1]
    assert last["total"]["bytes"] == MB and last["total"]["percent"] == 100.0
    assert {"dest", "bytes", "percent", "mb_per_s", "eta_s"} <= set(last["files"][0])
    ticks = events.all("fetch.progress")
    assert ticks and {"bytes", "percent", "mb_per_s", "eta_s"} <= set(ticks[0])
    assert events.all("fetch.progress_total")


def test_gated_snapshot_names_the_repo_and_what_to_do(hub, models):
    hub.add_file("org/gatedsnap", "config.json", b"{}")
    hub.gate("org/gatedsnap", TOKEN)
    snap = Download(key="s", dest="vibevoice/G", kind="snapshot", size=0, repo="org/gatedsnap", auth_env="HF_TOKEN",
                    features=("vibevoice",))
    with pytest.raises(FetchError) as caught:
        fetch_plan(make_plan(snap), make_settings(hub, models), tuning=FAST)
    assert "org/gatedsnap is gated" in str(caught.value) and "vibevoice" in str(caught.value)
    assert caught.value.report.failed.keys() == {"vibevoice/G"}


def test_one_failure_does_not_stop_the_other_files(hub, models):
    hub.add_file("org/repo", "good.bin", payload(300_000))
    plan = make_plan(hub_file("org/repo", "good.bin", "loras/good.bin", 300_000),
                     hub_file("org/missing", "x.bin", "loras/x.bin", 10))
    with pytest.raises(FetchError) as caught:
        fetch_plan(plan, make_settings(hub, models), tuning=FAST)
    assert caught.value.report.downloaded == ["loras/good.bin"] and (models / "loras/good.bin").exists()


def test_dry_run_still_lists_what_it_could_not_resolve(hub, models):
    hub.add_file("org/repo", "a.bin", payload(250_000))
    plan = make_plan(hub_file("org/repo", "a.bin", "loras/a.bin", 1),
                     hub_file("org/nothere", "b.bin", "loras/b.bin", 7_000_000))
    report = fetch_plan(plan, make_settings(hub, models), dry_run=True, tuning=FAST)
    assert report.bytes_planned == 250_000 + 7_000_000 and "loras/b.bin" in report.failed
    text = render_dry_run(report)
    assert "6.7 MiB (est.)" in text and "problem: loras/b.bin: repository org/nothere not found" in text
