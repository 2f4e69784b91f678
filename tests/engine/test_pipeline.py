"""Pipelines (FR-040): a YAML DAG of connector runs and gold refreshes.

    bad files          a cycle, an unknown step, a step of two kinds, a missing or invalid spec file, two steps
                       that would run one instance at once: rejected with file, line, column and path
    unknown instance   rejected with its step's path before anything is recorded or run
    a real pipeline    two sample-connector steps queued together, run by two local `ipai worker` processes on
                       the shared Ray, then gold applied over their silver: rows in bronze, silver and gold
    a failing step     (a database source that cannot be reached) its dependants skipped naming it, the
                       independent step still succeeds, the pipeline failed with the step and the run's error;
                       started in the background by `ipai pipeline run --no-wait`, read by `ipai pipeline status`
"""

from __future__ import annotations

from pathlib import Path

import pytest

from engine.core.errors import SpecError
from engine.pipelines.definition import load_pipeline, parse_pipeline, topological
from engine.pipelines.records import pipeline_status
from engine.pipelines.runner import run_pipeline
from connectors.specload import load_spec
from tests.support.cli import base_env, env_for, ipai
from tests.support.truth import address, bronze_table, silver_table, source_rows
from tests.support.waiting import wait_for

ROOT = Path(__file__).resolve().parents[2]


def tiny(name: str, *, seed: int = 3, layers: str = "[bronze, silver]") -> str:
    """A sample spec small enough to sync in a moment (one partition per stream)."""
    return (f"name: {name}\nsource_type: sample\nsync_mode: incremental\nlayers: {layers}\n"
            f"source: {{seed: {seed}, days: 30, customers: 300, orders: 1000, partition_rows: 1000}}\n")


def write(folder: Path, files: dict[str, str]) -> Path:
    for name, text in files.items():
        (folder / name).write_text(text)
    return folder / "pipe.yaml"


def rejection(tmp_path: Path, pipeline: str, **files: str) -> str:
    with pytest.raises(SpecError) as caught:
        load_pipeline(write(tmp_path, {"pipe.yaml": pipeline, **files}))
    return str(caught.value)


# -- bad input ----------------------------------------------------------------------------------------------


def test_a_cycle_is_rejected_naming_it(tmp_path):
    message = rejection(tmp_path, "pipeline: p\nsteps:\n  a: {run: x, needs: [b]}\n  b: {run: y, needs: [a]}\n"
                                  "  c: {run: z}\n")
    assert message == f"{tmp_path}/pipe.yaml:3:3: steps: cycle a -> b -> a (each step needs the next one)"


def test_an_unknown_step_is_rejected_with_its_path(tmp_path):
    message = rejection(tmp_path, "pipeline: p\nsteps:\n  a: {run: x}\n  b: {run: y}\n"
                                  "  gold: {gold: apply, needs: [a, ga5]}\n")
    assert message == f"{tmp_path}/pipe.yaml:5:34: steps.gold.needs[1]: unknown step 'ga5'; steps are: a, b, gold"


def test_a_step_of_two_kinds_and_other_field_errors_are_all_reported(tmp_path):
    message = rejection(tmp_path, "pipeline: p\nsteps:\n  a: {run: x, spec: s.yaml}\n  b: {run: y, colour: red}\n"
                                  "  c: {gold: refresh}\n  d: {needs: [a]}\n")
    assert message.splitlines() == [
        f"{tmp_path}/pipe.yaml:3:3: steps.a: a step has exactly one of run (an instance), spec (a spec file) or "
        "gold (apply); it has run and spec",
        f"{tmp_path}/pipe.yaml:4:15: steps.b.colour: unknown field (a step has run, spec or gold, needs, and env, "
        "full_refresh or dir)",
        f"{tmp_path}/pipe.yaml:5:13: steps.c.gold: 'refresh': the only gold action is `apply`",
        f"{tmp_path}/pipe.yaml:6:3: steps.d: a step has exactly one of run (an instance), spec (a spec file) or "
        "gold (apply); it has none",
    ]


def test_a_missing_spec_file_is_rejected_saying_where_it_was_looked_for(tmp_path):
    message = rejection(tmp_path, "pipeline: p\nsteps:\n  shop: {spec: specs/missing.yaml}\n")
    assert message == (f"{tmp_path}/pipe.yaml:3:16: steps.shop.spec: no such file specs/missing.yaml "
                       f"({tmp_path}/specs/missing.yaml); spec paths are relative to the pipeline file")


