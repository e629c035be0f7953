"""Credentials and the registry auth flows: anonymous, Basic, Bearer tokens from a challenge.

Where credentials come from, first match wins:
1. imgtool's own file `<home>/auth.json` (0600, written by `imgtool remote login`), keyed by host: an
   explicit imgtool login must not be shadowed by a stale entry another tool left behind;
2. `$REGISTRY_AUTH_FILE`, `$XDG_RUNTIME_DIR/containers/auth.json` (podman, skopeo, buildah);
3. `~/.docker/config.json` (docker).
All use the `{"auths": {"HOST[:PORT]": {"auth": base64("user:password")}}}` shape.

Secrets never appear in output, logs or errors: `Credentials` hides its password in repr, and no
request or header is ever logged with its Authorization.
"""

from __future__ import annotations

import base64
import binascii
import json
import os
import re
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from imgtool.errors import InvalidArgument
from store import atomic

TOKEN_DEFAULT_LIFETIME = 60  # seconds: the token spec's default when expires_in is absent
TOKEN_MARGIN = 10  # refresh this long before a token expires


@dataclass(frozen=True)
class Credentials:
    username: str
    password: str = field(repr=False)

    def basic(self) -> str:
        raw = f"{self.username}:{self.password}".encode()
        return "Basic " + base64.b64encode(raw).decode("ascii")


def own_auth_file(home_root: Path) -> Path:
    return home_root / "auth.json"


def ecosystem_auth_files() -> list[Path]:
    found: list[Path] = []
    if os.environ.get("REGISTRY_AUTH_FILE"):
        found.append(Path(os.environ["REGISTRY_AUTH_FILE"]))
    if os.environ.get("XDG_RUNTIME_DIR"):
        found.append(Path(os.environ["XDG_RUNTIME_DIR"]) / "containers" / "auth.json")
    found.append(Path.home() / ".docker" / "config.json")
    return found


def lookup(host: str, home_root: Path) -> Credentials | None:
    """The credentials for `host` (HOST[:PORT]) from the first auth file that has them."""
    for path in [own_auth_file(home_root), *ecosystem_auth_files()]:
        found = _from_file(path, host)
        if found is not None:
            return found
    return None


def _read_auths(path: Path) -> dict[str, Any]:
    try:
        obj = json.loads(path.read_text())
    except (OSError, ValueError):
        return {}  # an unreadable auth file of another tool is that tool's business
    auths = obj.get("auths") if isinstance(obj, dict) else None
    return auths if isinstance(auths, dict) else {}


def _key_host(key: str) -> str:
    """`https://host:port/v1/` and `host:port/path` both mean host:port."""
    return re.sub(r"^[a-z]+://", "", key).split("/", 1)[0].lower()


def _from_file(path: Path, host: str) -> Credentials | None:
    for key, entry in _read_auths(path).items():
        if _key_host(str(key)) != host.lower() or not isinstance(entry, dict):
            continue
        encoded = entry.get("auth")
        if not isinstance(encoded, str):
            continue
        try:
            user, sep, password = base64.b64decode(encoded, validate=True).decode().partition(":")
        except (binascii.Error, UnicodeDecodeError):
            continue
        if sep and user:
            return Credentials(user, password)
    return None


def save(home_root: Path, host: str, creds: Credentials) -> Path:
    """Store credentials for `host` in imgtool's own file (0600, replaced atomically)."""
    if not creds.username or ":" in creds.username:
        raise InvalidArgument("the user name must be non-empty and contain no ':'", hint="check --username")
    path = own_auth_file(home_root)
    auths = _read_auths(path)
    encoded = base64.b64encode(f"{creds.username}:{creds.password}".encode()).decode("ascii")
    auths[host.lower()] = {"auth": encoded}
    _write(path, auths)
    return path


def forget(home_root: Path, host: str) -> bool:
    path = own_auth_file(home_root)
    auths = _read_auths(path)
    if auths.pop(host.lower(), None) is None:
        return False
    _write(path, auths)
    return True


def _write(path: Path, auths: dict[str, Any]) -> None:
    path.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
    data = (json.dumps({"auths": auths}, indent=2, sort_keys=True) + "\n").encode()
    tmp = atomic.tmp_name(path.parent)
    try:
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        with open(fd, "wb") as handle:
            handle.write(data)
            handle.flush()
            os.fsync(handle.fileno())
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)


# -- challenges and tokens -------------------------------------------------------------------------

_PARAM = re.compile(r'([A-Za-z_]+)=(?:"([^"]*)"|([^,\s]*))')


@dataclass(frozen=True)
class Challenge:
    scheme: str  # "basic" or "bearer"
    params: dict[str, str]


def parse_challenge(header: str) -> Challenge | None:
    """`Bearer realm="…",service="…",scope="…"` or `Basic realm="…"`; None when unusable."""
    scheme, _, rest = header.strip().partition(" ")
    if scheme.lower() not in ("basic", "bearer"):
        return None
    params = {m.group(1).lower(): m.group(2) if m.group(2) is not None else m.group(3)
              for m in _PARAM.finditer(rest)}
    return Challenge(scheme.lower(), params)


@dataclass
class Token:
    value: str = field(repr=False)
    expires: float
    margin: float = TOKEN_MARGIN  # refresh this long before expiry (a third of a short token's life)

    @property
    def fresh(self) -> bool:
        return time.monotonic() < self.expires - self.margin


def parse_token(body: Any) -> Token:
    """A token endpoint's answer: `token` or `access_token`, `expires_in` seconds."""
    if not isinstance(body, dict):
        raise ValueError("the token answer is not a JSON object")
    value = body.get("token") or body.get("access_token")
    if not isinstance(value, str) or not value or len(value) > 64 << 10:
        raise ValueError("the token answer holds no token")
    lifetime = body.get("expires_in")
    if not isinstance(lifetime, int) or lifetime <= 0:
        lifetime = TOKEN_DEFAULT_LIFETIME
    lifetime = min(lifetime, 24 * 3600)
    return Token(value, time.monotonic() + lifetime, min(TOKEN_MARGIN, lifetime / 3))


def scope_for(repository: str, actions: str) -> str:
    return f"repository:{repository}:{actions}"
