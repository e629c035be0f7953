"""Starting the virtiofsd of a VM's shares (the argv is imgtool.vm.shares'; this module runs it).

Life of one virtiofsd: `start` binds the listening socket, hands it to virtiofsd (`--fd`) and
returns at once; QEMU, started next, connects to it; virtiofsd serves that one connection and exits
when QEMU does (stop, crash or kill -9 alike). So a VM stop needs nothing beyond QEMU's end; a VM
start that fails after `start` must `stop` the handles it got, since a virtiofsd nobody connects to
would wait forever.
"""

from __future__ import annotations

import contextlib
import hashlib
import os
import socket
from pathlib import Path

from imgtool.errors import ToolMissing
from imgtool.tools import run, sockets
from imgtool.vm.shares import VIRTIOFSD, Share, virtiofsd_argv


def socket_path(folder: Path, index: int) -> Path:
    """Share `index`'s socket: in the VM's folder when the path fits a unix socket, else the private dir."""
    candidate = folder / f"virtiofs-{index}.sock"
    if sockets.fits(candidate):
        return candidate
    stem = hashlib.blake2b(os.fsencode(folder.absolute()), digest_size=10).hexdigest()
    return sockets.private_dir() / f"{stem}-fs{index}.sock"


def _listen(path: Path) -> socket.socket:
    path.unlink(missing_ok=True)  # a socket left by a killed run; nothing serves it any more
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    try:
        sock.bind(str(path))
        os.chmod(path, 0o600)
        sock.listen(1)
    except BaseException:
        sock.close()
        raise
    return sock


def start(share: Share, *, socket: Path, log: Path, virtiofsd: str = VIRTIOFSD) -> run.Background:
    """Serve `share` (already checked by imgtool.vm.share_check) on `socket`; output appended to `log`."""
    if not Path(virtiofsd).is_file():
        raise ToolMissing(f"{virtiofsd} not found", hint="install the Debian package qemu-system-common "
                                                         "(./scripts/setup does it)")
    listener = _listen(socket)
    with contextlib.closing(listener):
        argv = virtiofsd_argv(share, fd=listener.fileno(), unprivileged=os.geteuid() != 0, virtiofsd=virtiofsd)
        return run.spawn(argv, pass_fds=(listener.fileno(),), output=log)
