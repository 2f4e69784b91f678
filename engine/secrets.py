"""Secrets referenced by specs (`{secret: NAME}`): where they are kept and how runs resolve them.

Until the control plane's Vault lands, secrets live on the machine that runs the driver: in
`<home>/secrets/<NAME>` files readable by the owner alone, written by `ipai secret set NAME` from
stdin (and by token exchanges that rotate a refresh token), else in `IPAI_SECRET_<NAME>` environment
variables (read only, for CI). A run resolves
every reference before its first request and fails naming the missing secret. Values never reach
logs, errors or data: `Redactor` masks them in any text that leaves a reader.
"""

from __future__ import annotations

import base64
import os
import re
import urllib.parse
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from pydantic import BaseModel

from engine.errors import ConfigError
from engine.spec import NAME_PATTERN, SecretRef

ENV_PREFIX = "IPAI_SECRET_"


@dataclass(frozen=True)
class LocalSecretStore:
    """Secrets in the environment or in owner-only files under `<home>/secrets`; a value, so actors get it."""

    home: Path

    @property
    def folder(self) -> Path:
        return self.home / "secrets"

    def get(self, name: str) -> str | None:
        """Return the stored value, else the environment's: a rotated token must never be shadowed by the
        value it replaced."""
        path = self.folder / name
        if path.exists():
            return path.read_text(encoding="utf-8")
        return os.environ.get(ENV_PREFIX + name.upper())

    def set(self, name: str, value: str) -> None:
        """Store `value` under `name` atomically (write a 0600 file, then rename over the old one)."""
        if not re.fullmatch(NAME_PATTERN, name):
            raise ConfigError(f"secret name {name!r} must be lower case letters, digits and _ (start with a letter)")
        self.folder.mkdir(parents=True, exist_ok=True, mode=0o700)
        tmp = self.folder / f".{name}.{os.getpid()}.tmp"
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        with os.fdopen(fd, "w", encoding="utf-8") as f:
            f.write(value)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, self.folder / name)

    def names(self) -> list[str]:
        stored = {p.name for p in self.folder.iterdir() if not p.name.startswith(".")} if self.folder.exists() else set()
        env = {k[len(ENV_PREFIX):].lower() for k in os.environ if k.startswith(ENV_PREFIX)}
        return sorted(stored | env)


def secret_refs(value: Any, path: str = "") -> Iterator[tuple[str, SecretRef]]:
    """Yield (field path, reference) for every secret reference in a spec model."""
    if isinstance(value, SecretRef):
        yield path, value
    elif isinstance(value, BaseModel):
        for name in type(value).model_fields:
            yield from secret_refs(getattr(value, name), f"{path}.{name}" if path else name)
    elif isinstance(value, (list, tuple)):
        for i, item in enumerate(value):
            yield from secret_refs(item, f"{path}[{i}]")
    elif isinstance(value, dict):
        for k, item in value.items():
            yield from secret_refs(item, f"{path}.{k}")


def resolve(spec: BaseModel, store: LocalSecretStore) -> dict[str, str]:
    """Return {name: value} for every secret the spec references; fail naming the first missing one."""
    values: dict[str, str] = {}
    for path, ref in secret_refs(spec):
        value = store.get(ref.secret)
        if value is None:
            raise ConfigError(f"{path}: secret {ref.secret!r} is not set; store it with "
                              f"`ipai secret set {ref.secret}` (reads the value from stdin) "
                              f"or export {ENV_PREFIX}{ref.secret.upper()}")
        values[ref.secret] = value
    return values


@dataclass(frozen=True)
class Redactor:
    """Masks secret values (and their common encodings) in text before it leaves a reader."""

    values: tuple[str, ...]

    @classmethod
    def of(cls, secrets: Iterable[str]) -> Redactor:
        forms: set[str] = set()
        for s in secrets:
            if len(s) < 4:
                continue  # too short to mask without mangling ordinary text
            forms |= {s, urllib.parse.quote(s, safe=""), urllib.parse.quote_plus(s)}
            forms.add(base64.b64encode(s.encode()).decode())
        return cls(tuple(sorted(forms, key=len, reverse=True)))

    def __call__(self, text: str) -> str:
        for v in self.values:
            if v in text:
                text = text.replace(v, "***")
        return text
