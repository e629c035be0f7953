"""Pure parts of the web view: the lineage graph, paging, the listen address, the background count,
the token helpers, the memo's keys."""

from __future__ import annotations

import os
import socket
from pathlib import Path

import pytest

from imgtool.errors import InvalidArgument
from imgtool.gallery.version_index import RACY_NS
from imgtool.home import Home
from imgtool.names import DefinitionRef
from imgtool.web import background, lineage, security, server
from imgtool.web.lineage import VersionFact, VmFact
from imgtool.web.memo import Memo, definition_key, home_key, store_key
from imgtool.web.views import Window
from store import fsclock


def test_lineage_links_versions_vms_and_remotes_and_spreads_revocation() -> None:
    versions = [VersionFact("g/d@1.0.0", revoked="CVE"), VersionFact("g/d@1.1.0"),
                VersionFact("g/d@2.0.0", parents=("g/d@1.0.0",), via_vms=("box",)),
                VersionFact("g/e@1.0.0", parents=("g/d@2.0.0",)),
                VersionFact("p/d@1.0.0", pulled_from="hub", pulled_digest="sha256:" + "ab" * 32),
                VersionFact("g/d@3.0.0", parents=("g/d@1.1.0",), via_vms=("gone/snap",))]
    graph = lineage.build(versions, [VmFact("box", "g/d@1.0.0"), VmFact("other", "g/d@1.1.0")])
    edges = {(e.source, e.target, e.label) for e in graph.edges}
    assert ("version:g/d@1.0.0", "vm:box", "VM made from it") in edges
    assert ("vm:box", "version:g/d@2.0.0", "captured from the VM") in edges
    assert ("version:g/d@2.0.0", "version:g/e@1.0.0", "copied from") in edges
    assert ("remote:hub", "version:p/d@1.0.0", "pulled") in edges
    assert ("version:g/d@1.1.0", "version:g/d@3.0.0", "captured (the VM is gone)") in edges
    nodes = graph.nodes
    assert nodes["version:g/d@1.0.0"].revoked == "CVE"
    assert all(nodes[k].tainted for k in ("vm:box", "version:g/d@2.0.0", "version:g/e@1.0.0"))
    assert not nodes["version:g/d@1.1.0"].tainted and not nodes["vm:other"].tainted
    assert nodes["version:p/d@1.0.0"].detail == "pulled as sha256:" + "ab" * 6 + "…"
    assert graph.hidden_versions == 0
    assert nodes["vm:box"].x > nodes["version:g/d@1.0.0"].x  # results stand right of their origins
    assert nodes["version:g/e@1.0.0"].x > nodes["version:g/d@2.0.0"].x > nodes["vm:box"].x


def test_lineage_leaves_plain_versions_out_and_counts_them() -> None:
    graph = lineage.build([VersionFact(f"g/d@1.0.{i}") for i in range(10_000)], [])
    assert graph.nodes == {} and graph.hidden_versions == 10_000


def test_lineage_caps_what_it_draws() -> None:
    facts = [VersionFact(f"g/d@1.0.{i}", revoked="r") for i in range(lineage.MAX_NODES + 5)]
    graph = lineage.build(facts, [])
    assert len(graph.nodes) == lineage.MAX_NODES and graph.truncated == 5


def test_a_window_pages_newest_first() -> None:
    first = Window.of(120, 1, size=50)
    assert (first.page, first.pages, list(first.indexes)) == (1, 3, list(range(70, 120)))
    assert list(Window.of(120, 3, size=50).indexes) == list(range(0, 20))
    assert Window.of(120, 99, size=50).page == 3 and Window.of(0, 1).pages == 1
    assert list(Window.of(0, 1).indexes) == []


def test_listen_is_loopback_unless_an_address_is_given() -> None:
    assert server.parse_listen(None, 8470) == server.Listen("127.0.0.1", 8470)
    assert server.parse_listen(None, 0).loopback
    assert not server.parse_listen("0.0.0.0", 1).loopback
    assert server.parse_listen("::1", 1).url("t") == "http://[::1]:1/?token=t"
    with pytest.raises(InvalidArgument):
        server.parse_listen("localhost", 1)  # names are not resolved: what is bound is what was asked
    with pytest.raises(InvalidArgument):
        server.parse_listen(None, 70000)


