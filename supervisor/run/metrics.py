"""`GET /metrics`: Prometheus metrics, made from the published status at scrape time.

A custom collector reads one `Status.snapshot()` per scrape and turns it into metric families, so the loop stays
the only owner of the state and nothing is counted twice. prometheus_client is imported on the first scrape, not
with the supervisor. Names: `supervisor_*` for the pod (phase, downloads, restarts, plan, outputs), `comfyui_*`
for what ComfyUI reports (up/ready, queue, prompts, GPU memory). The README lists them all.
"""

from __future__ import annotations

import threading
from typing import Any, Iterator

PHASES = ("starting", "updating_nodes", "launching", "fetching", "checking", "ready", "not_ready", "backoff",
          "stopping", "failed")
FETCH_STATES = ("pending", "running", "done", "failed", "dry_run", "unavailable", "interrupted")
STARTUP_PHASES = ("plan_s", "fetch_s", "comfyui_start_s", "check_s", "warmup_s", "since_supervisor_start_s")

_lock = threading.Lock()
_registries: dict[int, Any] = {}


def render(status: Any) -> tuple[bytes, str]:
    """The exposition text for one scrape, and its content type."""
    from prometheus_client import CONTENT_TYPE_LATEST, generate_latest

    return generate_latest(_registry(status)), CONTENT_TYPE_LATEST


def _registry(status: Any) -> Any:
    from prometheus_client import CollectorRegistry, ProcessCollector

    with _lock:
        registry = _registries.get(id(status))
        if registry is None:
            registry = CollectorRegistry(auto_describe=False)
            registry.register(StatusCollector(status))
            ProcessCollector(registry=registry)  # the supervisor's own RSS, CPU, open files
            _registries[id(status)] = registry
        return registry


