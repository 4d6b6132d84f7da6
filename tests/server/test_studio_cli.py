"""The studio's command line: ``--engine``, ``--replicas``, ``--users`` are checked before any
model (or Ray) loads, and a bad users file is refused without repeating a token."""

from __future__ import annotations

import json
import pathlib
import subprocess
import sys

import pytest

from server.__main__ import parse_args

ROOT = pathlib.Path(__file__).resolve().parents[2]
SECRET = "a-studio-token-never-printed"


def run_server(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "server", *args], cwd=ROOT, capture_output=True,
                          text=True, timeout=60)


def test_the_engine_and_replicas_options():
    args = parse_args(["--engine", "ray", "--ray-address", "ray://head:10001", "--replicas", "3"])
    assert (args.engine, args.ray_address, args.replicas) == ("ray", "ray://head:10001", 3)
    assert parse_args([]).engine == "inprocess" and parse_args([]).replicas == "auto"
    for bad in ("0", "two", "-1"):
        with pytest.raises(SystemExit):
            parse_args(["--replicas", bad])


def test_a_bad_users_file_stops_the_server_at_once_without_printing_tokens(tmp_path):
    users = tmp_path / "users.json"
    users.write_text(json.dumps({"users": {"alice": {"token": SECRET, "models": ["sdxl"]}}}))
    done = run_server("--model", "tiny-sd", "--users", str(users))
    assert done.returncode == 2
    assert "sdxl not served" in done.stderr and SECRET not in done.stderr + done.stdout


def test_a_users_file_counts_as_a_token_for_an_open_bind(tmp_path):
    users = tmp_path / "users.json"
    users.write_text(json.dumps({"users": {"alice": {"token": SECRET}}}))
    # Past the bind check, the model is not found: proof the bind was accepted.
    done = run_server("--host", "0.0.0.0", "--users", str(users), "--model", "/nonexistent/model")
    assert "not found" in done.stderr and "Refusing to listen" not in done.stderr
    assert SECRET not in done.stderr + done.stdout


def test_the_serve_application_is_named_per_server_unless_the_operator_names_it():
    from server.ray_engine import default_app_name

    assert parse_args(["--ray-app-name", "studio-a"]).ray_app_name == "studio-a"
    assert parse_args([]).ray_app_name is None
    # One per machine and port: a restarted server takes its own application back.
    assert default_app_name(7860, "gpu-head.studio.lan") == "diffdiff-gpu-head-7860"
    assert default_app_name(7861, "gpu-head") != default_app_name(7860, "gpu-head")
    # Port 0 (not bound yet): never the same twice.
    assert default_app_name(0, "gpu-head") != default_app_name(0, "gpu-head")
