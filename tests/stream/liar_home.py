"""A lying registry (tests/remote/liar.py) serving one published version, and a user home that trusts it:
the setup the no-QEMU stream tests share."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import pytest

from imgtool.flows import sharing
from imgtool.home import Home
from imgtool.remote import remotes
from tests.cli import Cli
from tests.remote.helpers import make_home, publish_bytes
from tests.remote.liar import Liar
from tests.remote.liar import running as liar_running


@contextmanager
def serving(tmp_path_factory: pytest.TempPathFactory, repo: str, data: bytes | bytearray) -> Iterator[Liar]:
    """A liar holding `repo`@1.0.0 with `data` as its OS disk, pushed by a publisher home."""
    with liar_running() as server:
        src = make_home(tmp_path_factory.mktemp("publisher"))
        publish_bytes(src, repo, "1.0.0", data)
        remotes.add(src, "liar", server.url)
        sharing.push_source(src, f"{repo}@1.0.0", "liar")
        yield server


def user_home(liar: Liar, tmp_path: Path) -> Iterator[Home]:
    """A home with the liar as remote `origin`, trusted with policy any; no lies before or after."""
    liar.lies.clear()
    found = Home.at(tmp_path / "user")
    found.ensure()
    remotes.add(found, "origin", liar.url)
    Cli(found.root, env={"HOME": str(tmp_path / "h"), "REGISTRY_AUTH_FILE": ""})("trust", "policy", "origin", "any")
    yield found
    liar.lies.clear()
