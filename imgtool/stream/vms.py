"""Streamed VMs as the CLI calls them: `vm new --stream`, `vm hydrate`, `vm resume`, the hydration shown.

A streamed VM is an ordinary VM (record, overlays, seed) plus `stream.json` in its folder naming the
remote version, pinned by its manifest digest, and the local name it will get. While that file exists
`vm start` runs the stream server (imgtool/stream/serve.py) and gives QEMU the overlays' backing over
NBD; the server removes it once every chunk is local and the version is named.
"""

from __future__ import annotations

import dataclasses
import json
import os
import sys
import time
from pathlib import Path
from typing import Any

from imgtool.errors import InvalidArgument, Refused, ToolFailed
from imgtool.flows import sharing
from imgtool.gallery.galleries import VERSIONS
from imgtool.home import Home
from imgtool.stream import status
from imgtool.stream.serve import HYDRATE_REQUEST, disks_of
from imgtool.tools import qmp, run
from imgtool.vm import lifecycle
from imgtool.vm import record as vmrecord
from imgtool.vm import state as vmstate
from imgtool.vm.streaming import hydration
from store import atomic, canonical
from store import digest as store_digest

MODES = ("background", "on-demand")
STREAM_FORMAT = 1


def new_streamed(home: Home, req: lifecycle.NewVm, *, mode: str = "background") -> vmrecord.VmRecord | None:
    """A VM over `REMOTE:G/D[@V]`, judged exactly as pull judges it, before any chunk moves; None when
    the version is already local (the caller then makes an ordinary VM)."""
    if mode not in MODES:
        raise InvalidArgument(f"unknown hydration mode {mode!r}", hint=f"use one of {', '.join(MODES)}")
    with sharing.judged_remote(home, req.image) as (remote, _target, puller, judged):
        local = judged.local
        if home.store.get_name(VERSIONS, local.gallery, local.definition, judged.tag) is not None:
            return None
        disks_of(puller, judged)  # the chunk indexes, proven against the version, before the VM exists
        theirs = judged.version
        pinned = f"{remote.name}:{theirs.gallery}/{theirs.definition}@{judged.tag}@{judged.fetched.digest}"
        info = {"format": STREAM_FORMAT, "ref": pinned, "local": str(local), "remote": remote.name,
                "image": f"{local}@{judged.tag}", "manifest": judged.fetched.digest, "mode": mode}
        version = dataclasses.replace(theirs, gallery=local.gallery, definition=local.definition)
        definition = dataclasses.replace(judged.definition, gallery=local.gallery, name=local.definition)
        # The remote's own version record, which the VM pins; the store holds it only once it is pulled.
        remote_record = store_digest.PREFIX + store_digest.hex_of(canonical.dumps(theirs.to_json()))

        def prepare(folder: Path) -> None:
            atomic.replace(folder / vmrecord.STREAM, json.dumps(info, indent=2, sort_keys=True).encode())

        request = dataclasses.replace(req, image=f"{local}@{judged.tag}")
        return lifecycle.create_streamed(home, request, version, remote_record, definition, prepare)


def hydrate(home: Home, name: str, *, wait: bool, timeout: float = 3600.0) -> dict[str, Any] | None:
    """Fetch every chunk the VM's version still lacks (the running server, else one started for it)."""
    vmrecord.load(home, name)
    folder = vmrecord.vm_dir(home, name)
    if not vmrecord.is_streaming(home, name):
        return hydration(home, name)
    if status.server_pid(folder) is not None:
        atomic.replace(folder / HYDRATE_REQUEST, b"")
    else:
        run.run([sys.executable, "-m", "imgtool.stream.serve", "--home", os.fspath(home.root), "--hydrate-only",
                 name], timeout=600)
    if wait:
        _wait_complete(home, name, timeout)
    return hydration(home, name)


def _wait_complete(home: Home, name: str, timeout: float) -> None:
    deadline = time.monotonic() + timeout
    folder = vmrecord.vm_dir(home, name)
    while vmrecord.is_streaming(home, name):
        if status.server_pid(folder) is None:
            found = status.read_status(folder) or {}
            raise ToolFailed(f"the stream server of VM '{name}' stopped before hydration ended"
                             + (f": {found['message']}" if found.get("message") else ""),
                             hint=f"read {folder / 'stream.log'}, then imgtool vm hydrate {name} --wait")
        if time.monotonic() > deadline:
            raise ToolFailed(f"VM '{name}' is not hydrated after {timeout:g}s",
                             hint=f"imgtool vm show {name} shows the progress")
        time.sleep(0.5)


def resume(home: Home, name: str) -> str:
    """Resume a VM paused on an I/O error (or paused by hand); returns the state after. A streaming VM
    whose stream server died (QEMU holds its reads for reconnect-delay, then pauses) gets a new one first."""
    vmrecord.load(home, name)
    state = vmstate.running_state(home, name)
    if state is None:
        raise Refused(f"VM '{name}' is not running", hint=f"start it: imgtool vm start {name}")
    folder = vmrecord.vm_dir(home, name)
    restarted = vmrecord.is_streaming(home, name) and status.server_pid(folder) is None
    if restarted:
        run.run([sys.executable, "-m", "imgtool.stream.serve", "--home", os.fspath(home.root), name], timeout=600)
    sock = Path(state.qmp)
    now = qmp.query_status(sock)
    if now not in ("paused", "io-error"):
        if restarted:
            return now or "stopped"
        raise Refused(f"VM '{name}' is {now}, not paused", hint=f"imgtool vm show {name}")
    qmp.cont(sock)
    return qmp.query_status(sock) or "stopped"

