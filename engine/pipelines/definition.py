"""Pipeline files (FR-040): a YAML DAG of connector runs and gold refreshes, validated with every error's path.

    pipeline: daily_marketing
    steps:
      github: {run: github_prod, env: prod}     # an instance registered in the control plane
      shop:   {spec: ../sample.yaml}             # a spec file (relative to this file), registered when it runs
      gold:   {gold: apply, needs: [github, shop]}

A step has exactly one of `run`, `spec` and `gold`. Steps whose `needs` have all succeeded run together
(github and shop above at the same time), so the order of the file does not matter; a cycle is an error.
Spec steps are validated with the spec loader when the pipeline is, so a broken spec stops the pipeline
before anything runs. Running a pipeline is engine/pipelines/runner.py.
"""

from __future__ import annotations

import re
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

from pydantic import Field, ValidationError
from ruamel.yaml.comments import CommentedMap, CommentedSeq

from engine.core.errors import SpecError
from engine.core.spec import NAME_PATTERN, ConnectorSpec, SpecModel
from connectors.specload import load_spec
from engine.core.yamlfile import SpecIssue, plain_yaml, read_mapping, read_text

KINDS = ("run", "spec", "gold")
StepKind = Literal["run", "spec", "gold"]


class RunStep(SpecModel):
    """Queue a run of a connector instance already registered in the control plane."""

    run: str = Field(min_length=1)
    """The instance's name or id."""
    env: str | None = Field(default=None, pattern=NAME_PATTERN)
    """The instance's environment, when its name exists in several."""
    full_refresh: bool = False
    """Ignore stored cursors and re-read everything."""
    needs: tuple[str, ...] = ()
    """Steps that must succeed before this one starts."""


class SpecStep(SpecModel):
    """Register a spec file as an instance (a new definition version only when its text changed), then run it."""

    spec: str = Field(min_length=1)
    """Path of the spec, relative to the pipeline file."""
    full_refresh: bool = False
    """Ignore stored cursors and re-read everything."""
    needs: tuple[str, ...] = ()
    """Steps that must succeed before this one starts."""


class GoldStep(SpecModel):
    """Create or replace the gold views of a folder (`ipai gold apply`)."""

    gold: Literal["apply"]
    dir: str | None = None
    """Folder of the gold views, relative to the pipeline file; the views shipped in layers/gold/views when omitted."""
    needs: tuple[str, ...] = ()
    """Steps that must succeed before this one starts."""


class PipelineHeader(SpecModel):
    """The top level of a pipeline file; `steps` is validated step by step."""

    pipeline: str = Field(pattern=NAME_PATTERN)
    """The pipeline's name: lower case letters, digits and _."""
    description: str | None = None
    steps: dict[str, Any] = Field(min_length=1)
    """Step name -> step. Names: lower case letters, digits and _."""


STEP_MODELS: dict[str, type[RunStep] | type[SpecStep] | type[GoldStep]] = {
    "run": RunStep, "spec": SpecStep, "gold": GoldStep}


@dataclass(frozen=True)
class Step:
    """One validated step; a spec step carries its validated spec and the text that is registered."""

    name: str
    kind: StepKind
    config: RunStep | SpecStep | GoldStep
    line: int
    column: int
    spec: ConnectorSpec | None = None
    spec_text: str | None = None
    path: Path | None = None
    """The spec file (spec steps) or the gold folder (gold steps with `dir`)."""

    @property
    def needs(self) -> tuple[str, ...]:
        return self.config.needs

    @property
    def target(self) -> str:
        """What the step acts on, for people: `github_prod (prod)`, `../sample.yaml`, `apply layers/gold/views`."""
        c = self.config
        if isinstance(c, RunStep):
            return c.run + (f" ({c.env})" if c.env else "")
        if isinstance(c, SpecStep):
            return c.spec
        return f"apply {c.dir or 'layers/gold/views'}"

    @property
    def instance(self) -> tuple[str, str | None] | None:
        """The (instance, env) a connector step runs; None for gold."""
        if isinstance(self.config, RunStep):
            return self.config.run, self.config.env
        if self.spec is not None:
            return self.spec.name, self.spec.env
        return None


@dataclass(frozen=True)
class Pipeline:
    """A validated pipeline: its steps in file order, and where it came from."""

    name: str
    description: str | None
    steps: tuple[Step, ...]
    text: str
    source: str
    """The file (or label) it was read from; error messages name it."""
    base_dir: Path
    """Spec and gold paths are relative to this folder."""

    def step(self, name: str) -> Step:
        return next(s for s in self.steps if s.name == name)