def test_bind_reports_the_real_port_and_a_taken_one() -> None:
    sock, bound = server.bind(server.Listen("127.0.0.1", 0))
    try:
        assert bound.port == sock.getsockname()[1] != 0
        with pytest.raises(InvalidArgument, match="cannot listen"):
            server.bind(bound)
        with socket.create_connection(("127.0.0.1", bound.port), timeout=5):
            pass
    finally:
        sock.close()


def test_the_background_count_is_reused_until_it_is_stale() -> None:
    calls = []
    now = [1000.0]

    def compute() -> dict[str, int]:
        calls.append(1)
        return {"n": len(calls)}

    value = background.Refreshing(compute, max_age=30, clock=lambda: now[0])
    assert value.get().value is None  # the first count starts now
    value.wait(10)
    assert value.get().value == {"n": 1} and value.get().computed_at == 1000.0
    now[0] += 31
    assert value.get().value == {"n": 1}  # stale: shown, and a new count starts
    value.wait(10)
    assert value.get().value == {"n": 2}


def test_a_failed_count_is_reported() -> None:
    def broken() -> dict[str, int]:
        raise InvalidArgument("no", hint="")

    value = background.Refreshing(broken, clock=lambda: 0.0)
    value.get()
    value.wait(10)
    assert value.get().error is not None and "no" in str(value.get().error)


def test_a_count_is_current_only_while_its_key_is_unchanged() -> None:
    calls: list[int] = []
    state = ["a"]

    def compute() -> dict[str, int]:
        calls.append(1)
        return {"n": len(calls)}

    value = background.Refreshing(compute, key=lambda: state[0], max_age=30, clock=lambda: 1000.0)
    assert value.fresh(10).value == {"n": 1}  # nothing counted yet: counts now and waits
    assert value.fresh(10).value == {"n": 1} and len(calls) == 1  # current: the same count
    state[0] = "b"  # the home changed (a publish, a new pack)
    assert value.fresh(10).value == {"n": 2}
    assert value.get().value == {"n": 2} and not value.get().computing


def test_a_count_grows_old_only_while_something_can_change_unseen() -> None:
    calls: list[int] = []
    now = [1000.0]
    running = [False]

    def compute() -> dict[str, int]:
        calls.append(1)
        return {"n": len(calls)}

    value = background.Refreshing(compute, ages=lambda: running[0], max_age=30, clock=lambda: now[0])
    assert value.fresh(10).value == {"n": 1}
    now[0] += 3600
    assert value.fresh(10).value == {"n": 1}  # no VM runs: an hour-old count of an unchanged home holds
    running[0] = True
    assert value.fresh(10).value == {"n": 2}  # a VM runs: its disk may have grown
    now[0] += 10
    assert value.fresh(10).value == {"n": 2}


def test_a_count_is_never_current_while_its_key_cannot_be_told() -> None:
    calls: list[int] = []

    def compute() -> dict[str, int]:
        calls.append(1)
        return {"n": len(calls)}

    value = background.Refreshing(compute, key=lambda: None, clock=lambda: 0.0)
    assert value.fresh(10).value == {"n": 1}
    assert value.fresh(10).value == {"n": 2}  # a racy folder: counted again


def test_fresh_gives_the_failure_of_the_count_it_waited_for() -> None:
    def broken() -> dict[str, int]:
        raise InvalidArgument("no", hint="")

    snapshot = background.Refreshing(broken, clock=lambda: 0.0).fresh(10)
    assert snapshot.value is None and isinstance(snapshot.failure, InvalidArgument)


