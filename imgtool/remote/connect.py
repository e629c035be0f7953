"""Open a remote: a registry client with its credentials and TLS settings, or a layout folder."""

from __future__ import annotations

import contextlib
from collections.abc import Iterator

from imgtool.home import Home
from imgtool.oci.target import Target
from imgtool.remote import auth, remotes
from imgtool.remote.layout import LayoutTarget
from imgtool.remote.registry import RegistryClient
from imgtool.remote.remotes import Remote


def open_target(home: Home, remote: Remote) -> Target:
    if remote.kind == "oci-layout":
        return LayoutTarget(remote.layout_path, label=remote.name)
    verify: bool | str = remote.ca_file if remote.ca_file else True
    if remote.insecure:
        verify = False
    return RegistryClient(remote.base_url, label=remote.name, credentials=auth.lookup(remote.host, home.root),
                          verify=verify)


def close(target: Target) -> None:
    closer = getattr(target, "close", None)
    if callable(closer):
        closer()


@contextlib.contextmanager
def connected(home: Home, name: str) -> Iterator[tuple[Remote, Target]]:
    """The remote called `name`, opened; closed again on the way out."""
    remote = remotes.get(home, name)
    target = open_target(home, remote)
    try:
        yield remote, target
    finally:
        close(target)
