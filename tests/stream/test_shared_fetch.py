"""One fetch of a chunk across processes (imgtool/remote/shared_fetch.py), against a registry that answers
late (tests/remote/liar.py) so that a second process's read overlaps the first one's fetch: two streams
of one version fetch a chunk once, a pull of a streaming version takes what the stream fetched instead
of asking again, and a fetcher killed mid-fetch leaves its claim to the next one."""

from __future__ import annotations

import hashlib
import json
import os
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from imgtool.flows import sharing
from imgtool.home import Home
from imgtool.remote.shared_fetch import SPOOL
from imgtool.stream.hydration import DiskSource
from store.verify import verify
from tests.remote.helpers import disk_bytes
from tests.remote.liar import Liar
from tests.stream.liar_home import serving, user_home
from tests.stream.test_hydration import CHUNK, Opened, pack_path

pytestmark = pytest.mark.integration
REPO = "team/base"
DATA = disk_bytes(3 << 20, seed=67)
REF = f"origin:{REPO}@1.0.0"
R = (8 * CHUNK, 4 * CHUNK)  # four chunks: more than the gap a range request would bridge
ROOT = Path(__file__).resolve().parents[2]


@pytest.fixture(scope="module")
def liar(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Liar]:
    with serving(tmp_path_factory, REPO, DATA) as server:
        yield server


@pytest.fixture
def home(liar: Liar, tmp_path: Path) -> Iterator[Home]:
    yield from user_home(liar, tmp_path)


@dataclass(frozen=True)
class Span:
    distinct: int  # the version's distinct non-zero chunks
    chunks: int  # R's distinct non-zero chunks
    raw: int  # and their raw bytes
    start: int  # where they lie in their pack: [start, end)
    end: int


def span_of_r(home: Home) -> Span:
    with Opened(home) as (hydration, _disk):
        entries = hydration.disks[0].index.entries
        mine = {e.blake3: e for e in entries if R[0] // CHUNK <= e.chunk < (R[0] + R[1]) // CHUNK}
        return Span(len({e.blake3 for e in entries}), len(mine), sum(e.rawlen for e in mine.values()),
                    min(e.offset for e in mine.values()), max(e.offset + e.clen for e in mine.values()))


class Second:
    """tests/stream/streamer.py in its own process, reading R in one request; `keep` lets it store and end."""

    def __init__(self, home: Home, liar: Liar) -> None:
        self.liar, self.seen = liar, len(liar.requests)
        self.process = subprocess.Popen([sys.executable, "-m", "tests.stream.streamer", str(home.root), REF,
                                         str(R[0]), str(R[1]), str(R[1] // CHUNK - 1)], cwd=ROOT, text=True,
                                        stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.PIPE)

    def asking(self) -> None:
        """Until its request for R reached the registry (it holds its claims from before that)."""
        for _ in range(600):
            if any(r.range for r in self.liar.requests[self.seen:]):
                return
            assert self.process.poll() is None, self.process.communicate()
            time.sleep(0.05)
        raise AssertionError("the second process never asked the registry for its range")

    def read(self) -> str:
        assert self.process.stdout is not None
        line = self.process.stdout.readline().split()
        assert line[:1] == ["read"], (line, self.process.stderr.read() if self.process.stderr else "")
        return line[1]

    def keep(self) -> dict[str, int]:
        out, err = self.process.communicate("go\n", timeout=120)
        assert self.process.returncode == 0, err
        counters: dict[str, int] = json.loads(out.strip().splitlines()[-1])
        return counters


def sha(data: bytes | bytearray) -> str:
    return hashlib.sha256(data).hexdigest()


def ranged(liar: Liar, since: int) -> list[str]:
    return [r.range for r in liar.requests[since:] if r.range]


def test_two_streams_of_one_version_fetch_a_chunk_once(home: Home, liar: Liar) -> None:
    liar.lie("late", path=pack_path(liar), delay=2.0, times=1)
    since = len(liar.requests)
    second = Second(home, liar)
    second.asking()
    with Opened(home) as (hydration, _disk):
        disk = DiskSource(hydration, hydration.disks[0], read_ahead=0)
        assert disk.read(*R) == DATA[R[0]:R[0] + R[1]]  # waited for the other process, took its chunks
        assert hydration.counters.fetched_chunks == 0
        assert hydration.counters.joined_bytes == span_of_r(home).raw > 0
        assert second.read() == sha(DATA[R[0]:R[0] + R[1]])
        assert len(ranged(liar, since)) == 1, ranged(liar, since)  # the registry was asked once
        assert second.keep() == {"fetched_chunks": span_of_r(home).chunks, "joined_bytes": 0}
        hydration.keep()
    assert list((home.store.layout.tmp / SPOOL).iterdir()) == []  # kept, so no longer spooled
    assert verify(home.store, deep=True).ok


def test_a_pull_of_a_streaming_version_takes_what_the_stream_fetched(home: Home, liar: Liar) -> None:
    liar.lie("late", path=pack_path(liar), delay=2.0, times=1)
    since = len(liar.requests)
    second = Second(home, liar)
    second.asking()
    pulled = sharing.pull_ref(home, REF)
    span = span_of_r(home)
    assert pulled.status == "pulled" and pulled.chunks_joined == span.chunks > 0
    assert pulled.chunks_fetched == span.distinct - span.chunks
    # The stream's four chunks were asked for once, by the stream; the pull asked for ranges around them.
    ours = [tuple(int(n) for n in text.removeprefix("bytes=").split("-")) for text in ranged(liar, since)[1:]]
    assert ours and all(last < span.start or first >= span.end for first, last in ours), (ours, span)
    assert second.read() == sha(DATA[R[0]:R[0] + R[1]])
    second.keep()
    assert verify(home.store, deep=True).ok


def test_a_fetcher_killed_mid_fetch_leaves_the_chunk_to_the_next(home: Home, liar: Liar) -> None:
    liar.lie("late", path=pack_path(liar), delay=60.0, times=1)
    second = Second(home, liar)
    second.asking()
    os.kill(second.process.pid, signal.SIGKILL)  # its claims go with it
    second.process.communicate(timeout=30)
    with Opened(home) as (hydration, _disk):
        disk = DiskSource(hydration, hydration.disks[0], read_ahead=0)
        assert disk.read(*R) == DATA[R[0]:R[0] + R[1]]
        assert hydration.counters.fetched_chunks == span_of_r(home).chunks
        hydration.keep()
        hydration.drop_leases()
    assert verify(home.store, deep=True).ok
