"""Secrets as values: the store a run reads them from, the references a spec makes, and the masking of
their values in any text that leaves a reader.

Where they are kept (the Vault) belongs to the control plane: `engine.controlplane.vault`.
"""

from __future__ import annotations

import base64
import json
import re
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


MIN_SECRET_LENGTH = 8
"""Shorter values are refused when stored (`check_secret_value`): a short value cannot be told apart from
ordinary text, so masking it would mangle messages, and not masking it would leak it."""


def check_secret_value(name: str, value: str) -> None:
    """Raise ConfigError when `value` is too short to keep as secret `name` (see MIN_SECRET_LENGTH)."""
    if len(value) < MIN_SECRET_LENGTH:
        raise ConfigError(f"secret {name!r} not stored: its value has {len(value)} characters, and secrets must "
                          f"have at least {MIN_SECRET_LENGTH} (shorter ones cannot be masked in logs and errors); "
                          "use the credential's full value")


@dataclass(frozen=True)
class Redactor:
    """Masks secret values, and the forms they take on the wire, in text before it leaves a reader.

    The forms: the value itself; URL-encoded (`quote`, `quote_plus`); JSON-escaped (what `json.dumps` writes
    between the quotes, ASCII-only or not); and base64 (standard and URL-safe) of each of those at each of the
    three alignments a value can have inside a longer blob, which covers a Basic header's `base64(user:secret)`
    whatever the user, and a base64 JSON body or cookie. A base64 form masks the whole base64 word around it,
    so no edge character of the value survives. Every value is masked whatever its length (values stored
    before MIN_SECRET_LENGTH may be short: masking them mangles some text, which is better than leaking them).

    What is promised: text the platform writes (errors, run logs, webhook failures, the worker's output) has
    these forms masked. What is not: data a source returns is written as the source sent it, so an API that
    echoes a token in a record lands it in bronze; and an encoding not listed above (hex, a hash, a value
    split across lines) is not recognised.
    """

    values: tuple[str, ...]
    encoded: tuple[str, ...] = ()

    @classmethod
    def of(cls, secrets: Iterable[str]) -> Redactor:
        forms: set[str] = set()
        encoded: set[str] = set()
        for s in secrets:
            if not s:
                continue
            plain = {s, urllib.parse.quote(s, safe=""), urllib.parse.quote(s), urllib.parse.quote_plus(s),
                     json.dumps(s)[1:-1], json.dumps(s, ensure_ascii=False)[1:-1]}
            forms |= plain
            for form in plain:  # base64 of a JSON body or a form carries the value escaped
                encoded |= _base64_cores(form.encode())
        return cls(tuple(sorted(forms, key=len, reverse=True)), tuple(sorted(encoded, key=len, reverse=True)))

    def __call__(self, text: str) -> str:
        for v in self.values:
            if v in text:
                text = text.replace(v, "***")
        for core in self.encoded:
            if core in text:
                text = re.sub(rf"[A-Za-z0-9+/_-]*{re.escape(core)}[A-Za-z0-9+/_=-]*", "***", text)
        return text


def _base64_cores(raw: bytes) -> set[str]:
    """The characters of base64(prefix + raw + suffix) that depend on `raw` alone, for each alignment of
    `raw` (prefix lengths 0, 1, 2), in both alphabets. Values under 3 bytes have none at some alignments:
    they are masked whole with the padding when encoded alone."""
    cores = set()
    for k in range(3):
        first, last = -(-k // 3), (k + len(raw)) // 3  # groups of 3 bytes lying wholly inside the value
        for encode in (base64.b64encode, base64.urlsafe_b64encode):
            core = encode(b"\0" * k + raw)[first * 4:last * 4].decode()
            if core:
                cores.add(core)
    for encode in (base64.b64encode, base64.urlsafe_b64encode):
        cores.add(encode(raw).decode())
    return cores
