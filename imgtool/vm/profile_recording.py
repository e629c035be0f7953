"""Recording a boot profile: a boot check's VM reads its bases through an NBD server that notes each chunk
the guest touches first, in order.

Why through NBD: the guest's reads of its base are exactly what a streaming VM asks the stream server
for (reads the overlay answers itself, and zero chunks, never reach it), so the order recorded here is
the order a streamed boot will want. The server is the stream server's (imgtool/nbd), run in the
checking process over the local base files; it lives as long as the check's VM.
"""

from __future__ import annotations

import contextlib
import os
import threading
from collections.abc import Iterator
from pathlib import Path

from imgtool.home import Home
from imgtool.nbd.server import Server
from imgtool.vm import boot_profile
from imgtool.vm.record import VmRecord, vm_dir
from imgtool.vm.runtime import export_name, stream_socket


class RecordingSource:
    """A base file as an NBD export, noting the first touch of each of the disk's non-zero chunks."""

    def __init__(self, path: Path, size: int, chunk_size: int, chunks: frozenset[int]) -> None:
        self.fd = os.open(path, os.O_RDONLY | os.O_CLOEXEC)
        self._size, self.chunk_size, self.chunks = size, chunk_size, chunks
        self.lock = threading.Lock()
        self.seen: set[int] = set()
        self.order: list[int] = []

    @property
    def size(self) -> int:
        return self._size

    def read(self, offset: int, length: int) -> bytes:
        if length:
            first, last = offset // self.chunk_size, (offset + length - 1) // self.chunk_size
            with self.lock:
                for number in range(first, last + 1):
                    if number in self.chunks and number not in self.seen:
                        self.seen.add(number)
                        self.order.append(number)
        data = os.pread(self.fd, length, offset)
        return data + bytes(length - len(data))  # a base is its disk's full size; a short read cannot happen

    def snapshot(self) -> tuple[int, ...]:
        with self.lock:
            return tuple(self.order)

    def close(self) -> None:
        os.close(self.fd)


class Recorder:
    """The sources of one VM's disks; `profile()` is the order so far."""

    def __init__(self, home: Home, record: VmRecord) -> None:
        self.sources: dict[str, tuple[str, RecordingSource]] = {}
        for disk in record.disks:
            manifest = home.store.get_disk(disk.base_disk)
            source = RecordingSource(Path(disk.base), manifest.virtual_size, manifest.chunk_size,
                                     frozenset(manifest.chunks))
            self.sources[export_name(disk.lun)] = (disk.base_disk, source)

    def profile(self) -> boot_profile.BootProfile:
        """The order so far, cut at the profile's cap (a boot that read that much gains nothing from it)."""
        room = boot_profile.MAX_CHUNKS
        disks = []
        for label, (digest, source) in self.sources.items():
            order = source.snapshot()[:room]
            room -= len(order)
            disks.append(boot_profile.DiskOrder(label, digest, order))
        return boot_profile.BootProfile(None, tuple(disks))

    def close(self) -> None:
        for _digest, source in self.sources.values():
            source.close()


@contextlib.contextmanager
def recording(home: Home, record: VmRecord) -> Iterator[tuple[Path, Recorder]]:
    """Serve the VM's bases on its stream socket while recording; yields the socket for `vm start`."""
    recorder = Recorder(home, record)
    sock = stream_socket(vm_dir(home, record.name))
    try:
        with Server(sock, {label: source for label, (_d, source) in recorder.sources.items()}):
            yield sock, recorder
    finally:
        recorder.close()
