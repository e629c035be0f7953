"""kill -9 during `pull REMOTE:GALLERY` (every version of every definition), at points spread over the
whole transfer: the store stays `verify --deep` clean and names only complete versions, and the rerun
resumes: the versions named before the kill come back "present", the rest "pulled", all of them whole."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from imgtool.gallery.galleries import VERSIONS
from imgtool.home import Home
from imgtool.remote import remotes
from store.verify import verify
from tests.reliability.harness import Zygote
from tests.remote.helpers import accept_unsigned
from tests.remote.proxy import proxy
from tests.remote.registry import Registry
from tests.remote.test_kill import Runner, source_home

pytestmark = pytest.mark.integration
POINTS = 8
ALL = [("team", "base", "1.0.0"), ("team", "base", "2.0.0"), ("team", "extra", "1.0.0")]


def named(home: Home) -> list[tuple[str, str, str]]:
    return [key for key in ALL if home.store.get_name(VERSIONS, *key) is not None]


def test_kill_during_a_gallery_pull(registry: Registry, zygote: Zygote, tmp_path: Path) -> None:
    src, _ = source_home(tmp_path / "src")
    with proxy(registry.url) as (url, switch):
        run = Runner(zygote, switch)
        remotes.add(src, "origin", f"{url}/killpullall")
        assert run(src.root, "push", "team", "origin")[0] == 0
        probe = Home.at(tmp_path / "probe")
        remotes.add(probe, "origin", f"{url}/killpullall")
        accept_unsigned(probe, "origin")
        total_requests, _bytes = run.measure(probe.root, "pull", "origin:team")

        partial = []
        for number in range(POINTS):
            home = Home.at(tmp_path / f"dst{number}")
            remotes.add(home, "origin", f"{url}/killpullall")
            accept_unsigned(home, "origin")
            at_request = 1 + number * (total_requests - 1) // POINTS
            status, _out, err = run(home.root, "pull", "origin:team", at_request=at_request)
            assert status == -9, f"point {number} did not kill: {err}"
            report = verify(home.store, deep=True)
            assert report.ok, report.problems
            before = named(home)
            partial.append(0 < len(before) < len(ALL))
            status, out, err = run(home.root, "pull", "origin:team")
            assert status == 0, err
            got = {(v["gallery"], v["definition"], v["version"]): v["status"] for v in json.loads(out)["versions"]}
            assert got == {key: "present" if key in before else "pulled" for key in ALL}, (number, before)
            assert named(home) == ALL and verify(home.store, deep=True).ok
        assert any(partial), "no kill fell between two versions: the resume was not exercised"