def test_the_store_key_follows_packs_and_new_home_folders(tmp_path: Path) -> None:
    home = Home.at(tmp_path / "home")
    home.store.layout.packs.mkdir(parents=True, exist_ok=True)
    _age(*_key_folders(home))
    before = store_key(home)
    assert before is not None and store_key(home) == before
    (home.store.layout.packs / "ab").mkdir()  # where a new pack goes
    _age(*_key_folders(home))
    after = store_key(home)
    assert after is not None and after != before
    (home.root / "bases").mkdir(exist_ok=True)
    (home.root / "bases" / "x").mkdir()  # a new VM base
    _age(*_key_folders(home))
    assert store_key(home) not in (None, after)


def _key_folders(home: Home) -> list[Path]:
    versions = home.store.layout.name("versions")
    found = [versions, *versions.glob("*"), *versions.glob("*/*"), home.vms, *home.vms.glob("*"),
             *home.root.glob("*"), *home.store.layout.packs.glob("*")]
    return [f for f in found if f.is_dir()]


def test_token_helpers() -> None:
    keys = security.Secrets()
    assert keys.token != keys.csrf and len(keys.token) >= 40
    assert keys.token_ok(keys.token) and not keys.token_ok(None) and not keys.token_ok(keys.csrf)
    assert security.without_token("/a", "token=x&page=2") == "/a?page=2"
    assert security.cookie_of([(b"cookie", b"a=1; imgtool_token=abc; b=2")]) == "abc"
    assert security.cookie_of([(b"cookie", b"imgtool_tokenx=abc")]) is None


def test_memo_keys_change_with_names_and_are_withheld_while_racy(tmp_path: Path) -> None:
    from imgtool.gallery import galleries
    from imgtool.gallery.model import Definition
    from tests.remote.helpers import disk_bytes, publish_bytes

    home = Home.at(tmp_path / "home")
    galleries.create_gallery(home, "g")
    galleries.create_definition(home, Definition("g", "d", "p", "o", "s", "linux", "specialized"))
    publish_bytes(home, "g/d", "1.0.0", disk_bytes(1 << 20, seed=9))
    ref = DefinitionRef("g", "d")
    folder = home.store.layout.name("versions", "g", "d")
    assert definition_key(home, ref) is None  # just changed: not remembered yet
    _age(folder)
    _age(home.store.layout.name("versions"), home.store.layout.name("versions", "g"), home.vms)
    before = definition_key(home, ref)
    whole = home_key(home)
    assert before is not None and whole is not None
    memo = Memo()
    assert memo.get("x", before, lambda: 1) == 1 and memo.get("x", before, lambda: 2) == 1
    publish_bytes(home, "g/d", "1.1.0", disk_bytes(1 << 20, seed=10))
    _age(folder)
    after = definition_key(home, ref)
    assert after is not None and after != before and home_key(home) != whole
    assert memo.get("x", after, lambda: 3) == 3
    assert memo.get("y", None, lambda: 4) == 4 and memo.get("y", None, lambda: 5) == 5


def _age(*folders: Path) -> None:
    for folder in folders:
        folder.mkdir(parents=True, exist_ok=True)
        old = fsclock.now_ns(folder) - 2 * RACY_NS  # the file system's clock, as the memo reads it
        os.utime(folder, ns=(old, old))


def test_the_audit_macro_words_every_verdict_and_escapes_findings() -> None:
    """The verdicts a real guest gives (clean, identity found) drawn from audit records as publish
    writes them; a finding's name is guest data and is escaped."""
    from imgtool.web.render import TEMPLATES

    audit = TEMPLATES.get_template("macros.html").module.audit  # type: ignore[attr-defined]
    clean = str(audit({"audited": True, "clean": True, "facts": {"os": "Debian GNU/Linux 12"}}))
    assert "state-passed" in clean and ">clean</span>, Debian GNU/Linux 12" in clean
    found = str(audit({"audited": True, "clean": False, "allowed_identity": True,
                       "findings": [{"check": "machine_id"}, {"check": "<img onerror=x>"}]}))
    assert "identity found</span> (published with --allow-identity): machine_id, &lt;img onerror=x&gt;" in found
    assert "<img" not in found
