"""What the GitHub emulator holds now and what bronze loaded of it (for an instance named `gh`, env dev)."""

from __future__ import annotations

from typing import Any

from layers.addressing import Address
from tests.emulators.harness import EmulatorProcess
from tests.support.truth import bronze_postgres

GH = Address("local", "dev", "gh")
"""The instance the GitHub tests sync: stream `issues` lands in `bronze_dev.raw_gh_issues`."""


def bronze_table(stream: str) -> str:
    """`<schema>.<table>` of `stream`'s bronze table of `GH` in Postgres."""
    return f"{GH.schema('bronze')}.{GH.bronze_table(stream)}"


def bronze_uri(lakehouse_uri: str, stream: str) -> str:
    """The Delta folder of `stream`'s bronze table of `GH`."""
    return GH.delta_uri(lakehouse_uri, "bronze", GH.bronze_table(stream))


def truth(gh: EmulatorProcess, repo: str) -> dict[str, Any]:
    return gh.admin("GET", "/_emulator/github/truth", params={"repo": repo, "state": "all"})


def issue_truth(gh: EmulatorProcess, repos: list[str]) -> set[tuple[int, str]]:
    """(id, updated_at) of every issue that is not a pull request, as the emulator holds them now."""
    out = set()
    for repo in repos:
        t = truth(gh, repo)
        out |= {(i, u) for i, u, pr in zip(t["ids"], t["updated_at"], t["pull_request"]) if not pr}
    return out


def pr_truth(gh: EmulatorProcess, repos: list[str]) -> set[tuple[str, int, str]]:
    """(repo, number, updated_at) of every pull request (their ids differ from their issue ids)."""
    out = set()
    for repo in repos:
        t = truth(gh, repo)
        out |= {(repo, n, u) for n, u, pr in zip(t["numbers"], t["updated_at"], t["pull_request"]) if pr}
    return out


def pull_numbers(database: Any) -> set[tuple[str, int, str]]:
    table = bronze_postgres(database.url, bronze_table("pull_requests"))
    return set(zip(*(table.column(c).to_pylist() for c in ("repo", "number", "updated_at"))))


def loaded(database: Any, stream: str) -> set[tuple[int, str]]:
    """(id, updated_at) of every row of `stream` in bronze Postgres."""
    table = bronze_postgres(database.url, bronze_table(stream))
    return set(zip(table.column("id").to_pylist(), table.column("updated_at").to_pylist()))
