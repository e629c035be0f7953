"""Push and pull against a real registry: byte-identical round trips, and only missing data moves."""

from __future__ import annotations

import itertools
from pathlib import Path

import pytest

from imgtool.errors import AlreadyExists, Refused
from imgtool.gallery import lookup
from imgtool.remote import format as fmt
from imgtool.remote.pull import pull
from imgtool.remote.push import push
from store.verify import verify
from tests.remote.helpers import add_remote, changed, disk_bytes, exported, make_home, publish_bytes
from tests.remote.registry import Registry

pytestmark = pytest.mark.integration
_ids = itertools.count()


def unique(prefix: str) -> str:
    return f"{prefix}{next(_ids)}"


def test_round_trip_is_byte_identical_and_second_push_sends_nothing(registry: Registry, tmp_path: Path) -> None:
    src = make_home(tmp_path / "a")
    data = disk_bytes(6 << 20, seed=1)
    publish_bytes(src, "team/base", "1.0.0", data)
    remote, target = add_remote(src, "origin", f"{registry.url}/{unique('rt')}")
    [first] = push(src, remote, target, "team/base@1.0.0")
    assert first.status == "pushed" and first.packs_uploaded >= 1
    sent = target.stats.bytes_sent
    assert sent >= first.bytes_uploaded > 0

    [again] = push(src, remote, target, "team/base")
    assert again.status == "present" and again.manifest == first.manifest
    assert target.stats.bytes_sent == sent  # nothing sent at all

    dst = make_home(tmp_path / "b", gallery_name="other")
    remote_b, target_b = add_remote(dst, "origin", remote.url)
    result = pull(dst, remote_b, target_b, "team/base@1.0.0")
    assert result.status == "pulled" and result.manifest == first.manifest
    assert exported(dst, "team/base@1.0.0", tmp_path / "b.raw") == bytes(data)
    version, _ = lookup.get_version(dst, "team/base@1.0.0")
    assert version.provenance["pulled_from"]["manifest"] == first.manifest
    assert version.provenance["pulled_from"]["repository"] == first.repository
    assert pull(dst, remote_b, target_b, "team/base@latest").status == "present"
    assert verify(dst.store, deep=True).ok


def test_pull_of_v2_onto_v1_fetches_only_the_changed_chunks(registry: Registry, tmp_path: Path) -> None:
    src = make_home(tmp_path / "a")
    v1 = disk_bytes(8 << 20, seed=2)
    v2 = changed(v1, 0.1, seed=3)
    publish_bytes(src, "team/base", "1.0.0", v1)
    publish_bytes(src, "team/base", "2.0.0", v2)
    remote, target = add_remote(src, "origin", f"{registry.url}/{unique('delta')}")
    one, two = push(src, remote, target, "team/base")
    assert two.bytes_uploaded < one.bytes_uploaded / 3  # v2's pack holds only its new chunks

    dst = make_home(tmp_path / "b", gallery_name="x")
    remote_b, target_b = add_remote(dst, "origin", remote.url)
    pull(dst, remote_b, target_b, "team/base@1.0.0")
    before = target_b.stats.bytes_received
    second = pull(dst, remote_b, target_b, "team/base@2.0.0")
    step = 128 << 10
    new_chunks = {bytes(v2[i:i + step]) for i in range(0, len(v2), step)} - \
        {bytes(v1[i:i + step]) for i in range(0, len(v1), step)}
    assert second.chunks_fetched == len(new_chunks)
    assert target_b.stats.bytes_received - before < one.bytes_uploaded / 3
    assert exported(dst, "team/base@2.0.0", tmp_path / "v2.raw") == bytes(v2)


def test_pull_as_another_name_and_identity_checks(registry: Registry, tmp_path: Path) -> None:
    src = make_home(tmp_path / "a")
    publish_bytes(src, "team/base", "1.0.0", disk_bytes(2 << 20, seed=4))
    remote, target = add_remote(src, "origin", f"{registry.url}/{unique('as')}")
    push(src, remote, target, "team")

    dst = make_home(tmp_path / "b", gallery_name="mine", definition="other")
    remote_b, target_b = add_remote(dst, "origin", remote.url)
    with pytest.raises(Refused, match="not the remote one"):
        pull(dst, remote_b, target_b, "team/base@1.0.0", as_ref="mine/other")
    pull(dst, remote_b, target_b, "team/base", as_ref="copies/base")
    assert lookup.get_version(dst, "copies/base@1.0.0")[0].gallery == "copies"
    publish_bytes(src, "team/base", "1.1.0", disk_bytes(2 << 20, seed=5))
    with pytest.raises(AlreadyExists):  # same number, other content: never overwritten
        other = make_home(tmp_path / "c")
        publish_bytes(other, "team/base", "1.0.0", disk_bytes(2 << 20, seed=6))
        remote_c, target_c = add_remote(other, "origin", remote.url)
        pull(other, remote_c, target_c, "team/base@1.0.0")


def test_push_refuses_another_version_under_an_existing_tag(registry: Registry, tmp_path: Path) -> None:
    url = f"{registry.url}/{unique('clash')}"
    first = make_home(tmp_path / "a")
    publish_bytes(first, "team/base", "1.0.0", disk_bytes(1 << 20, seed=7))
    push(first, *add_remote(first, "origin", url), "team")
    second = make_home(tmp_path / "b")
    publish_bytes(second, "team/base", "1.0.0", disk_bytes(1 << 20, seed=8))
    with pytest.raises(Refused, match="other disks"):
        push(second, *add_remote(second, "origin", url), "team")


def test_repository_names_map_reversibly() -> None:
    for name in ("base", "Base", "my_img", "a.b-c", "x--y", "UPPER", "a__b", "a-_b"):
        component = fmt.repo_component(name)
        assert fmt.name_of_component(component) == name
        assert component == component.lower()
    assert fmt.repo_component("base") == "base"
    assert fmt.repo_component("Base") != fmt.repo_component("base")
    assert fmt.repository("org/imgs", "Team", "base") == f"org/imgs/{fmt.repo_component('Team')}/base"


def test_part_of_a_pack_comes_by_range_requests(registry: Registry, tmp_path: Path) -> None:
    src = make_home(tmp_path / "a")
    v1 = disk_bytes(8 << 20, seed=9)
    publish_bytes(src, "team/base", "1.0.0", v1)
    publish_bytes(src, "team/base", "2.0.0", changed(v1, 0.1, seed=10))
    remote, target = add_remote(src, "origin", f"{registry.url}/{unique('range')}")
    push(src, remote, target, "team")
    dst = make_home(tmp_path / "b", gallery_name="x")
    remote_b, target_b = add_remote(dst, "origin", remote.url)
    pull(dst, remote_b, target_b, "team/base@2.0.0")  # holds 90% of v1's chunks now
    before = target_b.stats.bytes_received
    older = pull(dst, remote_b, target_b, "team/base@1.0.0")
    assert older.range_requests >= 1 and older.packs_whole == 0
    assert target_b.stats.bytes_received - before < len(v1) / 4
    assert exported(dst, "team/base@1.0.0", tmp_path / "v1.raw") == bytes(v1)
    assert verify(dst.store, deep=True).ok
