"""Registry fixtures: real distribution registries on 127.0.0.1, stopped by pid in teardown."""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from tests.conftest import require_tools
from tests.remote.registry import Registry, running

USER, PASSWORD = "alice", "s3cret-pass"


@pytest.fixture(scope="session")
def registry() -> Iterator[Registry]:
    """An anonymous registry shared by the session (tests use their own repositories)."""
    require_tools("docker-registry")
    with running() as reg:
        yield reg


@pytest.fixture(scope="session")
def registry_b() -> Iterator[Registry]:
    """A second anonymous registry (replication, skopeo copy between registries)."""
    require_tools("docker-registry")
    with running() as reg:
        yield reg


@pytest.fixture(scope="session")
def auth_registry() -> Iterator[Registry]:
    """A registry with htpasswd (bcrypt cost 5) and one user, USER/PASSWORD."""
    require_tools("docker-registry", "htpasswd")
    with running(users={USER: PASSWORD}) as reg:
        yield reg


@pytest.fixture
def own_registry() -> Iterator[Registry]:
    """A registry for one test only (tests that stop or restart it)."""
    require_tools("docker-registry")
    with running() as reg:
        yield reg
