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


def test_a_lora_with_the_ray_engine_is_refused_not_ignored(tmp_path, capsys):
    from server.__main__ import main

    assert main(["--engine", "ray", "--lora", str(tmp_path / "lcm.safetensors"), "--model", "tiny-sd"]) == 2
    assert "--lora does not work with --engine ray" in capsys.readouterr().err
