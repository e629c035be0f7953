"""Push and pull against a real registry: byte-identical round trips, and only missing data moves."""

from __future__ import annotations

import itertools
from pathlib import Path

import pytest

from imgtool.errors import AlreadyExists, Corrupt, Refused
from imgtool.gallery import lookup
from imgtool.home import Home
from imgtool.oci import media
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


def test_a_push_after_optimize_sends_one_chunk_per_frame(registry: Registry, tmp_path: Path) -> None:
    """optimize leaves chunks in frames that span 32 of them; a push takes each out as a frame of its own."""
    from imgtool import maintenance

    src = make_home(tmp_path / "a")
    data = disk_bytes(6 << 20, seed=11)
    publish_bytes(src, "team/base", "1.0.0", data)
    assert maintenance.optimize(src, dry_run=False).done["packs_rewritten"] >= 1
    remote, target = add_remote(src, "origin", f"{registry.url}/{unique('opt')}")
    [pushed] = push(src, remote, target, "team/base@1.0.0")
    assert pushed.status == "pushed"
    dst = make_home(tmp_path / "b", gallery_name="other")
    remote_b, target_b = add_remote(dst, "origin", remote.url)
    assert pull(dst, remote_b, target_b, "team/base@1.0.0").status == "pulled"
    assert exported(dst, "team/base@1.0.0", tmp_path / "b.raw") == bytes(data)
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
    # Another home's team/base with another identity: its new version must not join that repository.
    from imgtool.gallery.galleries import create_definition, create_gallery
    from imgtool.gallery.model import Definition
    other = Home.at(tmp_path / "c")
    create_gallery(other, "team")
    create_definition(other, Definition("team", "base", "someone", "else", "v9", "linux", "generalized"))
    publish_bytes(other, "team/base", "2.0.0", disk_bytes(1 << 20, seed=9))
    with pytest.raises(Refused, match="holds another definition"):
        push(other, *add_remote(other, "origin", url), "team")


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


def test_doc_examples_of_the_name_mapping() -> None:
    assert [fmt.repo_component(n) for n in ("Base", "a-_b", "x--y", "my_img")] == \
        ["x--ijqxgzi", "x--mewv6yq", "x--paws26i", "my_img"]


