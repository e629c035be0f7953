"""Boot profiles without QEMU: the document is checked strictly, travels as a referrer (push attaches it,
pull keeps it), streaming fetches its chunks first and in its order, and hostile profiles (bound to
another version, naming chunks the version does not have, oversized, malformed) are skipped with a
reason while the bytes read stay the version's. The profile a real boot check records, and a streamed
VM using it, are in tests/stream/test_boot_profile_boot.py."""

from __future__ import annotations

import json
import threading
from collections.abc import Iterator
from pathlib import Path

import pytest

from imgtool.errors import Corrupt
from imgtool.flows import boot_profiles, sharing
from imgtool.home import Home
from imgtool.oci import referrers
from imgtool.oci.descriptor import Descriptor
from imgtool.oci.media import OCI_MANIFEST
from imgtool.remote import remotes
from imgtool.stream.hydration import DiskSource, Hydration, prefetch
from imgtool.stream.serve import disks_of, profile_order
from imgtool.vm import boot_profile
from imgtool.vm.boot_profile import MEDIA_TYPE, BootProfile, DiskOrder
from tests.remote.helpers import add_remote, disk_bytes, make_home, publish_bytes
from tests.remote.liar import Liar
from tests.remote.liar import running as liar_running

REPO = "team/base"
DATA = disk_bytes(3 << 20, seed=67)  # 24 chunks of 128 KiB; 3, 10 and 17 are zeros
ORDER = (20, 5, 15, 0, 9, 23)
DIGEST = "blake3:" + "ab" * 32
SUBJECT = "sha256:" + "cd" * 32


# -- the document -----------------------------------------------------------------------------------------------------

def doc(**changes: object) -> bytes:
    body: dict[str, object] = {"kind": "boot-profile", "format": 1, "subject": SUBJECT,
                               "disks": [{"disk": "os", "digest": DIGEST, "chunks": [2, 0, 1]}]}
    body.update(changes)
    return json.dumps(body).encode()


def test_a_profile_round_trips_and_is_checked_against_its_version() -> None:
    profile = boot_profile.parse(doc(), what="p")
    assert profile == BootProfile(SUBJECT, (DiskOrder("os", DIGEST, (2, 0, 1)),))
    assert boot_profile.parse(profile.encode(), what="p") == profile
    disks = {"os": (DIGEST, frozenset({0, 1, 2, 3}))}
    boot_profile.check(profile, subject=SUBJECT, disks=disks, what="p")
    with pytest.raises(Corrupt, match="bound to"):
        boot_profile.check(profile, subject="sha256:" + "ee" * 32, disks=disks, what="p")
    with pytest.raises(Corrupt, match="names chunk 2 of disk os"):
        boot_profile.check(profile, subject=SUBJECT, disks={"os": (DIGEST, frozenset({0, 1}))}, what="p")
    with pytest.raises(Corrupt, match="names disk os"):
        boot_profile.check(profile, subject=SUBJECT, disks={"os": ("blake3:" + "00" * 32, frozenset({0, 1, 2}))},
                           what="p")


@pytest.mark.parametrize(("data", "why"), [
    (b"[1]", "not a JSON object"),
    (b"{", "not JSON"),
    (doc(extra=1), "unexpected fields"),
    (doc(format=2), "format"),
    (doc(subject="sha256:xyz"), "wrong form"),
    (doc(disks=[{"disk": "os", "digest": DIGEST, "chunks": [1, 1]}]), "listed twice"),
    (doc(disks=[{"disk": "os", "digest": DIGEST, "chunks": [-1]}]), "chunk numbers"),
    (doc(disks=[{"disk": "os", "digest": DIGEST, "chunks": [True]}]), "chunk numbers"),
    (doc(disks=[{"disk": "../x", "digest": DIGEST, "chunks": []}]), "wrong form"),
    (doc(disks=[{"disk": "os", "digest": DIGEST, "chunks": []}] * 2), "a disk is listed twice"),
    (doc(disks=[{"disk": "os", "digest": DIGEST, "chunks": list(range(boot_profile.MAX_CHUNKS + 1))}]),
     "chunk"),
    (b" " * (boot_profile.MAX_BYTES + 1), "limit"),
])
def test_malformed_profiles_are_refused(data: bytes, why: str) -> None:
    with pytest.raises(Corrupt, match=why):
        boot_profile.parse(data, what="a profile")


# -- on a registry --------------------------------------------------------------------------------------------------

@pytest.fixture(scope="module")
def liar(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Liar]:
    with liar_running() as server:
        src = make_home(tmp_path_factory.mktemp("publisher"))
        publish_bytes(src, REPO, "1.0.0", DATA)
        publish_bytes(src, REPO, "2.0.0", DATA[::-1])  # no profile of its own: hostile ones are attached to it
        disk = src.store.get_name("versions", "team", "base", "1.0.0")
        assert disk is not None
        version = src.store.get_manifest(disk)
        os_digest = version["disks"][0]["digest"]
        boot_profile.save(src.store, "team", "base", "1.0.0", BootProfile(None, (DiskOrder("os", os_digest, ORDER),)))
        remotes.add(src, "liar", server.url)
        sharing.push_source(src, REPO, "liar")
        yield server


