"""What the platform keeps on this machine is its owner's alone, and the control plane's connection asks for TLS
beyond loopback (issue 16, hole 13): IPAI_HOME 0700, logs and the Vault key 0600, Ray's temp folder 0700,
`sslmode=require` for a database on another host."""

from __future__ import annotations

import os
import stat
import tempfile
from collections.abc import Iterator
from pathlib import Path

import pytest
import ray

from engine.cli.mcp_server import _workers
from engine.controlplane.db import default_sslmode
from engine.controlplane.vault import vault_key
from engine.core.errors import ConfigError
from engine.core.private import private_dir


def mode(path: Path) -> int:
    return stat.S_IMODE(path.stat().st_mode)


@pytest.fixture
def loose_umask() -> Iterator[None]:
    """The common umask 022, under which a plain mkdir gives 0755 and a plain open 0644."""
    old = os.umask(0o022)
    yield
    os.umask(old)


@pytest.mark.usefixtures("loose_umask")
def test_the_home_and_the_vault_key_are_the_owners_alone(tmp_path, monkeypatch):
    monkeypatch.delenv("IPAI_VAULT_KEY", raising=False)
    home = tmp_path / "users" / "home"

    key = vault_key(home, create=True)

    assert key and mode(home) == 0o700 and mode(home / "vault.key") == 0o600
    assert mode(home.parent) == 0o755  # the home's parents are the user's own: made as any folder is


@pytest.mark.usefixtures("loose_umask")
def test_worker_logs_are_the_owners_alone(settings):
    """`ipai mcp` starts its workers with their output in <home>/logs: folder 0700, files 0600."""
    settings.home.mkdir(mode=0o755)
    with _workers(settings, 1):
        pass
    log = settings.home / "logs" / "mcp-worker-0.log"
    assert log.exists() and mode(log) == 0o600
    assert mode(settings.home) == 0o700 and mode(settings.home / "logs") == 0o700  # an 0755 home is tightened


def test_a_folder_of_another_user_is_refused(tmp_path):
    planted = tmp_path / "ipai-ray-planted"
    planted.mkdir()
    os.chmod(planted, 0o777)
    os.chown(planted, 54321, 54321)
    with pytest.raises(ConfigError, match=r"ipai-ray-planted belongs to another user \(uid 54321\)"):
        private_dir(planted)
    assert mode(planted) == 0o777  # refused, not adopted


def test_rays_temp_folder_is_the_owners_alone(ray_cluster):
    """Ray opens its own temp folder to everyone (0777); the folder around it is owner-only."""
    session = Path(ray._private.worker._global_node.get_session_dir_path())
    ray_temp, around = session.parent, session.parent.parent
    assert around.name == f"ipai-u{os.getuid()}" and mode(around) == 0o700
    assert str(ray_temp).startswith(tempfile.gettempdir()) and ray_temp.name == "ray"


@pytest.mark.parametrize(("url", "expected"), [
    ("postgresql://ipai@db.example.com:5432/ipai", "require"),
    ("postgresql://ipai@10.0.0.5/ipai", "require"),
    ("host=db.example.com dbname=ipai user=ipai", "require"),
    ("postgresql://ipai@localhost,db.example.com/ipai", "require"),  # a fallback host beyond loopback
    ("postgresql://ipai@db.example.com/ipai?sslmode=verify-full&sslrootcert=/etc/ca.pem", None),  # the URL says
    ("postgresql://ipai@db.example.com/ipai?sslmode=disable", None),
    ("postgresql://postgres@127.0.0.1:5432/ipai", None),
    ("postgresql://postgres@localhost/ipai", None),
    ("postgresql://postgres@[::1]/ipai", None),
    ("postgresql:///ipai?host=/var/run/postgresql", None),  # a Unix socket
])
def test_connections_beyond_loopback_ask_for_tls(url, expected, monkeypatch):
    monkeypatch.delenv("PGSSLMODE", raising=False)
    monkeypatch.delenv("PGHOST", raising=False)
    assert default_sslmode(url) == expected


def test_pgsslmode_in_the_environment_is_left_to_libpq(monkeypatch):
    monkeypatch.setenv("PGSSLMODE", "verify-full")
    assert default_sslmode("postgresql://ipai@db.example.com/ipai") is None
