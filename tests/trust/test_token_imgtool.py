"""imgtool's own client against token auth: the REAL distribution 2.8 registry and the test token server.

A writer pushes; a reader pulls but cannot push ("no push access to …", nothing half-written); an
outsider can neither list nor pull; a token that expires in the middle of a pull is replaced and the
pull completes.
"""

from __future__ import annotations

import subprocess
import sys
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from imgtool.flows import sharing
from imgtool.home import Home
from imgtool.remote import remotes
from imgtool.remote.connect import open_target
from imgtool.remote.push import Pusher, versions_of
from imgtool.trust.homes import trust_store
from tests.cli import Cli
from tests.conftest import require_tools
from tests.remote.helpers import disk_bytes, make_home, publish_bytes
from tests.remote.token_server import TokenServer
from tests.remote.token_server import running as token_server
from tests.trust import token_registry
from tests.trust.oci import Client, wait_until_refused

# real_clock: the Go registry checks token lifetimes against the real clock, which libfaketime cannot move.
pytestmark = [pytest.mark.integration, pytest.mark.real_clock]


@dataclass
class Site:
    tokens: TokenServer
    host: str

    @property
    def url(self) -> str:
        return f"http://{self.host}"

    def cli(self, root: Path, user: str | None) -> Cli:
        cli = Cli(root / "home", env={"HOME": str(root / "h"), "REGISTRY_AUTH_FILE": "",
                                      "XDG_RUNTIME_DIR": str(root / "run")})
        cli("remote", "add", "origin", self.url)
        cli("trust", "policy", "origin", "any")
        if user is not None:
            env = {"IMGTOOL_HOME": str(cli.home), "HOME": str(root / "h"), "REGISTRY_AUTH_FILE": "",
                   "PATH": "/usr/bin:/bin"}
            done = subprocess.run([sys.executable, "-m", "imgtool", "remote", "login", "origin", "--username", user,
                                   "--password-stdin"], input=self.tokens.users[user].password + "\n", env=env,
                                  text=True, capture_output=True, timeout=60, check=False)
            assert done.returncode == 0, done.stderr
        return cli

    def tags(self) -> object:
        writer = Client(self.host, "writer", self.tokens.users["writer"].password)
        return writer.tags("team/base").json()


@pytest.fixture(scope="module")
def site(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Site]:
    require_tools("docker-registry")
    root = tmp_path_factory.mktemp("token-imgtool")
    with token_server(root / "tokens") as tokens, token_registry.running(tokens) as host:
        here = Site(tokens, host)
        writer = here.cli(root / "writer", "writer")
        src = Home.at(writer.home)
        make_home(src.root)
        publish_bytes(src, "team/base", "1.0.0", disk_bytes(6 << 20, seed=61))
        remote = remotes.get(src, "origin")
        # Small packs: a pull makes many blob requests, so a token can expire between them.
        pusher = Pusher(src, remote, open_target(src, remote), pack_target=256 << 10)
        [(version, _record)] = versions_of(src, "team/base@1.0.0")
        assert pusher.push(version).status == "pushed"
        yield here


def test_reader_pulls(site: Site, tmp_path: Path) -> None:
    reader = site.cli(tmp_path, "reader")
    assert reader.json("pull", "origin:team/base@1.0.0")["status"] == "pulled"  # type: ignore[index]
    assert reader("verify", "--deep").returncode == 0


def test_reader_cannot_push_and_nothing_is_half_written(site: Site, tmp_path: Path) -> None:
    reader = site.cli(tmp_path, "reader")
    reader("pull", "origin:team/base@1.0.0")
    publish_bytes(Home.at(reader.home), "team/base", "2.0.0", disk_bytes(1 << 20, seed=62))
    refused = reader("push", "team/base@2.0.0", "origin", ok=False)
    assert refused.returncode == 5, refused.stderr
    assert "no push access to team/base for user reader" in refused.stderr
    assert "push rights" in refused.stderr
    assert site.tags() == {"name": "team/base", "tags": ["1.0.0"]}


def test_outsider_can_neither_list_nor_pull(site: Site, tmp_path: Path) -> None:
    outsider = site.cli(tmp_path, "outsider")
    listed = outsider("remote", "versions", "origin:team/base", ok=False)
    assert listed.returncode == 5 and "no pull access to team/base" in listed.stderr, listed.stderr
    pulled = outsider("pull", "origin:team/base@1.0.0", ok=False)
    assert pulled.returncode == 5 and "no pull access to team/base" in pulled.stderr
    assert [k for k, _ in Home.at(outsider.home).store.all_names()] == []


def test_anonymous_is_told_to_log_in(site: Site, tmp_path: Path) -> None:
    anonymous = site.cli(tmp_path, None)
    pulled = anonymous("pull", "origin:team/base@1.0.0", ok=False)
    assert pulled.returncode == 5 and "imgtool remote login origin" in pulled.stderr, pulled.stderr


def test_a_token_expiring_mid_pull_is_refreshed(site: Site, tmp_path: Path) -> None:
    reader = site.cli(tmp_path, "reader")
    home = Home.at(reader.home)
    trust_store(home).set_policy("origin", "any")
    site.tokens.valid_for = 3
    start = len(site.tokens.issued)
    waited: list[str] = []

    def progress(_amount: int) -> None:
        if not waited:  # first chunk in: let the reader's token die at the registry, then carry on
            waited.append(_latest_token(site, start))
            wait_until_refused(Client(site.host), waited[0])
            site.tokens.valid_for = 300  # the tokens fetched from now on live long enough

    try:
        result = sharing.pull_ref(home, "origin:team/base@1.0.0", progress=progress)
    finally:
        site.tokens.valid_for = 300
    assert result.status == "pulled" and result.packs_whole + result.range_requests > 4
    later = [i for i in site.tokens.issued[start:] if i.user == "reader" and i.token != waited[0]]
    assert later, "no new token was fetched after the first one expired"
    assert reader("verify", "--deep").returncode == 0


def _latest_token(site: Site, start: int) -> str:
    mine = [i for i in site.tokens.issued[start:] if i.user == "reader" and "repository:team/base:pull" in i.scopes]
    assert mine
    return mine[-1].token