class StatusCollector:
    def __init__(self, status: Any):
        self.status = status  # a status.Status: anything with snapshot()

    def collect(self) -> Iterator[Any]:
        from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, HistogramMetricFamily

        s = self.status.snapshot()
        m = _Families(GaugeMetricFamily, CounterMetricFamily)

        # -- the supervisor and its phase ------------------------------------------------------------------
        m.gauge("supervisor_up", "1 while the supervisor's loop is responsive", 1.0 if s.get("live", True) else 0.0)
        m.gauge("supervisor_ready", "1 when the pod is ready (what /readyz says)", float(bool(s.get("ready"))))
        m.gauge("supervisor_uptime_seconds", "Seconds since the supervisor started", s.get("uptime_s") or 0.0)
        phase = m.family("gauge", "supervisor_phase", "1 for the current phase, 0 for the others", ["phase"])
        for name in sorted(set(PHASES) | {str(s.get("phase"))}):
            phase.add_metric([name], 1.0 if name == s.get("phase") else 0.0)
        spent = m.family("counter", "supervisor_phase_seconds", "Seconds spent in each phase so far", ["phase"])
        for name, seconds in sorted((s.get("phase_seconds") or {}).items()):
            spent.add_metric([name], float(seconds))
        startup = m.family("gauge", "supervisor_startup_phase_seconds",
                           "Duration of each start-up phase of the last start that became ready", ["phase"])
        for key in STARTUP_PHASES:
            value = (s.get("phases") or {}).get(key)
            if value is not None:
                startup.add_metric([key[:-2]], float(value))

        # -- downloads ---------------------------------------------------------------------------------------
        fetch = s.get("fetch") or {}
        state = m.family("gauge", "supervisor_fetch_state", "1 for the download job's current state", ["state"])
        for name in sorted(set(FETCH_STATES) | {str(fetch.get("state"))}):
            state.add_metric([name], 1.0 if name == fetch.get("state") else 0.0)
        total = ((fetch.get("progress") or {}).get("total")) or {}
        files = (fetch.get("progress") or {}).get("files") or []
        plan_downloads = (s.get("plan") or {}).get("downloads") or {}
        m.gauge("supervisor_download_size_bytes", "Bytes of the files being fetched (their full size)",
                total.get("size", plan_downloads.get("missing_bytes", 0)) or 0)
        m.gauge("supervisor_download_done_bytes", "Bytes of those files on disk so far", total.get("bytes") or 0)
        m.counter("supervisor_download_received_bytes", "Bytes received from the network by the current job",
                  total.get("fetched") or 0)
        m.gauge("supervisor_download_speed_bytes_per_second", "Download rate over the last seconds",
                total.get("bytes_per_s") or 0)
        if total.get("eta_s") is not None:
            m.gauge("supervisor_download_eta_seconds", "Estimated seconds until the download is complete",
                    total["eta_s"])
        by_state = m.family("gauge", "supervisor_download_files", "Files of the current job by state", ["state"])
        for name in sorted({str(f.get("state")) for f in files} | {"done", "downloading", "failed", "queued"}):
            by_state.add_metric([name], float(sum(1 for f in files if f.get("state") == name)))
        m.gauge("supervisor_download_files_verified", "Files of the current job verified and in place",
                sum(1 for f in files if f.get("state") == "done"))
        m.gauge("supervisor_plan_files", "Files the plan needs", plan_downloads.get("files") or 0)
        m.gauge("supervisor_plan_missing_files", "Files of the plan missing when it was made",
                plan_downloads.get("missing") or 0)

        # -- the plan and its out-of-memory ladder -----------------------------------------------------------
        plan = s.get("plan") or {}
        rung = m.family("gauge", "supervisor_plan_rung",
                        "Steps taken down the out-of-memory ladder (0 = the plan as made)", ["feature"])
        info = m.family("gauge", "supervisor_plan_model_info", "The planned variant and offload of each model",
                        ["feature", "variant", "offload", "blocks_to_swap"])
        for model in plan.get("models") or []:
            feature = str(model.get("feature"))
            rung.add_metric([feature], float((plan.get("degrade") or {}).get(feature, 0)))
            info.add_metric([feature, str(model.get("variant")), str(model.get("offload")),
                             str(model.get("blocks_to_swap"))], 1.0)

        # -- ComfyUI: up, ready, restarts, exits, out of memory (per instance with COMFYUI_PER_GPU) ---------
        instances = [i for i in s.get("instances") or [] if isinstance(i, dict)] or [
            {**(s.get("comfyui") or {}), "name": "comfyui", "ready": s.get("ready"), "restarts": s.get("restarts"),
             "oom": s.get("oom")}]
        up = m.family("gauge", "comfyui_up", "1 while ComfyUI answers its HTTP API", ["comfyui"])
        ready = m.family("gauge", "comfyui_ready", "1 when this ComfyUI is ready", ["comfyui"])
        failures = m.family("gauge", "comfyui_liveness_failures", "Failed liveness checks in a row", ["comfyui"])
        restarts = m.family("counter", "supervisor_comfyui_restarts", "ComfyUI restarts", ["comfyui"])
        ooms = m.family("counter", "supervisor_comfyui_prompt_oom",
                        "Out-of-memory errors inside prompts (ComfyUI kept running), per plan rung", ["comfyui", "rung"])
        for instance in instances:
            name = str(instance.get("name") or "comfyui")
            up.add_metric([name], 1.0 if instance.get("state") in ("answering", "ready") else 0.0)
            ready.add_metric([name], float(bool(instance.get("ready"))))
            failures.add_metric([name], float(instance.get("liveness_failures") or 0))
            restarts.add_metric([name], float((instance.get("restarts") or {}).get("count") or 0))
            oom = instance.get("oom")
            if isinstance(oom, dict):
                for rung_name, count in sorted((oom.get("by_rung") or {}).items()):
                    ooms.add_metric([name, str(rung_name)], float(count or 0))
        exits = m.family("counter", "supervisor_comfyui_exits", "ComfyUI exits by class (oom, crash, killed, ...)",
                         ["class"])
        for klass, count in sorted((s.get("exit_counts") or {}).items()):
            exits.add_metric([klass], float(count))

        # -- queue, prompts, GPU memory (activity.py) --------------------------------------------------------
        activity = s.get("activity") or {}
        queue = activity.get("queue") or {}
        m.gauge("comfyui_queue_pending", "Prompts waiting in ComfyUI's queue", queue.get("pending") or 0)
        m.gauge("comfyui_queue_running", "Prompts running now", queue.get("running") or 0)
        prompts = activity.get("prompts") or {}
        durations = prompts.get("durations") or {}
        bounds = durations.get("bounds") or []
        finished = m.family("counter", "comfyui_prompts", "Finished prompts by outcome", ["status"])
        histogram = HistogramMetricFamily("comfyui_prompt_duration_seconds",
                                          "Execution time of finished prompts (first to last node)", labels=["status"])
        for status_name, entry in sorted((durations.get("by_status") or {}).items()):
            finished.add_metric([status_name], float(entry.get("count") or 0))
            cumulative, buckets = 0, []
            for bound, count in zip(bounds, entry.get("buckets") or []):
                cumulative += count
                buckets.append((_le(bound), float(cumulative)))
            buckets.append(("+Inf", float(entry.get("timed") or 0)))
            histogram.add_metric([status_name], buckets, float(entry.get("sum") or 0.0))
        m.add(histogram)
        used = m.family("gauge", "comfyui_gpu_memory_used_bytes", "GPU memory in use (from ComfyUI's /system_stats)",
                        ["gpu", "name", "comfyui"])
        capacity = m.family("gauge", "comfyui_gpu_memory_total_bytes", "GPU memory of the device",
                            ["gpu", "name", "comfyui"])
        for gpu in activity.get("gpus") or []:
            labels = [str(gpu.get("index")), str(gpu.get("name")), str(gpu.get("comfyui"))]
            used.add_metric(labels, float(gpu.get("vram_total", 0) - gpu.get("vram_free", 0)))
            capacity.add_metric(labels, float(gpu.get("vram_total", 0)))

        # -- outputs to object storage, side services, log events -------------------------------------------
        outputs = s.get("outputs") or {}
        if outputs.get("enabled"):
            m.counter("supervisor_outputs_uploaded", "Output files uploaded", outputs.get("uploaded") or 0)
            m.counter("supervisor_outputs_uploaded_bytes", "Bytes of output files uploaded",
                      outputs.get("uploaded_bytes") or 0)
            m.counter("supervisor_outputs_upload_failures", "Uploads that failed (retried later)",
                      outputs.get("failures") or 0)
            m.gauge("supervisor_outputs_queued", "Output files waiting for upload", outputs.get("pending") or 0)
            m.gauge("supervisor_outputs_uploading", "1 while a file is being uploaded",
                    1.0 if outputs.get("current") else 0.0)
        service_up = m.family("gauge", "supervisor_service_up", "1 while a side service runs", ["service"])
        service_restarts = m.family("counter", "supervisor_service_restarts", "Side service restarts", ["service"])
        for name, service in sorted((s.get("services") or {}).items()):
            service_up.add_metric([name], 1.0 if service.get("state") == "running" else 0.0)
            service_restarts.add_metric([name], float(service.get("restarts") or 0))
        events = m.family("counter", "supervisor_log_events", "Warning and error events logged", ["level"])
        for level, count in sorted((s.get("warning_counts") or {}).items()):
            events.add_metric([level], float(count))
        return iter(m.families)


class _Families:
    def __init__(self, gauge: Any, counter: Any):
        self._types = {"gauge": gauge, "counter": counter}
        self.families: list[Any] = []

    def family(self, kind: str, name: str, doc: str, labels: list[str]) -> Any:
        family = self._types[kind](name, doc, labels=labels)
        self.families.append(family)
        return family

    def add(self, family: Any) -> None:
        self.families.append(family)

    def gauge(self, name: str, doc: str, value: Any) -> None:
        self.families.append(self._types["gauge"](name, doc, value=float(value)))

    def counter(self, name: str, doc: str, value: Any) -> None:
        self.families.append(self._types["counter"](name, doc, value=float(value)))


def _le(bound: float) -> str:
    return repr(float(bound))
