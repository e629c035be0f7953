"""The test registry itself: it serves the distribution API, enforces htpasswd and stops by pid."""

from __future__ import annotations

import os

import httpx
import pytest

from tests.conftest import require_tools
from tests.remote.conftest import PASSWORD, USER
from tests.remote.registry import Registry, running

pytestmark = pytest.mark.integration


def test_anonymous_registry_answers_v2(registry: Registry) -> None:
    answer = httpx.get(registry.url + "/v2/", timeout=5)
    assert answer.status_code == 200
    assert answer.headers["docker-distribution-api-version"] == "registry/2.0"


def test_htpasswd_registry_wants_the_password(auth_registry: Registry) -> None:
    assert httpx.get(auth_registry.url + "/v2/", timeout=5).status_code == 401
    assert httpx.get(auth_registry.url + "/v2/", auth=(USER, "wrong"), timeout=5).status_code == 401
    assert httpx.get(auth_registry.url + "/v2/", auth=(USER, PASSWORD), timeout=5).status_code == 200


def test_stop_ends_the_process() -> None:
    require_tools("docker-registry")
    with running() as reg:
        assert reg.process is not None
        pid = reg.process.pid
        if os.geteuid() == 0:  # runs unprivileged
            assert os.stat(f"/proc/{pid}").st_uid == 65534
    with pytest.raises(ProcessLookupError):
        os.kill(pid, 0)