def test_damaged_blob_on_the_registry_is_refused_and_nothing_is_named(own_registry: Registry, tmp_path: Path) -> None:
    src = make_home(tmp_path / "a")
    publish_bytes(src, "team/base", "1.0.0", disk_bytes(2 << 20, seed=60))
    remote, target = add_remote(src, "origin", own_registry.url)
    [pushed] = push(src, remote, target, "team")
    fetched = target.get_manifest(pushed.repository, "1.0.0")
    pack = next(iter(fmt.parse_manifest(fetched.data, fetched.digest, "x").packs))
    data = own_registry.root / "data/docker/registry/v2/blobs/sha256" / pack[7:9] / pack[7:] / "data"
    damaged = bytearray(data.read_bytes())
    damaged[len(damaged) // 2] ^= 0xFF
    data.write_bytes(bytes(damaged))

    dst = make_home(tmp_path / "b", gallery_name="x")
    remote_b, target_b = add_remote(dst, "origin", own_registry.url)
    with pytest.raises(Corrupt):
        pull(dst, remote_b, target_b, "team/base@1.0.0")
    assert dst.store.get_name("versions", "team", "base", "1.0.0") is None
    assert dst.store.get_name("galleries", "team") is None
    assert verify(dst.store, deep=True).ok


def test_a_version_served_under_another_tag_is_refused(own_registry: Registry, tmp_path: Path) -> None:
    src = make_home(tmp_path / "a")
    publish_bytes(src, "team/base", "1.0.0", disk_bytes(1 << 20, seed=61))
    remote, target = add_remote(src, "origin", own_registry.url)
    [pushed] = push(src, remote, target, "team")
    fetched = target.get_manifest(pushed.repository, "1.0.0")
    target.put_manifest(pushed.repository, "9.9.9", fetched.data, media.OCI_MANIFEST)  # same bytes, other tag
    dst = make_home(tmp_path / "b", gallery_name="x")
    remote_b, target_b = add_remote(dst, "origin", own_registry.url)
    with pytest.raises(Refused, match="not its own"):
        pull(dst, remote_b, target_b, "team/base@9.9.9")
    assert dst.store.get_name("galleries", "team") is None


def test_data_disks_travel_and_siblings_share_by_mount(registry: Registry, tmp_path: Path) -> None:
    from imgtool.flows.publishing import publish_version as publish
    from imgtool.gallery.galleries import create_definition
    from imgtool.gallery.image_versions import PublishRequest, export
    from imgtool.gallery.model import Definition
    from imgtool.names import DefinitionRef, Version
    from store.ingest import ingest

    src = make_home(tmp_path / "a")
    create_definition(src, Definition("team", "web", "acme", "web", "v1", "linux", "generalized"))
    os_disk, data_disk = disk_bytes(2 << 20, seed=80), disk_bytes(1 << 20, seed=81)
    digests = []
    for data in (os_disk, data_disk):
        def read(offset: int, length: int, source: bytearray = data) -> bytes:
            return bytes(source[offset:offset + length])
        with src.store.writing():
            digests.append(ingest(src.store, virtual_size=len(data), read=read,
                                  indexes=range(len(data) // (128 << 10))).digest)
    # Random bytes, no guest OS the audit can read: published with the override.
    publish(src, PublishRequest(DefinitionRef("team", "base"), Version(1, 0, 0), os_disk=digests[0],
                                data_disks=((3, digests[1]),), allow_unaudited=True))
    publish(src, PublishRequest(DefinitionRef("team", "web"), Version(1, 0, 0), os_disk=digests[0],
                                allow_unaudited=True))
    remote, target = add_remote(src, "origin", f"{registry.url}/{unique('multi')}")
    _base, web = push(src, remote, target, "team")
    assert web.packs_mounted >= 1 and web.bytes_uploaded == 0  # every chunk of web is in base's packs

    dst = make_home(tmp_path / "b", gallery_name="x")
    remote_b, target_b = add_remote(dst, "origin", remote.url)
    pull(dst, remote_b, target_b, "team/base@1.0.0")
    export(dst, "team/base@1.0.0", tmp_path / "lun3.raw", fmt="raw", lun=3)
    assert (tmp_path / "lun3.raw").read_bytes() == bytes(data_disk)
    assert exported(dst, "team/base@1.0.0", tmp_path / "os.raw") == bytes(os_disk)
    before = target_b.stats.bytes_received
    assert pull(dst, remote_b, target_b, "team/web@1.0.0").chunks_fetched == 0
    assert target_b.stats.bytes_received - before < 64 << 10  # manifests, config and index only


@pytest.mark.parametrize("damage", ["nan", "wrong-record", "bad-digest", "recommended-list"])
def test_malformed_config_records_are_refused_cleanly(own_registry: Registry, tmp_path: Path, damage: str) -> None:
    import json as _json

    from imgtool.oci.descriptor import Descriptor, sha256_of
    from imgtool.oci.target import read_all
    from imgtool.remote.format import CONFIG_TYPE, manifest_bytes

    src = make_home(tmp_path / "a")
    publish_bytes(src, "team/base", "1.0.0", disk_bytes(1 << 20, seed=90))
    remote, target = add_remote(src, "origin", own_registry.url)
    [pushed] = push(src, remote, target, "team")
    fetched = target.get_manifest(pushed.repository, "1.0.0")
    manifest = fmt.parse_manifest(fetched.data, fetched.digest, "x")
    config = _json.loads(read_all(target.get_blob(pushed.repository, manifest.config.digest,
                                                  size=manifest.config.size)))
    if damage == "nan":
        text = _json.dumps(config).replace('"exclude_from_latest": false', '"exclude_from_latest": NaN').encode()
    else:
        if damage == "wrong-record":
            config["definition"]["description"] = "changed after publishing"
        elif damage == "bad-digest":
            config["version"]["disks"][0]["digest"] = "../../etc/passwd"
        else:
            config["definition"]["recommended"] = ["not", "an", "object"]
        text = _json.dumps(config).encode()
    target.put_blob(pushed.repository, sha256_of(text), text)
    body = manifest_bytes(Descriptor.of(CONFIG_TYPE, text), [*manifest.indexes, *manifest.packs.values()],
                          manifest.annotations)
    target.put_manifest(pushed.repository, "1.0.0", body, media.OCI_MANIFEST)
    dst = make_home(tmp_path / "b", gallery_name="x")
    remote_b, target_b = add_remote(dst, "origin", own_registry.url)
    with pytest.raises(Corrupt):
        pull(dst, remote_b, target_b, "team/base@1.0.0")
    assert dst.store.get_name("galleries", "team") is None
