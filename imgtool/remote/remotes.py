"""Named remotes: where they are, how to reach them, kept in `<home>/remotes.json`.

    {"format": 1, "remotes": {"NAME": {"url": "...", "insecure": false, "ca_file": null}}}

URL rules: `https://HOST[:PORT][/PREFIX]`; `http://` only for a loopback host or with --insecure;
no user, password, query or fragment in the URL (credentials live in auth files, never in records
that `remote show` prints); PREFIX components must be valid repository components. A second kind,
`oci-layout:/ABSOLUTE/PATH`, is an OCI image layout folder (one layout per repository under it).
"""

from __future__ import annotations

import difflib
import ipaddress
import json
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

from imgtool.errors import AlreadyExists, Corrupt, InvalidArgument, NotFound
from imgtool.home import Home
from imgtool.names import REPOSITORY_COMPONENT, check_name
from imgtool.vocab import RemoteKind
from store import atomic
from store.lock import file_lock

FORMAT = 1
LAYOUT_SCHEME = "oci-layout:"
_HOST = re.compile(r"^[A-Za-z0-9.-]+$|^\[[0-9A-Fa-f:.]+\]$")


@dataclass(frozen=True)
class Remote:
    name: str
    url: str
    insecure: bool = False
    ca_file: str | None = None

    @property
    def kind(self) -> RemoteKind:
        return RemoteKind.LAYOUT if self.url.startswith(LAYOUT_SCHEME) else RemoteKind.REGISTRY

    @property
    def layout_path(self) -> Path:
        return Path(self.url[len(LAYOUT_SCHEME):])

    @property
    def base_url(self) -> str:
        parts = urlsplit(self.url)
        return f"{parts.scheme}://{parts.netloc}"

    @property
    def host(self) -> str:
        return urlsplit(self.url).netloc.lower()

    @property
    def prefix(self) -> str:
        if self.kind == "oci-layout":
            return ""
        return urlsplit(self.url).path.strip("/")

    def to_json(self) -> dict[str, Any]:
        return {"url": self.url, "insecure": self.insecure, "ca_file": self.ca_file}

    def describe(self) -> dict[str, Any]:
        return {"name": self.name, "kind": self.kind, **self.to_json()}


def is_loopback(host: str) -> bool:
    bare = host.strip("[]")
    if bare == "localhost":
        return True
    try:
        return ipaddress.ip_address(bare).is_loopback
    except ValueError:
        return False


def check_url(url: str, *, insecure: bool) -> str:
    """The URL normalised (no trailing slash), or InvalidArgument saying which rule it breaks."""
    if url.startswith(LAYOUT_SCHEME):
        path = url[len(LAYOUT_SCHEME):]
        if not path.startswith("/") or "\x00" in path:
            raise InvalidArgument(f"'{url}' does not name an absolute folder",
                                  hint="write oci-layout:/absolute/path")
        return LAYOUT_SCHEME + str(Path(path))
    parts = urlsplit(url)
    if parts.scheme not in ("https", "http") or not parts.hostname:
        raise InvalidArgument(f"'{url}' is not https://HOST[:PORT][/PREFIX]",
                              hint="for example https://ghcr.io/my-org or oci-layout:/media/usb/images")
    if parts.username or parts.password or parts.query or parts.fragment:
        raise InvalidArgument("a remote URL takes no user, password, query or fragment",
                              hint="give credentials with imgtool remote login NAME --username U --password-stdin")
    host = parts.netloc.rsplit(":", 1)[0] if not parts.netloc.endswith("]") else parts.netloc
    if not _HOST.fullmatch(host):
        raise InvalidArgument(f"'{parts.netloc}' is not a host name", hint="write HOST or HOST:PORT")
    try:
        parts.port  # noqa: B018 - validates the port
    except ValueError:
        raise InvalidArgument(f"'{parts.netloc}' has an invalid port", hint="write HOST:PORT") from None
    if parts.scheme == "http" and not insecure and not is_loopback(parts.hostname):
        raise InvalidArgument(f"'{url}' is plain http to a host that is not this machine",
                              hint="use https, or add --insecure if you accept unencrypted, unverified traffic")
    prefix = parts.path.strip("/")
    for component in [p for p in prefix.split("/") if p]:
        if not REPOSITORY_COMPONENT.fullmatch(component):
            raise InvalidArgument(f"prefix component '{component}' is not a valid repository name",
                                  hint="use lower-case letters and digits, separated by '.', '_' or '-'")
    return f"{parts.scheme}://{parts.netloc.lower()}" + (f"/{prefix}" if prefix else "")


def _path(home: Home) -> Path:
    return home.root / "remotes.json"


