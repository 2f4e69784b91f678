"""Secrets as values: the store a run reads them from, the references a spec makes, and the masking of
their values in any text that leaves a reader.

Where they are kept (the Vault) belongs to the control plane: `engine.controlplane.vault`.
"""

from __future__ import annotations

import base64
import urllib.parse
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from typing import Any, Protocol

from pydantic import BaseModel

from engine.core.errors import ConfigError
from engine.core.spec import SecretRef


class SecretStore(Protocol):
    """Where a run reads its secrets and writes rotated ones (a value: actors receive it)."""

    @property
    def identity(self) -> str: ...

    def get(self, name: str) -> str | None: ...

    def set(self, name: str, value: str) -> None: ...


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


def resolve(spec: BaseModel, store: SecretStore) -> dict[str, str]:
    """Return {name: value} for every secret the spec references; fail naming the first missing one."""
    values: dict[str, str] = {}
    for path, ref in secret_refs(spec):
        if ref.secret in values:
            continue
        value = store.get(ref.secret)
        if value is None:
            raise ConfigError(f"{path}: secret {ref.secret!r} is not set in the Vault; store it with "
                              f"`ipai secret set {ref.secret}` (reads the value from stdin)")
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
