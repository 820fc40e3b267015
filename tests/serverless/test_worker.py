"""The runpod glue: the SDK's arguments come from the settings and its own parser reads them; the SDK stays out of
PID 1; a worker that no job can reach refuses to start with a reason."""

from __future__ import annotations

import subprocess
import sys

import pytest

from supervisor.errors import ConfigError
from supervisor.plan import load_settings
from supervisor.serverless.worker import problems, sdk_argv
from tests.run.conftest import REPO


def test_the_sdks_own_parser_reads_the_local_api_address_from_the_settings():
    import runpod.serverless

    argv = sdk_argv(load_settings({"SERVERLESS_API_ADDR": "0.0.0.0:8123", "LOG_LEVEL": "warning"}), ["--rp_debugger"])
    args, rest = runpod.serverless.parser.parse_known_args(argv[1:])
    assert (args.rp_serve_api, args.rp_api_host, args.rp_api_port, args.rp_log_level, args.rp_debugger) == (
        True, "0.0.0.0", 8123, "WARN", True)
    assert rest == []
    # Without an address it takes jobs from RunPod's queue: no local API flags.
    args, _ = runpod.serverless.parser.parse_known_args(sdk_argv(load_settings({}))[1:])
    assert not args.rp_serve_api


def test_pid_1_never_imports_the_sdk():
    code = ("import sys; import supervisor.run.loop, supervisor.run.services, supervisor.serverless.worker; "
            "print(sorted(m for m in sys.modules if m.split('.')[0] in ('runpod', 'boto3', 'fastapi')))")
    out = subprocess.run([sys.executable, "-c", code], cwd=REPO, capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "[]"


def test_reasons_a_worker_cannot_take_jobs():
    nowhere = problems(load_settings({"SERVERLESS": "true"}), {})
    assert len(nowhere) == 1 and "RUNPOD_WEBHOOK_GET_JOB" in str(nowhere[0])
    assert problems(load_settings({"SERVERLESS": "true"}), {"RUNPOD_WEBHOOK_GET_JOB": "https://x/job-take/$ID"}) == []
    no_bucket = problems(load_settings({"SERVERLESS_OUTPUT": "s3", "SERVERLESS_API_ADDR": "127.0.0.1:1"}), {})
    assert [p.where for p in no_bucket] == ["SERVERLESS_OUTPUT"] and "R2_BUCKET" in no_bucket[0].what


def test_supervisor_worker_without_a_job_source_exits_2_and_says_why():
    env = {"PATH": "/usr/bin:/bin", "SERVERLESS": "true", "LOG_FORMAT": "json"}
    out = subprocess.run([sys.executable, "-m", "supervisor", "worker"], cwd=REPO, env=env, capture_output=True,
                         text=True, timeout=60)
    assert out.returncode == 2
    assert "the serverless worker cannot start" in out.stderr and "SERVERLESS_API_ADDR=127.0.0.1:8000" in out.stderr


def test_the_local_api_address_is_checked_with_the_other_settings():
    with pytest.raises(ConfigError, match="COMFYUI_PORT: port 8188 is also SERVERLESS_API_ADDR's port"):
        load_settings({"SERVERLESS_API_ADDR": "0.0.0.0:8188"})
    with pytest.raises(ConfigError, match="SERVERLESS_API_ADDR: 'localhost' is not valid: expected HOST:PORT"):
        load_settings({"SERVERLESS_API_ADDR": "localhost"})
    assert load_settings({"SERVERLESS_API_ADDR": ""}).serverless_api_addr is None
