"""Issue 16, hole 4: spec and pipeline text is parsed within limits (1 MiB, 64 levels, no anchors or aliases).

Before, aliases expanded before validation (a few hundred bytes of them grew to gigabytes), a 20,000-deep
nesting ended in a RecursionError traceback and a 50 MB spec was accepted. Each bomb is refused with a spec
error at its file and line, from the CLI as a user runs it (a subprocess with a timeout: a hang fails the test)
and from the parsers MCP and the pipeline runner call.
"""

from __future__ import annotations

import subprocess

import pytest

from connectors.specload import parse_spec
from engine.core.errors import SpecError
from engine.core.yamlfile import MAX_BYTES, MAX_DEPTH
from engine.pipelines.definition import parse_pipeline
from tests.support.cli import CLI, base_env

HEAD = "name: bomb\nsource_type: sample\n"
LAUGHS = HEAD + "description: &a [lol, lol, lol, lol, lol, lol, lol, lol, lol]\n" + "".join(
    f"l{i}: &{chr(98 + i)} [{', '.join([f'*{chr(97 + i)}'] * 9)}]\n" for i in range(9))
"""Ten levels of nine aliases each: 9**10 (3.5 billion) strings once expanded, from about 500 bytes."""
FLOW_DEEP = HEAD + "description: " + "[" * 20_000 + "]" * 20_000 + "\n"
BLOCK_DEEP = HEAD + "source:\n" + "".join(f"{'  ' * i}k{i}:\n" for i in range(1, 200)) + "  " * 200 + "x: 1\n"
OVERSIZED = HEAD + "description: |\n" + "  padding padding padding padding padding padding padding\n" * 20_000

BOMBS = {
    "laughs": (LAUGHS, 3, "anchors and aliases (&name, *name) are not allowed here"),
    "flow_deep": (FLOW_DEEP, 3, f"nested more than {MAX_DEPTH} levels deep"),
    "block_deep": (BLOCK_DEEP, MAX_DEPTH + 2, f"nested more than {MAX_DEPTH} levels deep"),
    "oversized": (OVERSIZED, 1, "specs and pipelines may be at most 1 MiB (1,048,576 bytes)"),
}


def test_the_bombs_are_what_they_claim():
    assert len(LAUGHS) < 600 and LAUGHS.count("*") == 81
    assert len(OVERSIZED) > MAX_BYTES


@pytest.mark.parametrize("kind", sorted(BOMBS))
def test_ipai_spec_validate_refuses_a_bomb_with_its_file_and_line(tmp_path, kind):
    text, line, message = BOMBS[kind]
    path = tmp_path / f"{kind}.yaml"
    path.write_text(text)
    proc = subprocess.run([*CLI, "spec", "validate", str(path)], env={**base_env(), "IPAI_HOME": str(tmp_path)},
                          capture_output=True, text=True, timeout=60)
    assert proc.returncode == 2, proc.stderr
    assert f"{path}:{line}:" in proc.stderr and message in proc.stderr, proc.stderr
    assert "Traceback" not in proc.stderr and "RecursionError" not in proc.stderr


@pytest.mark.parametrize("kind", sorted(BOMBS))
def test_spec_text_and_pipelines_refuse_the_bombs(kind):
    """The parsers behind connector_validate / connector_create (MCP), the worker and pipeline_validate."""
    text, line, message = BOMBS[kind]
    with pytest.raises(SpecError) as refused:
        parse_spec(text, filename="spec")
    assert str(refused.value).startswith(f"spec:{line}:") and message in str(refused.value)
    pipeline = text.replace(HEAD, "pipeline: bomb\nsteps: {}\n")
    with pytest.raises(SpecError) as refused:
        parse_pipeline(pipeline, "pipeline")
    assert str(refused.value).startswith(f"pipeline:{line}:") and message in str(refused.value)


def test_a_spec_within_the_limits_still_loads():
    nested = "description: " + "[" * (MAX_DEPTH - 2) + "x" + "]" * (MAX_DEPTH - 2) + "\n"
    with pytest.raises(SpecError, match="description: Input should be a valid string"):
        parse_spec(HEAD + nested, filename="spec")  # parsed: the model, not the limit, refuses it
    assert parse_spec(HEAD + "description: '&a *b are plain text when quoted'\n").description.startswith("&a")


def test_the_cli_refuses_a_large_file_before_reading_it(tmp_path):
    path = tmp_path / "huge.yaml"
    with open(path, "wb") as f:
        f.truncate(50 * 1024 * 1024)  # 50 MB of NUL bytes: sparse on disk, and not even UTF-8 YAML
    proc = subprocess.run([*CLI, "spec", "validate", str(path)], env={**base_env(), "IPAI_HOME": str(tmp_path)},
                          capture_output=True, text=True, timeout=60)
    assert proc.returncode == 2
    assert f"{path}:1:1: the text is 52,428,800 bytes or more; specs and pipelines may be at most 1 MiB" \
        in proc.stderr, proc.stderr

