"""Where an instance's tables live (layers/addressing.py): plain for the default tenant's prod, the tenant and
env in the schema otherwise, read back one way only, and names over 63 bytes in a stable short form."""

from __future__ import annotations

import itertools

import pytest

from connectors.specload import parse_spec
from engine.core.errors import SpecError
from layers.addressing import Address, fit_identifier, parse_schema, schema_name


@pytest.mark.parametrize(("tenant", "env", "expected"), [
    ("local", "prod", "bronze"), ("local", "dev", "bronze_dev"), ("acme", "prod", "acme_bronze"),
    ("acme", "staging", "acme_bronze_staging"), ("acme_eu", "dev", "acme_eu_bronze_dev"),
])
def test_schema_names_leave_out_the_default_tenant_and_prod(tenant, env, expected):
    assert schema_name("bronze", tenant=tenant, env=env) == expected
    assert parse_schema(expected) == (tenant, "bronze", env)


def test_no_two_tenant_env_pairs_share_a_schema():
    tenants = ["local", "acme", "bronze", "silver_x", "x_bronze", "a_gold_b", "dev"]
    envs = ["prod", "dev", "staging", "x", "eu2"]
    seen: dict[str, tuple[str, str, str]] = {}
    for tenant, env, layer in itertools.product(tenants, envs, ("bronze", "silver", "gold")):
        name = schema_name(layer, tenant=tenant, env=env)
        assert seen.setdefault(name, (tenant, env, layer)) == (tenant, env, layer), name
        assert parse_schema(name) == (tenant, layer, env)


def test_a_folder_that_is_no_layer_schema_is_not_read_as_one():
    assert parse_schema("public") is None
    assert parse_schema("local_bronze") is None  # the default tenant has no prefix
    assert parse_schema("exports") is None


def test_long_names_get_a_stable_distinct_short_form():
    long_a, long_b = "raw_" + "a" * 60 + "_x", "raw_" + "a" * 60 + "_y"
    short_a, short_b = fit_identifier(long_a), fit_identifier(long_b)
    assert len(short_a.encode()) == 63 and short_a.startswith("raw_aaa") and short_a != short_b
    assert fit_identifier(long_a) == short_a, "the same every time"
    assert fit_identifier("raw_shop_orders") == "raw_shop_orders"
    assert Address("local", "dev", "n" * 48).long_names(["order_lines"]) == [
        (f"raw_{'n' * 48}_order_lines", fit_identifier(f"raw_{'n' * 48}_order_lines")),
        (f"quarantine_{'n' * 48}_order_lines", fit_identifier(f"quarantine_{'n' * 48}_order_lines")),
    ]


@pytest.mark.parametrize(("env", "problem"), [
    ("staging_eu", "env"), ("silver", "is a layer's name"), ("Prod", "env"),
])
def test_an_env_that_would_make_schema_names_ambiguous_is_refused(env, problem):
    with pytest.raises(SpecError) as refused:
        parse_spec(f"name: shop\nsource_type: sample\nenv: {env}\n")
    assert problem in str(refused.value)
