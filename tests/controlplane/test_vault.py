"""The Vault-compatible schema for plain PostgreSQL keeps secrets sealed under a key held outside the database.

Secrets round-trip through vault.create_secret, vault.update_secret and vault.decrypted_secrets with the
key in the session; without it, or with another key, reading and writing fail saying why; the stored
column never holds the plaintext. The built-in `hmac1:` cipher (used where pgcrypto is missing, called
directly here so it is tested on a server that has pgcrypto too) is checked against an independent
Python implementation of the construction documented in the migration, both ways, and a flipped byte
anywhere in a sealed value fails its integrity check.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import secrets
import struct
from typing import Any

import psycopg
import pytest

from engine.controlplane.db import Database, migrate

NOT_SET = "the Vault key is not set in this session"
WRONG_KEY = "the Vault key of this session is not the key the secrets were stored with"
TAMPERED = "a Vault secret failed its integrity check"


def new_key(length: int = 32) -> str:
    return base64.b64encode(secrets.token_bytes(length)).decode()


@pytest.fixture
def vault_db(database: Database) -> Database:
    with database.connect() as conn:
        migrate(conn)
    return database


def with_key(db: Database, key: str) -> psycopg.Connection[Any]:
    """A connection that carries the Vault key from its start, as the CLI and workers connect."""
    return db.with_session({"ipai.vault_key": key}).connect()


def _hmac(key: bytes, message: bytes) -> bytes:
    return hmac.new(key, message, hashlib.sha256).digest()


def _keystream_xor(enc: bytes, nonce: bytes, data: bytes) -> bytes:
    stream = b"".join(_hmac(enc, nonce + struct.pack(">i", block)) for block in range((len(data) + 31) // 32))
    return bytes(d ^ s for d, s in zip(data, stream))


def _keys(key_b64: str) -> tuple[bytes, bytes]:
    k = base64.b64decode(key_b64)
    return _hmac(k, b"ipai vault encryption"), _hmac(k, b"ipai vault authentication")


def open_hmac1(sealed: str, key_b64: str) -> str:
    """Decrypt an `hmac1:` value: body = nonce(16) || tag(32) || ciphertext, tag = HMAC(mac, nonce || ct)."""
    enc, mac = _keys(key_b64)
    body = base64.b64decode(sealed.removeprefix("hmac1:"))  # PostgreSQL's base64 breaks lines; b64decode skips them
    nonce, tag, ct = body[:16], body[16:48], body[48:]
    if not hmac.compare_digest(tag, _hmac(mac, nonce + ct)):
        raise ValueError("tag mismatch")
    return _keystream_xor(enc, nonce, ct).decode()


def seal_hmac1(plain: str, key_b64: str) -> str:
    enc, mac = _keys(key_b64)
    nonce = secrets.token_bytes(16)
    ct = _keystream_xor(enc, nonce, plain.encode())
    return "hmac1:" + base64.b64encode(nonce + _hmac(mac, nonce + ct) + ct).decode()


def test_a_secret_round_trips_with_the_key(vault_db: Database) -> None:
    key = new_key()
    with with_key(vault_db, key) as conn:
        sid = conn.execute("select vault.create_secret('first value', 'api_token', 'for the test')").fetchone()[0]
        read = "select name, description, decrypted_secret from vault.decrypted_secrets where id = %s"
        assert conn.execute(read, (sid,)).fetchone() == ("api_token", "for the test", "first value")
        conn.execute("select vault.update_secret(%s, 'second value')", (sid,))
        assert conn.execute(read, (sid,)).fetchone() == ("api_token", "for the test", "second value")
        conn.execute("select vault.update_secret(%s, null, 'renamed')", (sid,))
        assert conn.execute(read, (sid,)).fetchone() == ("renamed", "for the test", "second value")


def test_the_stored_column_never_holds_the_plaintext(vault_db: Database) -> None:
    key = new_key()
    values = [f"canary-{secrets.token_hex(8)}" for _ in range(2)]
    with with_key(vault_db, key) as conn:
        pgcrypto = conn.execute("select exists (select from pg_extension where extname = 'pgcrypto')").fetchone()[0]
        sid = conn.execute("select vault.create_secret(%s, 'canary')", (values[0],)).fetchone()[0]
        stored = [conn.execute("select secret from vault.secrets where id = %s", (sid,)).fetchone()[0]]
        conn.execute("select vault.update_secret(%s, %s)", (sid, values[1]))
        stored.append(conn.execute("select secret from vault.secrets where id = %s", (sid,)).fetchone()[0])
    for value, sealed in zip(values, stored):
        assert sealed.startswith("pgp1:" if pgcrypto else "hmac1:")
        for form in (value, base64.b64encode(value.encode()).decode(), value.encode().hex()):
            assert form not in sealed
    assert stored[0] != stored[1]


def test_without_the_key_nothing_is_read_or_written(vault_db: Database) -> None:
    with with_key(vault_db, new_key()) as conn:
        conn.execute("select vault.create_secret('value', 'stored')")
    with vault_db.connect() as conn:
        with pytest.raises(psycopg.Error, match=NOT_SET):
            conn.execute("select decrypted_secret from vault.decrypted_secrets")
        with pytest.raises(psycopg.Error, match=NOT_SET):
            conn.execute("select vault.create_secret('value', 'another')")


def test_another_key_is_named_as_the_wrong_one(vault_db: Database) -> None:
    with with_key(vault_db, new_key()) as conn:
        sid = conn.execute("select vault.create_secret('value', 'stored')").fetchone()[0]
    with with_key(vault_db, new_key()) as conn:
        with pytest.raises(psycopg.Error, match=WRONG_KEY):
            conn.execute("select decrypted_secret from vault.decrypted_secrets")
        with pytest.raises(psycopg.Error, match=WRONG_KEY):
            conn.execute("select vault.update_secret(%s, 'overwritten')", (sid,))
        with pytest.raises(psycopg.Error, match=WRONG_KEY):
            conn.execute("select vault.create_secret('value', 'another')")


def test_a_short_key_is_refused(vault_db: Database) -> None:
    with with_key(vault_db, new_key(16)) as conn:
        with pytest.raises(psycopg.Error, match="at least 32 bytes"):
            conn.execute("select vault.create_secret('value', 'stored')")


PLAINTEXTS = ["", "x", "a" * 32, "b" * 33, "naïve café € 😀 " * 7]


@pytest.mark.parametrize("key_bytes", [32, 100], ids=["32-byte key", "100-byte key (hashed by HMAC)"])
def test_hmac1_is_the_documented_construction(vault_db: Database, key_bytes: int) -> None:
    key = new_key(key_bytes)
    with with_key(vault_db, key) as conn:
        for plain in PLAINTEXTS:
            sealed = conn.execute("select vault._seal_hmac(%s)", (plain,)).fetchone()[0]
            assert open_hmac1(sealed, key) == plain, "Python opens what the database sealed"
            ours = seal_hmac1(plain, key)
            assert conn.execute("select vault._open(%s)", (ours,)).fetchone()[0] == plain, \
                "the database opens what Python sealed"


@pytest.mark.parametrize("where", [0, 15, 16, 47, 48, -1], ids=["nonce", "nonce end", "tag", "tag end",
                                                                "ciphertext", "ciphertext end"])
def test_a_flipped_byte_fails_the_integrity_check(vault_db: Database, where: int) -> None:
    key = new_key()
    with with_key(vault_db, key) as conn:
        sealed = conn.execute("select vault._seal_hmac('a secret worth altering')").fetchone()[0]
        body = bytearray(base64.b64decode(sealed.removeprefix("hmac1:")))
        body[where] ^= 0x01
        tampered = "hmac1:" + base64.b64encode(bytes(body)).decode()
        with pytest.raises(psycopg.Error, match=TAMPERED):
            conn.execute("select vault._open(%s)", (tampered,))
        conn.execute("insert into vault.secrets (name, secret) values ('tampered', %s)", (tampered,))
        with pytest.raises(psycopg.Error, match=TAMPERED):
            conn.execute("select decrypted_secret from vault.decrypted_secrets where name = 'tampered'")
