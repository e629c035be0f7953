"""`/api/...` answers exactly what `imgtool --json COMMAND` prints for the same home: the real command line
in a subprocess against the same folder, compared document by document."""

from __future__ import annotations

import pytest
from starlette.testclient import TestClient

from imgtool.home import Home
from imgtool.web import security
from imgtool.web.app import build
from tests.cli import Cli

PAIRS = [
    ("/api/galleries", ("gallery", "list")),
    ("/api/galleries/team", ("gallery", "show", "team")),
    ("/api/galleries/team/definitions", ("definition", "list", "team")),
    ("/api/definitions/team/base", ("definition", "show", "team/base")),
    ("/api/definitions/team/base/versions", ("version", "list", "team/base")),
    ("/api/definitions/team/checked/versions", ("version", "list", "team/checked")),
    ("/api/definitions/team/base/resolve", ("version", "resolve", "team/base")),
    ("/api/versions/team/base/1.0.0", ("version", "show", "team/base@1.0.0")),
    ("/api/versions/team/base/1.1.0", ("version", "show", "team/base@1.1.0")),
    ("/api/versions/team/base/1.2.0", ("version", "show", "team/base@1.2.0")),
    ("/api/versions/team/checked/1.0.0", ("version", "show", "team/checked@1.0.0")),
    ("/api/versions/pulled/base/1.0.0", ("version", "show", "pulled/base@1.0.0")),
    ("/api/versions/team/base/1.2.0/users", ("version", "users", "team/base@1.2.0")),
    ("/api/versions/team/base/1.0.0/users", ("version", "users", "team/base@1.0.0")),
    ("/api/vms", ("vm", "list")),
    ("/api/vms/web1", ("vm", "show", "web1")),
    ("/api/remotes", ("remote", "list")),
    ("/api/trust", ("trust", "list")),
]


@pytest.fixture(scope="module")
def api(web_home: Home) -> TestClient:
    keys = security.Secrets()
    c = TestClient(build(web_home.root, keys))
    c.cookies.set(security.COOKIE, keys.token)
    for path, _ in PAIRS:  # twice: the second answers come from the server's caches
        c.get(path)
    return c


@pytest.mark.parametrize(("path", "command"), PAIRS, ids=[p for p, _ in PAIRS])
def test_the_api_answers_the_cli_json_document(web_home: Home, api: TestClient, path: str,
                                               command: tuple[str, ...]) -> None:
    expected = Cli(web_home.root).json(*command)
    answer = api.get(path)
    assert answer.status_code == 200
    assert answer.json() == expected


def test_du_matches_once_the_caches_are_written(web_home: Home, api: TestClient) -> None:
    """du counts the home's own bytes, and reads write the version index caches: compare after both
    sides have read everything once."""
    cli = Cli(web_home.root)
    cli.json("du")
    api.get("/api/du")
    assert api.get("/api/du").json() == cli.json("du")


def test_an_error_is_the_cli_error_object(web_home: Home, api: TestClient) -> None:
    done = Cli(web_home.root)("--json", "version", "show", "team/base@9.9.9", ok=False)
    import json

    expected = json.loads(done.stdout)
    answer = api.get("/api/versions/team/base/9.9.9")
    assert answer.status_code == 404 and answer.json() == expected