def load_all(home: Home) -> dict[str, Remote]:
    path = _path(home)
    try:
        obj = json.loads(path.read_text())
    except FileNotFoundError:
        return {}
    except (OSError, ValueError) as exc:
        raise Corrupt(f"{path} is unreadable: {exc}", hint="fix or remove it, then add the remotes again") from None
    if not isinstance(obj, dict) or obj.get("format") != FORMAT or not isinstance(obj.get("remotes"), dict):
        raise Corrupt(f"{path} has an unknown format", hint="it was written by a newer imgtool: upgrade imgtool")
    found: dict[str, Remote] = {}
    for name, body in obj["remotes"].items():
        if not isinstance(body, dict) or not isinstance(body.get("url"), str):
            raise Corrupt(f"{path}: remote {name!r} is malformed", hint="remove it with imgtool remote remove")
        ca_file = body.get("ca_file")
        found[name] = Remote(name, body["url"], bool(body.get("insecure", False)),
                             ca_file if isinstance(ca_file, str) else None)
    return found


def _save(home: Home, remotes: dict[str, Remote]) -> None:
    body = {"format": FORMAT, "remotes": {n: r.to_json() for n, r in sorted(remotes.items())}}
    atomic.replace(_path(home), (json.dumps(body, indent=2, sort_keys=True) + "\n").encode())


def _lock(home: Home) -> Any:
    home.ensure()
    return file_lock(home.root / "remotes.lock")


def add(home: Home, name: str, url: str, *, insecure: bool = False, ca_file: str | None = None) -> Remote:
    check_name(name, "remote")
    normalised = check_url(url, insecure=insecure)
    remote = Remote(name, normalised, insecure, _ca(ca_file))
    with _lock(home):
        remotes = load_all(home)
        if name in remotes:
            raise AlreadyExists(f"remote '{name}' already exists",
                                hint=f"remove it first with imgtool remote remove {name}")
        remotes[name] = remote
        _save(home, remotes)
    return remote


def _ca(ca_file: str | None) -> str | None:
    if ca_file is None:
        return None
    ca = Path(ca_file).absolute()
    if not ca.is_file():
        raise NotFound(f"CA file {ca} does not exist", hint="give the PEM file of the registry's CA")
    return str(ca)


def update(home: Home, name: str, *, url: str | None = None, insecure: bool | None = None,
           ca_file: str | None = None) -> tuple[Remote, Remote]:
    """Point remote `name` elsewhere (a registry that moved, a new port, a layout folder moved);
    returns (before, after). Its name, trust policy and signing key stay. What this means for
    signatures made at the old place is `signatures_carry_over`."""
    with _lock(home):
        remotes = load_all(home)
        if name not in remotes:
            raise NotFound(f"remote '{name}' does not exist", hint="list remotes with imgtool remote list")
        before = remotes[name]
        keep_insecure = before.insecure if insecure is None else insecure
        after = Remote(name, check_url(url if url is not None else before.url, insecure=keep_insecure),
                       keep_insecure, _ca(ca_file) if ca_file is not None else before.ca_file)
        remotes[name] = after
        _save(home, remotes)
    return before, after


def signatures_carry_over(before: Remote, after: Remote) -> bool:
    """Whether signatures made for versions at `before` still verify at `after`.

    A signature binds the registry's host:port and the repository path (flows/signing.py: registry_of),
    so that a registry cannot serve what was signed for another place as its own. A new host, port or
    prefix is another place: what is there must be signed there again (push --sign signs what is
    present). An OCI layout folder is signed as "oci-layout" with paths relative to it, so moving the
    folder keeps its signatures. Versions already pulled keep verifying offline either way: their
    stored signatures name the place they came from.
    """
    if before.kind == after.kind == "oci-layout":
        return True
    return before.kind == after.kind and before.host == after.host and before.prefix == after.prefix


def get(home: Home, name: str) -> Remote:
    """The remote called `name`; NotFound (naming the closest existing name, for a typo) if there is none."""
    known = load_all(home)
    found = known.get(name)
    if found is None:
        close = difflib.get_close_matches(name, list(known), n=1)
        guess = f"did you mean '{close[0]}'? " if close else ""
        raise NotFound(f"remote '{name}' does not exist",
                       hint=f"{guess}list remotes with imgtool remote list, add one with imgtool remote add NAME URL")
    return found


def remove(home: Home, name: str) -> Remote:
    with _lock(home):
        remotes = load_all(home)
        if name not in remotes:
            raise NotFound(f"remote '{name}' does not exist", hint="list remotes with imgtool remote list")
        removed = remotes.pop(name)
        _save(home, remotes)
    return removed


def split_ref(text: str) -> tuple[str, str]:
    """REMOTE:REST -> (remote, rest)."""
    name, sep, rest = text.partition(":")
    if not sep or not name or not rest:
        raise InvalidArgument(f"'{text}' is not REMOTE:GALLERY/DEFINITION[@VERSION]",
                              hint="for example: origin:team/base@1.0.0")
    return check_name(name, "remote"), rest
