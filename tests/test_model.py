"""Records: validation, round trips, refusal of unknown formats and fields."""

import pytest

from imgtool.errors import Corrupt, InvalidArgument
from imgtool.gallery.model import Definition, Disk, Gallery, ImageVersion, PulledFrom, Range


def definition(**changes: object) -> Definition:
    body: dict[str, object] = {"gallery": "team", "name": "base", "publisher": "acme", "offer": "base",
                               "sku": "v1", "os_type": "linux", "os_state": "generalized"}
    body.update(changes)
    return Definition(**body)  # type: ignore[arg-type]


def test_definition_round_trip() -> None:
    d = definition(vcpus=Range(1, 4), memory_mib=Range(256, 4096), tags=(("team", "infra"),),
                   disallowed_disk_formats=("vmdk",))
    assert Definition.from_json(d.to_json()) == d


@pytest.mark.parametrize("field,value", [("os_type", "beos"), ("os_state", "frozen"), ("firmware", "coreboot"),
                                         ("architecture", "mips"), ("publisher", ""), ("sku", "a/b")])
def test_definition_rejects_bad_values(field: str, value: str) -> None:
    with pytest.raises(InvalidArgument):
        definition(**{field: value})


def test_range_rules() -> None:
    with pytest.raises(InvalidArgument):
        Range(4, 2)
    with pytest.raises(InvalidArgument):
        Range(0, 2)
    assert Range(1, 4).contains(4) and not Range(1, 4).contains(5)
    assert Range().contains(10**6)


def test_unknown_format_and_fields_are_refused() -> None:
    body = Gallery("team").to_json()
    with pytest.raises(Corrupt, match="newer imgtool"):
        Gallery.from_json({**body, "format": 2})
    with pytest.raises(Corrupt, match="unknown fields"):
        Gallery.from_json({**body, "surprise": 1})


def test_version_links_reach_disks_and_definition() -> None:
    v = ImageVersion("team", "base", "1.0.0", "generalized",
                     (Disk(None, "blake3:" + "a" * 64, 10, {}), Disk(0, "blake3:" + "b" * 64, 20, {})),
                     "blake3:" + "c" * 64)
    body = v.to_json()
    assert body["links"] == sorted(["blake3:" + "a" * 64, "blake3:" + "b" * 64, "blake3:" + "c" * 64])
    assert ImageVersion.from_json(body) == v
    with pytest.raises(InvalidArgument, match="cannot change"):
        v.updated_with(os_state="specialized")
    assert v.updated_with(exclude_from_latest=True).exclude_from_latest


def test_pulled_from_is_typed_and_its_bytes_unchanged() -> None:
    origin = PulledFrom("hub", "https://hub.test", "team/base", "1.0.0", "sha256:" + "d" * 64, "2026-01-02T03:04:05Z")
    v = ImageVersion("team", "base", "1.0.0", "generalized", (Disk(None, "blake3:" + "a" * 64, 10, {}),),
                     "blake3:" + "c" * 64, provenance={"os_disk": {}, "pulled_from": origin.to_json()})
    body = v.to_json()
    # the field order pull has always written (docs/STORE-FORMAT.md)
    assert list(body["provenance"]["pulled_from"]) == ["remote", "url", "repository", "tag", "manifest", "pulled"]
    assert ImageVersion.from_json(body).pulled_from == origin
    assert ImageVersion.from_json({**body, "provenance": {}}).pulled_from is None


@pytest.mark.parametrize("change", [{"surprise": "x"}, {"tag": 1}, {"manifest": None}])
def test_a_malformed_pulled_from_is_refused_when_read(change: dict[str, object]) -> None:
    origin = {**PulledFrom("hub", "u", "r", "1.0.0", "sha256:" + "d" * 64, "t").to_json(), **change}
    body = ImageVersion("team", "base", "1.0.0", "generalized", (Disk(None, "blake3:" + "a" * 64, 10, {}),),
                        "blake3:" + "c" * 64, provenance={"pulled_from": origin}).to_json()
    with pytest.raises(Corrupt, match="pulled_from"):
        ImageVersion.from_json(body)
    with pytest.raises(Corrupt, match="version record"):
        ImageVersion.from_json({**body, "provenance": {"pulled_from": "hub"}})
