"""Token auth with the REAL distribution 2.8 registry and the test token server (tests/remote/token_server.py).

Proves the fixture and what the registry enforces: scoped JWTs it verifies, a reader that can pull
but not push (nothing half-written), an outsider that can neither list nor pull, tokens forged by
another key refused, and a token that expires mid-transfer replaced by a fresh one.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest
from cryptography.hazmat.primitives.asymmetric import ec

from tests.conftest import require_tools
from tests.remote.token_server import TokenServer
from tests.remote.token_server import running as token_server
from tests.trust import token_registry
from tests.trust.oci import Client, challenge, digest_of, push_artifact, wait_until_refused

# real_clock: the Go registry checks token lifetimes against the real clock, which libfaketime cannot move.
pytestmark = [pytest.mark.integration, pytest.mark.real_clock]


def actions_of(scope: str) -> tuple[str, set[str]]:
    """`type:name:a,b` as (`type:name`, {a, b})."""
    resource, _, actions = scope.rpartition(":")
    return resource, set(actions.split(","))


@dataclass
class Setup:
    tokens: TokenServer
    host: str

    def client(self, user: str | None) -> Client:
        password = self.tokens.users[user].password if user else None
        return Client(self.host, user, password)


@pytest.fixture(scope="module")
def setup(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Setup]:
    require_tools("docker-registry")
    root = tmp_path_factory.mktemp("token-auth")
    with token_server(root / "tokens") as tokens, token_registry.running(tokens) as host:
        yield Setup(tokens, host)


@pytest.fixture(scope="module")
def published(setup: Setup) -> tuple[str, list[bytes]]:
    layers = [b"pack one " * 1000, b"pack two " * 1000, b"pack three " * 1000]
    digest, _ = push_artifact(setup.client("writer"), "team/base", "1.0.0", layers)
    return digest, layers


def test_the_registry_demands_a_bearer_token_from_this_server(setup: Setup) -> None:
    answer = setup.client(None)._raw("GET", "/v2/")
    assert answer.status == 401
    found = challenge(answer.headers["www-authenticate"])
    assert found["kind"] == "bearer" and found["realm"] == setup.tokens.realm


def test_reader_pulls_team_base(setup: Setup, published: tuple[str, list[bytes]]) -> None:
    digest, layers = published
    reader = setup.client("reader")
    manifest = reader.manifest("team/base", "1.0.0")
    assert manifest.status == 200 and digest_of(manifest.body) == digest
    for layer in layers:
        blob = reader.blob("team/base", digest_of(layer))
        assert blob.status == 200 and blob.body == layer
    assert reader.tags("team/base").json() == {"name": "team/base", "tags": ["1.0.0"]}
    assert setup.tokens.issued[-1].user == "reader"


def test_reader_cannot_push_and_nothing_is_half_written(setup: Setup, published: tuple[str, list[bytes]]) -> None:
    reader = setup.client("reader")
    start = len(setup.tokens.issued)
    blob = b"not allowed " * 100
    refused = reader.push_blob("team/base", blob)
    assert refused.status == 401
    assert challenge(refused.headers["www-authenticate"]).get("error") == "insufficient_scope"
    asked = setup.tokens.issued[start]
    # The registry names the actions in no fixed order (a Go map), so they are compared as a set.
    assert [actions_of(s) for s in asked.scopes] == [("repository:team/base", {"pull", "push"})]
    assert asked.access == ({"type": "repository", "name": "team/base", "actions": ["pull"]},)
    assert reader.push_manifest("team/base", "9.9.9", b"{}").status == 401
    writer = setup.client("writer")
    assert writer.tags("team/base").json() == {"name": "team/base", "tags": ["1.0.0"]}
    assert writer.blob("team/base", digest_of(blob)).status == 404


def test_outsider_can_neither_list_nor_pull(setup: Setup, published: tuple[str, list[bytes]]) -> None:
    digest, layers = published
    for who in ("outsider", None):
        client = setup.client(who)
        assert client.tags("team/base").status == 401
        assert client.manifest("team/base", digest).status == 401
        assert client.blob("team/base", digest_of(layers[0])).status == 401
        assert client.catalog().status == 401
    assert setup.client("writer").catalog().status == 200


def test_wrong_password_gets_no_token(setup: Setup) -> None:
    client = Client(setup.host, "reader", "wrong")
    answer = client.tags("team/base")
    assert answer.status == 401 and client.fetched == 0


def test_a_token_signed_by_another_key_is_refused(setup: Setup, published: tuple[str, list[bytes]]) -> None:
    forger = TokenServer(setup.tokens.root / "forger")
    forger._key = ec.generate_private_key(ec.SECP256R1())  # same claims, a key the registry does not trust
    access = [{"type": "repository", "name": "team/base", "actions": ["pull"]}]
    client = setup.client(None)
    client.tokens["repository:team/base:pull"] = forger.token("reader", access)
    genuine = setup.tokens.token("reader", access)
    assert client._raw("GET", "/v2/team/base/tags/list",
                       headers={"Authorization": f"Bearer {genuine}"}).status == 200
    assert client._raw("GET", "/v2/team/base/tags/list",
                       headers={"Authorization": f"Bearer {client.tokens['repository:team/base:pull']}"}).status == 401


def test_a_token_expiring_mid_transfer_is_refreshed(setup: Setup, published: tuple[str, list[bytes]]) -> None:
    _, layers = published
    setup.tokens.valid_for = 2  # seconds of real validity at the registry
    try:
        reader = setup.client("reader")
        assert reader.blob("team/base", digest_of(layers[0])).status == 200
        assert reader.fetched == 1
        stale = reader.tokens["repository:team/base:pull"]
        wait_until_refused(reader, stale)
        # The rest of the transfer: the stale token is refused once, a new one is fetched, the pull goes on.
        for layer in layers[1:]:
            answer = reader.blob("team/base", digest_of(layer))
            assert answer.status == 200 and answer.body == layer
        assert reader.fetched >= 2
        assert reader.tokens["repository:team/base:pull"] != stale
    finally:
        setup.tokens.valid_for = 300


def test_token_server_stops(tmp_path: Path) -> None:
    with token_server(tmp_path) as server:
        port = server.port
    with pytest.raises(OSError):
        Client(f"127.0.0.1:{port}", timeout=2)._raw("GET", f"http://127.0.0.1:{port}/token")
