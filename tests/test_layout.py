"""Repository-level facts users rely on: the cluster config is valid for Ray, `mcp` stays the library."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import jsonschema
import ray
import yaml

ROOT = Path(__file__).resolve().parents[1]


def test_cluster_yaml_validates_against_rays_own_schema():
    schema = json.loads((Path(ray.__file__).parent / "autoscaler" / "ray-schema.json").read_text())
    config = yaml.safe_load((ROOT / "cluster.yaml").read_text())
    jsonschema.validate(config, schema)
    starts = " ".join(config["head_start_ray_commands"] + config["worker_start_ray_commands"])
    assert "6379" not in starts  # Redis's port: the GCS must be told another one


def test_mcp_folder_does_not_shadow_the_mcp_library():
    assert not (ROOT / "mcp" / "__init__.py").exists()
    found = subprocess.run([sys.executable, "-c", "import mcp, fastmcp; print(mcp.__file__)"], cwd=ROOT,
                           capture_output=True, text=True, check=True).stdout.strip()
    assert "site-packages" in found, found
