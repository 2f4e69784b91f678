"""`cluster.yaml` as `ray up` reads it: filled out with the local provider's defaults (`prepare_config`) and
checked with Ray's own validator against its `ray-schema.json`, plus what a user of the file relies on."""

from __future__ import annotations

import copy
import re
import tomllib
from pathlib import Path
from typing import Any

import jsonschema
import pytest
import yaml
from ray.autoscaler._private.util import prepare_config, validate_config

ROOT = Path(__file__).resolve().parents[2]


def load() -> dict[str, Any]:
    return yaml.safe_load((ROOT / "cluster.yaml").read_text(encoding="utf-8"))


def prepared(config: dict[str, Any]) -> dict[str, Any]:
    """What `ray up` validates (`commands._bootstrap_config`): the config merged with the provider's defaults."""
    return prepare_config(copy.deepcopy(config))


def ray_start(commands: list[str]) -> str:
    [start] = [c for c in commands if "ray start" in c]
    return start


def test_ray_accepts_the_cluster_config() -> None:
    config = prepared(load())
    validate_config(config)
    node = config["available_node_types"][config["head_node_type"]]
    workers = len(config["provider"]["worker_ips"])
    assert (node["min_workers"], node["max_workers"], config["max_workers"]) == (workers, workers, workers)


def test_ray_listens_off_redis_port_with_a_reachable_dashboard_and_token_auth() -> None:
    config = prepared(load())
    head, worker = ray_start(config["head_start_ray_commands"]), ray_start(config["worker_start_ray_commands"])
    match = re.search(r"--port=(\d+)", head)
    assert match is not None, head
    gcs = match.group(1)
    assert f"--address=$RAY_HEAD_IP:{gcs}" in worker
    every_command = [c for key, value in config.items() if key.endswith("_commands") for c in value]
    assert not any("6379" in c for c in every_command), "Redis holds 6379 on the hosts"
    assert "--dashboard-host=0.0.0.0" in head and "--dashboard-port=8265" in head
    # Every host runs in token mode with the one token the launching machine has (and `ipai submit` sends).
    assert "RAY_AUTH_MODE=token" in head and "RAY_AUTH_MODE=token" in worker
    assert config["file_mounts"]["~/.ray/auth_token"] == "~/.ray/auth_token"


def test_every_host_installs_the_platform_from_the_checkout_and_jobs_find_it() -> None:
    config = prepared(load())
    assert config["file_mounts"]["~/ipai"] == "."
    assert {".venv", ".git"} <= set(config["rsync_exclude"])  # each host builds its own venv
    for setup in (config["head_setup_commands"], config["worker_setup_commands"]):
        assert any(re.search(r"cd ~/ipai && \.venv/bin/pip install .*-e \.$", c) for c in setup), setup
    assert "ipai" in tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["scripts"]
    # A job's entrypoint is a shell command run by the raylet's environment: `python` and `ipai` must be the venv's.
    for start in (ray_start(config["head_start_ray_commands"]), ray_start(config["worker_start_ray_commands"])):
        assert 'export PATH="$HOME/ipai/.venv/bin:$PATH"' in start


@pytest.mark.parametrize("breakage", [
    pytest.param(lambda c: c.update(max_wrokers=2), id="misspelt key"),
    pytest.param(lambda c: c.update(head_start_ray_commands="ray start --head"), id="commands not a list"),
    pytest.param(lambda c: c.update(idle_timeout_minutes="five"), id="minutes not a number"),
    pytest.param(lambda c: c["auth"].update(ssh_usr="ipai"), id="unknown auth field"),
])
def test_the_validator_rejects_a_broken_copy(breakage) -> None:
    config = load()
    breakage(config)
    with pytest.raises(jsonschema.ValidationError):
        validate_config(prepared(config))
