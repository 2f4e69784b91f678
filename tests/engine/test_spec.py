"""Spec validation: every error names file, line, column and field path; the JSON Schema stays in sync."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import jsonschema
import pytest
from ruamel.yaml import YAML

from engine.core.errors import SpecError
from connectors.specload import load_spec, parse_spec, spec_json_schema_text

ROOT = Path(__file__).resolve().parents[2]


def issues(text: str) -> list[str]:
    with pytest.raises(SpecError) as info:
        parse_spec(text, filename="x.yaml")
    return [str(i) for i in info.value.issues]


def test_schema_json_matches_the_models():
    committed = (ROOT / "specs" / "schema.json").read_text()
    assert committed == spec_json_schema_text(), "regenerate with: ipai spec schema --write specs/schema.json"


@pytest.mark.parametrize("path", sorted((ROOT / "specs").glob("*.yaml")), ids=lambda p: p.name)
def test_every_example_spec_validates_against_models_and_schema(path):
    spec = load_spec(path)
    assert spec.name
    data = YAML(typ="safe").load(path.read_text())
    jsonschema.validate(data, json.loads((ROOT / "specs" / "schema.json").read_text()))


def test_unknown_field_is_reported_with_line_column_and_path():
    text = "name: a\nsource_type: sample\nsource:\n  seed: 1\n  ordrs: 5\n"
    assert issues(text) == [
        "x.yaml:5:3: source.ordrs: unknown field (check the spelling; `ipai spec schema` lists the fields)"
    ]


def test_every_error_is_reported_not_only_the_first():
    text = (
        "name: Bad Name\n"
        "source_type: sample\n"
        "schedule: every hour\n"
        "streams:\n"
        "  - name: orders\n"
        "  - name: orders\n"
        "source:\n"
        "  days: 0\n"
    )
    assert issues(text) == [
        "x.yaml:1:7: name: 'Bad Name' is not a valid name: use lower case letters, digits and _, "
        "starting with a letter",
        "x.yaml:3:11: schedule: Value error, 'every hour' is not a 5-field cron expression "
        "(minute hour day month weekday)",
        "x.yaml:4:1: streams: Value error, stream listed more than once: orders",
        "x.yaml:8:9: source.days: Input should be greater than or equal to 1",
    ]


def test_invalid_yaml_names_line_and_column():
    [issue] = issues("name: a\nsource_type: sample\nsource: {seed: 1\n")
    assert issue == ("x.yaml:4:1: invalid YAML: while parsing a flow mapping expected ',' or '}', "
                     "but got '<stream end>'")


def test_unknown_source_type_lists_known_ones():
    [issue] = issues("name: a\nsource_type: salesforce\n")
    assert issue == "x.yaml:2:14: source_type: unknown source_type 'salesforce'; known source types: database, ga4, github, http, odoo, sample"


def test_missing_required_field_points_at_its_parent():
    [issue] = issues("source_type: sample\n")
    assert issue == "x.yaml:1:1: name: required field is missing"


def test_secret_references_are_explicit_objects():
    text = "name: a\nsource_type: sample\nauth:\n  type: bearer\n  token: my-token-in-clear\n"
    assert issues(text) == [
        "x.yaml:5:10: auth.token: secrets are references, never values: write {secret: NAME} "
        "naming a secret kept in the Vault"
    ]


def test_missing_file_is_a_clear_error(tmp_path):
    with pytest.raises(SpecError, match="nope.yaml: no such file"):
        load_spec(tmp_path / "nope.yaml")


def test_a_password_in_a_destination_url_is_refused_without_echoing_it():
    text = "name: a\nsource_type: sample\ndestinations:\n  postgres:\n    url: postgresql://u:hunter2@db/x\n"
    [issue] = issues(text)
    assert issue.startswith("x.yaml:5:10: destinations.postgres.url: Value error, the URL carries a password")
    assert "hunter2" not in issue


def test_cdc_on_a_source_without_a_change_log_is_refused_when_validated():
    """Issue 18: `sync_mode: cdc` is refused by validation, at its line, for streams that cannot follow a change
    log, not when a run starts; a database table stream may."""
    with pytest.raises(SpecError) as refused:
        parse_spec("name: shop\nsource_type: sample\nsync_mode: cdc\n", filename="shop.yaml")
    assert str(refused.value).startswith("shop.yaml:3:")
    assert "stream customers: source_type 'sample' has no change log to follow (sync_mode cdc); use incremental " \
           "or full" in str(refused.value)
    with pytest.raises(SpecError) as one:
        parse_spec("name: shop\nsource_type: sample\nstreams:\n  - {name: orders, sync_mode: cdc}\n",
                   filename="shop.yaml")
    assert str(one.value).startswith("shop.yaml:4:") and "stream orders:" in str(one.value)
    assert "customers" not in str(one.value)
    parse_spec("name: src\nsource_type: database\nsync_mode: cdc\nsource:\n  url: postgresql://reader@db.example.com/app\n"
               "  tables:\n    - {table: public.orders}\n")


def test_ipai_version_prints_the_installed_version():
    from importlib.metadata import version

    done = subprocess.run([sys.executable, "-m", "engine.cli", "--version"], capture_output=True, text=True,
                          timeout=60)
    assert (done.returncode, done.stdout.strip()) == (0, f"ipai {version('ipai-data-connectors')}")