def load_pipeline(path: str | Path) -> Pipeline:
    """Read and validate the pipeline at `path`; raise `SpecError` listing every problem with its path."""
    path = Path(path)
    return parse_pipeline(read_text(path), str(path), base_dir=path.resolve().parent)


def parse_pipeline(text: str, source_name: str = "<pipeline>", *, base_dir: Path | None = None,
                   server_files: bool = True) -> Pipeline:
    """Validate pipeline `text`; spec paths are relative to `base_dir` (default: the current folder).

    `server_files=False` (a remote caller, e.g. MCP over HTTP): spec steps and gold `dir` are refused before
    any file or folder is looked at, so the answer says nothing about what exists on the server.

    Raises `SpecError` whose message has one line per problem, `FILE:LINE:COLUMN: PATH: message`, followed by
    the problems of any invalid spec file a step names.
    """
    base = (base_dir or Path.cwd()).resolve()
    data = _read_yaml(text, source_name)
    issues: list[SpecIssue] = []

    def issue(path: tuple[Any, ...], message: str, *, key: bool = False) -> None:
        line, col = _at(data, path, key=key)
        issues.append(SpecIssue(source_name, line, col, _dotted(path), message))

    try:
        header = PipelineHeader.model_validate(plain_yaml(data))
    except ValidationError as exc:
        for e in exc.errors(include_url=False):
            loc = tuple(e["loc"])
            issue(loc, _message(e), key=e["type"] in ("extra_forbidden", "missing"))
        _raise(issues)
        raise AssertionError("unreachable") from None

    steps: list[Step] = []
    extra: list[SpecIssue] = []  # the problems inside spec files, listed after the pipeline's own
    for name, raw in header.steps.items():
        at = ("steps", name)
        if not _is_name(name):
            issue(at, f"step name {name!r}: use lower case letters, digits and _, starting with a letter", key=True)
            continue
        if not isinstance(raw, dict):
            issue(at, "a step is a mapping with one of run, spec, gold (and needs)")
            continue
        kinds = [k for k in KINDS if k in raw]
        if len(kinds) != 1:
            found = f"it has {' and '.join(kinds)}" if kinds else "it has none"
            issue(at, f"a step has exactly one of run (an instance), spec (a spec file) or gold (apply); {found}",
                  key=True)
            continue
        kind: StepKind = kinds[0]  # type: ignore[assignment]  # one of KINDS
        try:
            config = STEP_MODELS[kind].model_validate(raw)
        except ValidationError as exc:
            for e in exc.errors(include_url=False):
                issue((*at, *e["loc"]), _message(e), key=e["type"] in ("extra_forbidden", "missing"))
            continue
        line, col = _at(data, (*at, kind))
        step = Step(name, kind, config, line, col)
        if not server_files and isinstance(config, SpecStep):
            issue((*at, "spec"), "spec steps read files on the server, which remote callers may not; register the "
                  "spec with connector_create and use a run step ({run: NAME})")
        elif not server_files and isinstance(config, GoldStep) and config.dir is not None:
            issue((*at, "dir"), "dir reads a folder on the server, which remote callers may not; omit it to apply "
                  "the shipped gold views")
        elif isinstance(config, SpecStep):
            step, problems = _with_spec(step, config, base, lambda m: issue((*at, "spec"), m))
            extra += problems
        elif isinstance(config, GoldStep) and config.dir is not None:
            folder = (base / config.dir).resolve()
            if not folder.is_dir():
                issue((*at, "dir"), f"no such folder {config.dir} ({folder}); paths are relative to the pipeline file")
            step = Step(name, kind, config, line, col, path=folder)
        steps.append(step)

    names = list(header.steps)
    for step in steps:
        for i, need in enumerate(step.needs):
            if need not in header.steps:
                issue(("steps", step.name, "needs", i), f"unknown step {need!r}; steps are: {', '.join(names)}")
            elif need in step.needs[:i]:
                issue(("steps", step.name, "needs", i), f"step {need!r} is listed twice")
    if not issues:
        cycle = _find_cycle(steps)
        if cycle:
            line, col = _at(data, ("steps", cycle[0]), key=True)
            issues.append(SpecIssue(source_name, line, col, "steps",
                                    f"cycle {' -> '.join(cycle)} (each step needs the next one)"))
        else:
            for a, b in _parallel_twins(steps):
                issue(("steps", b.name), f"runs the same instance as step {a.name} and neither needs the other: "
                      f"they would share one run; add needs: [{a.name}]", key=True)
    _raise(sorted(issues, key=lambda i: (i.line, i.column)) + extra)
    return Pipeline(header.pipeline, header.description, tuple(steps), text, source_name, base)


