"""Results remembered between requests for as long as the names they were computed from are unchanged.

Reading a definition with 10,000 versions costs about a second even through the version index
(parsing 10,000 summaries, ordering them, resolving `latest`), and a whole-home view (lineage, chunk
users) costs that per definition. The server therefore remembers each result under a key that
changes whenever what it was computed from can have changed:

- a version name is set, moved or removed only by a rename or unlink in its definition's names
  folder, which changes that folder's mtime (imgtool/gallery/version_index.py relies on the same),
  and every name change appends to the store's name log;
- records are immutable, so the same names mean the same records;
- `latest` also depends on today's date (end of life), so results that resolve it carry the date.

As in the version index, a folder changed within the last RACY_NS may change again within the same
mtime tick, so nothing is remembered from it until it is older; a request then computes afresh.
Replication state, VM state and trust are read on every request: they are not names.
"""

from __future__ import annotations

import os
import threading
from collections import OrderedDict
from collections.abc import Callable, Hashable
from typing import Any, TypeVar

from imgtool.gallery.galleries import VERSIONS
from imgtool.gallery.version_index import RACY_NS
from imgtool.home import Home
from imgtool.names import DefinitionRef
from store import fsclock

T = TypeVar("T")
MAX_ENTRIES = 256

Key = tuple[Hashable, ...]


def _stamp(path: os.PathLike[str] | str) -> int:
    try:
        return os.stat(path).st_mtime_ns
    except FileNotFoundError:
        return 0


def _log_size(home: Home) -> int:
    try:
        return os.stat(home.store.layout.log / "names.log").st_size
    except FileNotFoundError:
        return 0


def definition_key(home: Home, ref: DefinitionRef) -> Key | None:
    """What a definition's version list depends on; None while its folder is too fresh to trust."""
    stamp = _stamp(home.store.layout.name(VERSIONS, ref.gallery, ref.definition))
    if fsclock.now_ns(home.store.layout.tmp) - stamp < RACY_NS:  # mtimes against the clock that stamps them
        return None
    return (stamp, _log_size(home))


def home_key(home: Home) -> Key | None:
    """What every version name of the home depends on (every definition's folder, and the log); plus the
    VM folders' stamps, for results that also read VM records."""
    root = home.store.layout.name(VERSIONS)
    stamps: list[tuple[str, int]] = []
    now = fsclock.now_ns(home.store.layout.tmp)
    folders = [os.fspath(root), *_subfolders(os.fspath(root), depth=2), os.fspath(home.vms),
               *_subfolders(os.fspath(home.vms), depth=1)]
    for folder in folders:
        stamp = _stamp(folder)
        if now - stamp < RACY_NS:
            return None
        stamps.append((folder, stamp))
    return (_log_size(home), tuple(stamps))


def store_key(home: Home) -> Key | None:
    """What `imgtool du` depends on that a stamp can show: every version name and VM folder (home_key),
    and the folders one level into the home but its cache, and the store's pack folders (a new pack,
    capture, base or warm state is a new entry in one of them). Bytes written inside an existing file (a running
    VM's disk) change no stamp: background.py bounds those by age."""
    names = home_key(home)
    if names is None:
        return None
    cache = os.fspath(home.cache)  # derived files the server itself writes as it reads (version indexes)
    folders = [*(f for f in _subfolders(os.fspath(home.root), depth=1) if f != cache),
               *_subfolders(os.fspath(home.store.layout.packs), depth=1)]
    return (names, tuple((f, _stamp(f)) for f in folders))


def _subfolders(folder: str, *, depth: int) -> list[str]:
    """The folders `depth` levels below `folder` (galleries/definitions: depth 2), sorted."""
    found = [folder]
    for _ in range(depth):
        found = sorted(e.path for f in found if os.path.isdir(f) for e in os.scandir(f) if e.is_dir())
    return found


class Memo:
    """A small thread-safe LRU of (name, key) -> value."""

    def __init__(self, size: int = MAX_ENTRIES) -> None:
        self._lock = threading.Lock()
        self._values: OrderedDict[tuple[str, Key], Any] = OrderedDict()
        self._size = size

    def get(self, name: str, key: Key | None, compute: Callable[[], T]) -> T:
        """The value remembered under (name, key), else compute it (and remember it unless key is None)."""
        if key is None:
            return compute()
        slot = (name, key)
        with self._lock:
            if slot in self._values:
                self._values.move_to_end(slot)
                value: T = self._values[slot]
                return value
        value = compute()
        with self._lock:
            self._values[slot] = value
            while len(self._values) > self._size:
                self._values.popitem(last=False)
        return value
