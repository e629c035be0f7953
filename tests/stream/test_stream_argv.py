"""The QEMU command line of a streamed disk, as a list: the overlay over an NBD backing given at run
time (the overlay's header names no socket), and a virtio disk that pauses the VM on an I/O error."""

from __future__ import annotations

import dataclasses
from pathlib import Path

from imgtool.tools import qemu, qemu_img
from imgtool.tools.qemu import Drive, StreamBacking
from tests.test_qemu_argv import spec


def test_a_streamed_disk_is_an_overlay_over_nbd_that_stops_on_errors() -> None:
    streamed = Drive(Path("/vms/a/disk-os.qcow2"), "qcow2", stream=StreamBacking(Path("/vms/a/stream.sock"), "os"))
    argv = qemu.build_argv(dataclasses.replace(spec(), disks=(streamed, Drive(Path("/vms/a/disk-lun0.qcow2")))))
    at = argv.index("-blockdev")
    assert argv[at:at + 8] == [
        "-blockdev", "driver=nbd,node-name=disk0-base,server.type=unix,server.path=/vms/a/stream.sock,export=os,"
                     "reconnect-delay=30,read-only=on",
        "-blockdev", "driver=file,node-name=disk0-file,filename=/vms/a/disk-os.qcow2,discard=unmap",
        "-blockdev", "driver=qcow2,node-name=disk0,file=disk0-file,backing=disk0-base,discard=unmap",
        "-device", "virtio-blk-pci,drive=disk0,rerror=stop,werror=stop",
    ]
    # The data disk that is not streamed keeps its ordinary -drive, after the OS disk.
    assert argv[at + 8:at + 10] == ["-drive", "file=/vms/a/disk-lun0.qcow2,if=virtio,format=qcow2,cache=writeback,"
                                              "discard=unmap"]


def test_commas_in_a_streamed_disk_path_are_escaped() -> None:
    streamed = Drive(Path("/v,ms/disk.qcow2"), "qcow2", stream=StreamBacking(Path("/v,ms/s.sock"), "os"))
    argv = qemu.build_argv(dataclasses.replace(spec(), disks=(streamed,)))
    assert any("server.path=/v,,ms/s.sock," in a for a in argv) and any("filename=/v,,ms/disk.qcow2," in a
                                                                       for a in argv)


def test_an_overlay_over_a_base_not_there_yet_is_made_without_opening_it() -> None:
    argv = qemu_img.create_overlay_argv("o.qcow2", backing="/bases/x.raw", backing_fmt="raw", size=1 << 20,
                                        unsafe=True)
    assert argv[:4] == ["qemu-img", "create", "-q", "-u"] and argv[-1] == str(1 << 20)
