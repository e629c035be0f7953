"""One home for the web tests (built once per session: a few seconds, no QEMU)."""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest

from imgtool.home import Home
from tests.web.home import build


@pytest.fixture(scope="session")
def web_home(tmp_path_factory: pytest.TempPathFactory) -> Home:
    """The full home: needs qemu-img for its VM (skips locally without it, fails in CI)."""
    from tests.conftest import require_tools

    require_tools("qemu-img")
    root = tmp_path_factory.mktemp("web")
    return build(root / "home", root / "layout", with_vm=True)


@pytest.fixture
def fresh_home(web_home: Home, tmp_path: Path) -> Home:
    """A copy of the full home that a test may change (actions)."""
    shutil.copytree(web_home.root, tmp_path / "home", symlinks=True)
    return Home.at(tmp_path / "home")