def topological(pipeline: Pipeline) -> list[Step]:
    """The steps in an order where each comes after what it needs (file order among equals)."""
    done: set[str] = set()
    order: list[Step] = []
    while len(order) < len(pipeline.steps):
        for step in pipeline.steps:
            if step.name not in done and all(n in done for n in step.needs):
                order.append(step)
                done.add(step.name)
                break
    return order


# -- helpers ----------------------------------------------------------------------------------------------


def _read_yaml(text: str, source_name: str) -> CommentedMap:
    return read_mapping(text, source_name, "a pipeline must be a mapping with `pipeline:` (its name) and `steps:`")


def _with_spec(step: Step, config: SpecStep, base: Path,
               report: Callable[[str], None]) -> tuple[Step, list[SpecIssue]]:
    """Validate the spec file a step names; return the step carrying it, and the spec's own problems."""
    path = (base / config.spec).resolve()
    if not path.is_file():
        report(f"no such file {config.spec} ({path}); spec paths are relative to the pipeline file")
        return step, []
    try:
        spec = load_spec(path)
    except SpecError as exc:
        report(f"the spec {config.spec} is invalid (its errors follow)")
        return step, list(exc.issues) or [SpecIssue(str(path), 1, 1, "", str(exc))]
    return Step(step.name, step.kind, config, step.line, step.column, spec, path.read_text(encoding="utf-8"),
                path), []


def _find_cycle(steps: list[Step]) -> list[str] | None:
    """Return one cycle as [a, b, ..., a] (a needs b ...), or None."""
    needs = {s.name: s.needs for s in steps}
    state: dict[str, int] = {}  # 1: on the current path, 2: finished
    path: list[str] = []

    def visit(name: str) -> list[str] | None:
        state[name] = 1
        path.append(name)
        for need in needs.get(name, ()):
            if state.get(need) == 1:
                return path[path.index(need):] + [need]
            if need not in state:
                found = visit(need)
                if found:
                    return found
        state[name] = 2
        path.pop()
        return None

    for step in steps:
        if step.name not in state:
            found = visit(step.name)
            if found:
                return found
    return None


def _parallel_twins(steps: list[Step]) -> list[tuple[Step, Step]]:
    """Pairs of connector steps that run the same instance and may run at once (neither needs the other):
    the database allows one active run per instance, so the second would only wait on the first's run."""
    needs = {s.name: s.needs for s in steps}
    ancestors: dict[str, set[str]] = {}

    def up(name: str) -> set[str]:
        if name not in ancestors:
            ancestors[name] = set()
            for n in needs.get(name, ()):
                ancestors[name] |= {n} | up(n)
        return ancestors[name]

    twins = []
    connectors = [s for s in steps if s.instance is not None]
    for i, a in enumerate(connectors):
        for b in connectors[i + 1:]:
            (na, ea), (nb, eb) = a.instance or ("", None), b.instance or ("", None)
            same = na == nb and (ea is None or eb is None or ea == eb)
            if same and a.name not in up(b.name) and b.name not in up(a.name):
                twins.append((a, b))
    return twins


def _is_name(name: object) -> bool:
    return isinstance(name, str) and re.fullmatch(NAME_PATTERN, name) is not None


def _message(err: Any) -> str:
    if err["type"] == "extra_forbidden":
        return "unknown field (a step has run, spec or gold, needs, and env, full_refresh or dir)"
    if err["type"] == "missing":
        return "required field is missing"
    if err["type"] == "string_pattern_mismatch":
        return f"{err['input']!r}: use lower case letters, digits and _, starting with a letter"
    if err["type"] == "literal_error" and err["loc"][-1:] == ("gold",):
        return f"{err['input']!r}: the only gold action is `apply`"
    return str(err["msg"])


def _dotted(path: tuple[Any, ...]) -> str:
    out = ""
    for part in path:
        out += f"[{part}]" if isinstance(part, int) else (f".{part}" if out else str(part))
    return out


def _at(data: CommentedMap, path: tuple[Any, ...], *, key: bool = False) -> tuple[int, int]:
    """The 1-based (line, column) of the value at `path` (its key with `key`), or of the deepest part found."""
    node: Any = data
    line, col = data.lc.line, data.lc.col
    for part in path:
        if isinstance(node, CommentedMap) and part in node:
            scalar = not isinstance(node[part], (CommentedMap, CommentedSeq))
            line, col = node.lc.value(part) if scalar and not key else node.lc.key(part)
        elif isinstance(node, CommentedSeq) and isinstance(part, int) and 0 <= part < len(node):
            line, col = node.lc.item(part)
        else:
            break
        node = node[part]
    return line + 1, col + 1


def _raise(issues: list[SpecIssue]) -> None:
    if issues:
        raise SpecError("\n".join(str(i) for i in issues), issues=issues)