def test_an_invalid_spec_file_brings_its_own_errors(tmp_path):
    message = rejection(tmp_path, "pipeline: p\nsteps:\n  shop: {spec: shop.yaml}\n",
                        **{"shop.yaml": tiny("shop") + "schedule: '0 * * *'\n"})
    assert message.splitlines() == [
        f"{tmp_path}/pipe.yaml:3:16: steps.shop.spec: the spec shop.yaml is invalid (its errors follow)",
        f"{tmp_path}/shop.yaml:6:11: schedule: Value error, '0 * * *' is not a 5-field cron expression "
        "(minute hour day month weekday)",
    ]


def test_two_steps_that_would_run_one_instance_at_once_are_rejected(tmp_path):
    message = rejection(tmp_path, "pipeline: p\nsteps:\n  a: {spec: shop.yaml}\n  b: {run: shop}\n"
                                  "  c: {run: shop, needs: [a, b]}\n", **{"shop.yaml": tiny("shop")})
    assert message == (f"{tmp_path}/pipe.yaml:4:3: steps.b: runs the same instance as step a and neither needs "
                       "the other: they would share one run; add needs: [a]")


def test_the_shipped_example_and_the_cli_validate(tmp_path):
    example = load_pipeline(ROOT / "specs" / "pipelines" / "sample_daily.yaml")
    assert [s.name for s in topological(example)] == ["shop", "shop_b2b", "gold"]
    assert example.step("shop").spec == load_spec(ROOT / "specs" / "sample.yaml")

    bad = write(tmp_path, {"pipe.yaml": "pipeline: p\nsteps:\n  a: {run: x, needs: [a]}\n"})
    done = ipai("pipeline", "validate", str(ROOT / "specs" / "pipelines" / "sample_daily.yaml"), str(bad),
                env=env_for_nothing(tmp_path), check=False)
    assert done.returncode == 2
    assert "sample_daily.yaml: ok (sample_daily: 3 steps; in order shop, shop_b2b, gold)" in done.stdout
    assert done.stderr.strip() == f"{bad}:3:3: steps: cycle a -> a (each step needs the next one)"


def env_for_nothing(tmp_path: Path) -> dict[str, str]:
    """An environment for commands that need no database or Ray."""
    return {**base_env(), "IPAI_HOME": str(tmp_path / "home")}


def test_an_unknown_instance_is_rejected_before_anything_is_recorded(tmp_path, settings, database):
    pipeline = parse_pipeline("pipeline: p\nsteps:\n  shop: {spec: shop.yaml}\n  github: {run: github_prod, env: prod}\n"
                              "  again: {run: shop, needs: [shop]}\n", "pipe.yaml",
                              base_dir=write(tmp_path, {"shop.yaml": tiny("shop")}).parent)
    with pytest.raises(SpecError) as caught:
        run_pipeline(database, settings, pipeline)
    # `again` names the instance step `shop` registers: that one counts as existing.
    assert str(caught.value) == ("pipe.yaml:4:17: steps.github.run: no connector instance 'github_prod'; "
                                 "no instance yet: run `ipai submit SPEC` first")
    with database.connect() as conn:
        assert conn.execute("select count(*) from pipeline_runs").fetchone() == (0,)


# -- running ------------------------------------------------------------------------------------------------


