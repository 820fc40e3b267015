"""Messages a person reads in /readyz, the status page and the logs (issue 13, item 12)."""

from supervisor.run.loop import _progress_text


def test_the_download_reason_has_units_that_show_a_small_fetch():
    fetch = {"progress": {"total": {"bytes": 1_400_000, "size": 10_000_000, "percent": 14.0, "eta_s": 3.2}}}
    assert _progress_text(fetch) == ": 1.3 MiB of 9.5 MiB (14.0%), about 3 s left"
    big = {"progress": {"total": {"bytes": 12 * 2**30, "size": 30 * 2**30, "percent": 40.0}}}
    assert _progress_text(big) == ": 12.00 GiB of 30.00 GiB (40.0%)"
    assert _progress_text({}) == ""
