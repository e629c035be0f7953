"""imgtool key import, imgtool key delete."""

from __future__ import annotations

import os
import stat
from pathlib import Path
from typing import Annotated

import typer

from imgtool.cli.output import emit_json, state, warn
from imgtool.errors import InvalidArgument, NotFound, Refused

Opt = typer.Option
Arg = typer.Argument
MAX_PRIVATE_KEY_FILE = 8 * 1024  # an ed25519 PKCS#8 PEM is 119 bytes


def _read_key_file(path: Path) -> tuple[bytes, list[str]]:
    """The file's bytes (a small regular file), and a warning when others could read it."""
    try:
        fd = os.open(path, os.O_RDONLY | os.O_NONBLOCK | os.O_CLOEXEC)
    except FileNotFoundError:
        raise NotFound(f"no file {path}", hint="give the private key file (e.g. another home's keys/NAME.key)") \
            from None
    except OSError as exc:
        raise InvalidArgument(f"cannot read {path}: {exc.strerror}", hint="check the path and its permissions") \
            from None
    try:
        info = os.fstat(fd)
        if not stat.S_ISREG(info.st_mode):
            raise InvalidArgument(f"{path} is not a regular file", hint="give the private key file")
        data = os.read(fd, MAX_PRIVATE_KEY_FILE + 1)
    finally:
        os.close(fd)
    if len(data) > MAX_PRIVATE_KEY_FILE:
        raise InvalidArgument(f"{path} is larger than a private key file", hint="give the private key file")
    exposed = info.st_mode & (stat.S_IRWXG | stat.S_IRWXO)
    return data, [f"{path} is readable by others (mode {stat.S_IMODE(info.st_mode):o}): consider the key exposed, "
                  "and remove that copy once imported"] if exposed else []


def key_import(
    ctx: typer.Context,
    file: Annotated[Path, Arg(metavar="FILE", help="An ed25519 private key, PKCS#8 PEM, unencrypted (another home's "
                                   "keys/NAME.key, or openssl genpkey -algorithm ed25519).")],
    name: Annotated[str | None, Opt(help="The key's name here (default: the file's name without .key/.pem).")]
    = None,
    expires: Annotated[str | None, Opt(help="Expiry date (YYYY-MM-DD, UTC); verifiers refuse the key's "
                                            "signatures after it.")] = None,
) -> None:
    """Keep an existing signing key (to sign from a second machine or CI with the key your users trust).
    The file is copied into <home>/keys/ with mode 0600; the same key is never kept under two names."""
    from imgtool.clock import parse_time
    from imgtool.trust.homes import keyring

    st = state(ctx)
    data, warnings = _read_key_file(file)
    key_name = name or file.name.removesuffix(".key").removesuffix(".pem")
    public = keyring(st.home).import_private(key_name, data,
                                             expires=parse_time(expires, "--expires") if expires else None)
    warn(warnings)
    if st.json:
        emit_json({"name": key_name, "key_id": public.key_id, "expires": expires})
        return
    print(f"imported key {key_name} ({public.key_id})")


def key_delete(
    ctx: typer.Context,
    key: Annotated[str, Arg(help="The key's name, or its id (sha256:…, an unambiguous prefix).")],
    force: Annotated[bool, Opt("--force", help="Delete it even if it signs a remote's pushes (those remotes "
                                               "stop signing by default).")] = False,
) -> None:
    """Delete one of your signing keys (the private key is gone for good; what it signed stays valid for
    whoever trusts its public key). Refused while a remote signs its pushes with it, unless --force."""
    from imgtool.trust.homes import keyring, trust_store

    st = state(ctx)
    ring = keyring(st.home)
    found = ring.find(key)
    store = trust_store(st.home)
    users = sorted(rt.remote for rt in store.remotes().values() if rt.signing_key == found.name)
    if users and not force:
        raise Refused(f"key {found.name} signs the pushes to {', '.join(users)}",
                      hint=f"imgtool trust signing-key {users[0]} OTHER_KEY (or --none) first, or imgtool key "
                           f"delete {found.name} --force")
    for remote in users:
        store.set_signing_key(remote, None)
    ring.delete(found.name)
    if st.json:
        emit_json({"deleted": found.name, "key_id": found.public.key_id, "stopped_signing": users})
        return
    print(f"deleted key {found.name} ({found.public.key_id})")
    warn([f"pushes to {remote} are no longer signed by default: imgtool trust signing-key {remote} KEY"
          for remote in users])


def register(key_app: typer.Typer) -> None:
    key_app.command("import")(key_import)
    key_app.command("delete")(key_delete)
