"""The version index cache is only ever a shortcut: every name change is seen."""

from __future__ import annotations

import os
from pathlib import Path

from imgtool.flows.publishing import publish_version as publish
from imgtool.gallery import galleries as gallery
from imgtool.gallery import lookup
from imgtool.gallery.image_versions import PublishRequest
from imgtool.gallery.model import Definition
from imgtool.gallery.version_changes import update_version
from imgtool.home import Home
from imgtool.names import DefinitionRef, Version
from store.ingest import ingest

REF = DefinitionRef("team", "base")


def setup_home(tmp_path: Path) -> tuple[Home, str]:
    home = Home.at(tmp_path / "home")
    gallery.create_gallery(home, "team")
    gallery.create_definition(home, Definition("team", "base", "acme", "base", "v1", "linux", "generalized"))
    data = os.urandom(4096)
    with home.store.writing():
        disk = ingest(home.store, virtual_size=len(data), read=lambda o, n: data[o:o + n], indexes=[0]).digest
    return home, disk  # random bytes, no guest OS the audit can read: published with allow_unaudited


def test_index_follows_publish_update_and_delete(tmp_path: Path) -> None:
    home, disk = setup_home(tmp_path)
    for v in ("1.0.0", "1.2.0"):
        publish(home, PublishRequest(REF, Version.parse(v), os_disk=disk, allow_unaudited=True))
    assert lookup.resolve(home, REF)[0] == Version(1, 2, 0)
    update_version(home, "team/base@1.2.0", exclude_from_latest=True)
    assert lookup.resolve(home, REF)[0] == Version(1, 0, 0)
    publish(home, PublishRequest(REF, Version.parse("1.1.0"), os_disk=disk, allow_unaudited=True))
    assert [s.version for s in lookup.list_versions(home, REF)] == ["1.0.0", "1.1.0", "1.2.0"]
    assert lookup.resolve(home, REF)[0] == Version(1, 1, 0)


def test_a_name_change_without_a_log_line_still_invalidates(tmp_path: Path) -> None:
    """A crash between renaming a name and logging it must not leave a stale `latest`."""
    home, disk = setup_home(tmp_path)
    publish(home, PublishRequest(REF, Version.parse("1.0.0"), os_disk=disk, allow_unaudited=True))
    publish(home, PublishRequest(REF, Version.parse("2.0.0"), os_disk=disk, allow_unaudited=True))
    folder = home.store.layout.name("versions", "team", "base")
    os.utime(folder, ns=(folder.stat().st_atime_ns, folder.stat().st_mtime_ns - 10**10))  # not racy any more
    assert lookup.resolve(home, REF)[0] == Version(2, 0, 0)
    assert (home.cache / "versions" / "team" / "base.json").exists()  # the cache was written and is used
    log = home.store.layout.log / "names.log"
    size = log.stat().st_size
    (home.store.layout.name("versions", "team", "base", "2.0.0")).unlink()  # as if logged later
    assert log.stat().st_size == size
    assert lookup.resolve(home, REF)[0] == Version(1, 0, 0)


def test_a_damaged_cache_is_rebuilt(tmp_path: Path) -> None:
    home, disk = setup_home(tmp_path)
    publish(home, PublishRequest(REF, Version.parse("3.0.0"), os_disk=disk, allow_unaudited=True))
    folder = home.store.layout.name("versions", "team", "base")
    os.utime(folder, ns=(folder.stat().st_atime_ns, folder.stat().st_mtime_ns - 10**10))
    lookup.resolve(home, REF)
    cache = home.cache / "versions" / "team" / "base.json"
    cache.write_text("{not json")
    assert lookup.resolve(home, REF)[0] == Version(3, 0, 0)