def test_two_sample_steps_in_parallel_then_gold(tmp_path, settings, database, ray_cluster):
    path = write(tmp_path, {
        "pipe.yaml": "pipeline: daily\nsteps:\n  shop: {spec: sample.yaml}\n  b2b: {spec: b2b.yaml}\n"
                     "  gold: {gold: apply, needs: [shop, b2b]}\n",
        "sample.yaml": tiny("sample"),  # the gold sales views cover every sample instance of the env
        "b2b.yaml": tiny("sample_b2b", seed=11),
    })
    events: list[tuple[str, str]] = []
    status = run_pipeline(database, settings, load_pipeline(path), on_event=lambda s: events.append((s.name, s.status)))

    assert (status["status"], status["failed_step"], status["error"]) == ("succeeded", None, None)
    steps = {s["name"]: s for s in status["steps"]}
    assert [(s["name"], s["status"]) for s in status["steps"]] == [
        ("shop", "succeeded"), ("b2b", "succeeded"), ("gold", "succeeded")]
    # Queued together, before either ended, and served by two workers: A and B ran in parallel.
    assert events.index(("b2b", "queued")) < min(events.index(("shop", "succeeded")), events.index(("b2b", "succeeded")))
    assert events.index(("gold", "running")) > max(events.index(("shop", "succeeded")), events.index(("b2b", "succeeded")))
    with database.connect() as conn:
        runs = conn.execute("select id::text, status, worker_id from connector_runs").fetchall()
        assert {r[0] for r in runs} == {steps["shop"]["run_id"], steps["b2b"]["run_id"]}
        assert {r[1] for r in runs} == {"succeeded"} and len({r[2] for r in runs}) == 2

        spec, b2b = load_spec(tmp_path / "sample.yaml"), load_spec(tmp_path / "b2b.yaml")
        orders = source_rows(spec, "orders").num_rows  # type: ignore[arg-type]
        gold = f"{address(spec).schema('gold')}.gold_sales_orders"
        counts = conn.execute(
            f"select (select count(*) from {bronze_table(spec, 'orders')}),"
            f" (select count(*) from {silver_table(spec, 'orders')}),"
            f" (select count(*) from {gold} where instance = 'sample'),"
            f" (select count(*) from {bronze_table(b2b, 'orders')}),"
            f" (select count(*) from {gold} where instance = 'sample_b2b')").fetchone()
        assert counts == (orders, orders, orders, orders, orders)  # gold: both instances, each once
        assert steps["shop"]["rows"] == conn.execute(
            "select rows_processed from connector_runs where id = %s", (steps["shop"]["run_id"],)).fetchone()[0]
        assert pipeline_status(conn, status["pipeline_run_id"][:8]) == status
    assert steps["gold"]["detail"].startswith("2 views applied")  # the sales views; the others wait for their silver


def test_a_failed_step_skips_its_dependants_and_the_rest_goes_on(tmp_path, settings, database, ray_cluster):
    path = write(tmp_path, {
        "pipe.yaml": "pipeline: failing\nsteps:\n  good: {spec: good.yaml}\n  bad: {spec: bad.yaml}\n"
                     "  load_bad: {gold: apply, needs: [bad]}\n  report: {gold: apply, needs: [good, load_bad]}\n",
        "good.yaml": tiny("pl_good", layers="[bronze]"),
        "bad.yaml": "name: pl_bad\nsource_type: database\nsync_mode: full\n"
                    "source: {url: 'postgresql://postgres@127.0.0.1:1/nothing', tables: [{table: public.customers}]}\n",
    })
    env = env_for(settings)
    started = ipai("pipeline", "run", str(path), "--no-wait", env=env)
    pipeline_run_id = started.stdout.split()[2]
    assert f"follow it with: ipai pipeline status {pipeline_run_id}" in started.stdout

    with database.connect() as conn:
        status = wait_for("the pipeline to end", lambda: (
            s if (s := pipeline_status(conn, pipeline_run_id))["status"] in ("succeeded", "failed") else None))
        bad_run = conn.execute("select id::text, error from connector_runs where status = 'failed'").fetchone()
        good_rows = conn.execute("select rows_processed from connector_runs where status = 'succeeded'").fetchone()[0]
    steps = {s["name"]: s for s in status["steps"]}
    assert {n: s["status"] for n, s in steps.items()} == {
        "good": "succeeded", "bad": "failed", "load_bad": "skipped", "report": "skipped"}
    assert steps["good"]["rows"] == good_rows > 0
    assert "127.0.0.1" in bad_run[1] and "port 1" in bad_run[1]
    assert steps["bad"]["run_id"] == bad_run[0] and steps["bad"]["error"] == f"run {bad_run[0]} failed: {bad_run[1]}"
    assert steps["load_bad"]["error"] == "not run: it needs bad, which failed"
    assert steps["report"]["error"] == "not run: it needs load_bad, which did not run because bad failed"
    assert steps["report"]["blocked_by"] == "bad"
    assert (status["status"], status["failed_step"]) == ("failed", "bad")
    assert status["error"] == f"step bad failed: {steps['bad']['error']}"

    shown = ipai("pipeline", "status", pipeline_run_id[:8], env=env)
    assert f"pipeline failing run {pipeline_run_id}: failed: step bad failed: run {bad_run[0]}" in " ".join(
        shown.stdout.split())
    assert "Traceback" not in shown.stdout + shown.stderr