@pytest.fixture
def home(liar: Liar, tmp_path: Path) -> Home:
    liar.lies.clear()
    found = Home.at(tmp_path / "user")
    found.ensure()
    add_remote(found, "origin", liar.url)
    return found


class Opened:
    """A stream's view of origin:team/base@V: its hydration, its disk, and the profile order it found."""

    def __init__(self, home: Home, version: str) -> None:
        self.home, self.version = home, version

    def __enter__(self) -> tuple[Hydration, DiskSource, list[bytes]]:
        self.context = sharing.judged_remote(self.home, f"origin:{REPO}@{self.version}")
        _remote, target, puller, judged = self.context.__enter__()
        disks = disks_of(puller, judged)
        sizes = {d: desc.size for d, desc in judged.manifest.packs.items()}
        self.hydration = Hydration(self.home.store, target, judged.repo, sizes, disks, lease_owner="t1")
        self.disks, self.judged, self.target = disks, judged, target
        return self.hydration, DiskSource(self.hydration, disks[0]), profile_order(target, judged, disks)

    def __exit__(self, *exc: object) -> None:
        self.hydration.close()
        self.context.__exit__(None, None, None)


def test_prefetch_fetches_the_profile_first_in_its_order(home: Home) -> None:
    with Opened(home, "1.0.0") as (hydration, disk, order):
        chunks = {n: bytes.fromhex(h) for n, h in hydration.disks[0].manifest.chunks.items()}
        assert order == [chunks[n] for n in ORDER]
        errors: list[BaseException] = []
        prefetch(hydration, order, stopping=threading.Event(), on_error=lambda exc, _d: errors.append(exc),
                 in_flight=1, request_bytes=1)  # one chunk a request: the fetches are the profile's order
        assert not errors
        assert hydration.counters.fetch_log == order
        assert hydration.counters.profile_chunks == len(ORDER) == hydration.counters.prefetched_chunks
        assert disk.read(0, len(DATA)) == bytes(DATA)  # then the rest on demand; every byte the version's


def test_merged_prefetch_requests_take_the_profile_in_order_a_size_at_a_time(home: Home) -> None:
    with Opened(home, "1.0.0") as (hydration, _disk, order):
        limit = 200 << 10
        plan = hydration.prefetch_plan(order + order[:2], limit)  # repeats count once
        assert [d for request in plan for d in request] == order  # one pack here: requests keep the order
        assert 1 < len(plan) < len(order)  # the small (compressible) chunks share requests
        for request in plan:
            assert len(request) == 1 or sum(hydration.entries[d].clen for d in request) <= limit


def test_pull_keeps_the_profile_the_push_attached(home: Home) -> None:
    sharing.pull_ref(home, f"origin:{REPO}@1.0.0")
    kept = boot_profile.load(home.store, "team", "base", "1.0.0")
    assert kept is not None and kept.subject is None and kept.disks[0].chunks == ORDER


def hostile_profiles(subject: str, os_digest: str) -> dict[str, bytes]:
    """Profile documents that lie about origin:team/base@2.0.0, keyed by the reason each is skipped (the
    oversized one by its descriptor, before a byte of it is read)."""
    good_disk = {"disk": "os", "digest": os_digest, "chunks": [1, 0]}
    base = {"kind": "boot-profile", "format": 1, "subject": subject, "disks": [good_disk]}
    return {
        "bound to": json.dumps({**base, "subject": "sha256:" + "ee" * 32}).encode(),
        "names chunk 999": json.dumps({**base, "disks": [{**good_disk, "chunks": [0, 999]}]}).encode(),
        "names disk os": json.dumps({**base, "disks": [{**good_disk, "digest": "blake3:" + "00" * 32}]}).encode(),
        "not JSON": b"{\"kind\": ",
        "size is not an integer": json.dumps({**base, "pad": " " * boot_profile.MAX_BYTES}).encode(),
    }


def test_hostile_profiles_are_skipped_with_a_reason_and_change_no_byte(home: Home) -> None:
    with sharing.judged_remote(home, f"origin:{REPO}@2.0.0") as (_r, target, _p, judged):
        subject_digest, os_digest = judged.fetched.digest, judged.version.disks[0].digest
        hostile = hostile_profiles(subject_digest, os_digest)
        subject = Descriptor(OCI_MANIFEST, subject_digest, len(judged.fetched.data))
        for blob in hostile.values():
            layer = Descriptor.of(MEDIA_TYPE, blob)
            referrers.attach(target, judged.repo, referrers.referrer_manifest(subject, MEDIA_TYPE, layer, {}), blob,
                             artifact_type=MEDIA_TYPE)
    with Opened(home, "2.0.0") as (hydration, disk, order):
        assert order == []  # none is used
        known = {"os": (os_digest, frozenset(hydration.disks[0].manifest.chunks))}
        found, skipped = boot_profiles.find(hydration.target, hydration.repo, subject_digest, known)
        assert found is None
        assert len(skipped) == len(hostile)
        for why in hostile:
            assert any(why in line for line in skipped), (why, skipped)
        assert disk.read(0, len(DATA)) == bytes(DATA[::-1])
    sharing.pull_ref(home, f"origin:{REPO}@2.0.0")  # a pull ignores them too, and keeps none
    assert boot_profile.load(home.store, "team", "base", "2.0.0") is None
