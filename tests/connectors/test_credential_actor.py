"""The credential actor is shared by name and ends itself when idle, without Ray restarting it."""

from __future__ import annotations

import time
from pathlib import Path

import pytest
import ray

from connectors.httpkit.components import RateLimit
from connectors.httpkit.credential import NAMESPACE, CredentialRef
from connectors.httpkit.egress import EgressPolicy
from engine.controlplane.vault import VaultSecretStore
from engine.core.spec import BearerAuth, SecretRef

pytestmark = pytest.mark.usefixtures("ray_cluster")


def test_one_actor_per_credential_that_exits_when_idle(tmp_path: Path) -> None:
    auth = BearerAuth(type="bearer", token=SecretRef(secret="tok"))
    ref = CredentialRef.of(scope=f"test {tmp_path}", auth=auth, rate_limit=RateLimit(requests_per_second=5),
                           max_wait_s=60, store=VaultSecretStore("postgresql://unused", "no-run", "tenant"), egress=EgressPolicy(),
                           secrets={"tok": "value-1"})
    ref = CredentialRef(ref.id, ref.auth, ref.rate_limit, ref.max_wait_s, ref.store, ref.egress, idle_exit_s=1.0)
    first, second = ref.handle({"tok": "value-1"}), ref.handle({"tok": "value-1"})
    ray.get([first.acquire.remote(), second.acquire.remote()])
    assert ray.get(first.stats.remote())["granted"] == 2  # both handles reach one budget
    name = f"credential-{ref.id}"
    assert [a["namespace"] for a in ray.util.list_named_actors(all_namespaces=True) if a["name"] == name] == [NAMESPACE]
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        alive = [a for a in ray.util.list_named_actors(all_namespaces=True) if a["name"] == name]
        if not alive:
            break
        time.sleep(0.5)
    assert not alive, "the idle actor should have ended itself"
    time.sleep(2)
    assert not [a for a in ray.util.list_named_actors(all_namespaces=True) if a["name"] == name], \
        "Ray restarted an actor that ended on purpose"
