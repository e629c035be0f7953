"""A small token server for distribution's `auth: token` mode (the Docker/OCI token protocol).

It serves `GET /token?service=S&scope=repository:NAME:ACTIONS…` on 127.0.0.1 (a free port), with
Basic credentials, and answers `{"token", "access_token", "expires_in", "issued_at"}` carrying a
JWT the REAL registry verifies:
- header `{"alg": "ES256", "typ": "JWT", "x5c": [leaf certificate]}`: distribution 2.8 takes the
  signing key from the x5c chain and verifies the chain against its `rootcertbundle` (here the same
  self-signed certificate, made with `cryptography` when the server starts);
- claims `iss` (issuer), `sub`, `aud` (service), `exp`, `nbf`, `iat`, `jti`, and
  `access: [{"type": "repository", "name": N, "actions": [...]}]`, the intersection of what was
  asked and what the user may do (glob patterns per user).

Token lifetime: distribution accepts `exp` up to 60 s late (its clock-skew leeway), so a token
meant to die `valid_for` seconds after issue carries `exp = now + valid_for - 60`. Tests that need a
token to expire mid-transfer set `valid_for` to a few seconds and wait (bounded) until the registry
refuses the old token; they never assert on timing.

Anonymous requests get a token with no access (the registry then refuses), like Docker Hub's
token server; wrong credentials get 401.
"""

from __future__ import annotations

import base64
import datetime
import fnmatch
import json
import secrets
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any
from urllib.parse import parse_qs, urlsplit

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.hazmat.primitives.asymmetric.utils import decode_dss_signature
from cryptography.x509.oid import NameOID

SERVICE = "imgtool-test-registry"
ISSUER = "imgtool-test-token-server"
REGISTRY_LEEWAY = 60  # seconds distribution adds to exp/nbf checks
DEFAULT_VALID_FOR = 300


@dataclass(frozen=True)
class Grant:
    """`pattern` (fnmatch over repository names, or `catalog` for the registry catalog) -> actions."""

    pattern: str
    actions: frozenset[str]


@dataclass
class User:
    password: str
    grants: tuple[Grant, ...]


def team_users() -> dict[str, User]:
    """The users the access-control tests need: a reader and a writer of team/*, and an outsider."""
    return {
        "reader": User("reader-pass", (Grant("team/*", frozenset({"pull"})),)),
        "writer": User("writer-pass", (Grant("team/*", frozenset({"pull", "push"})),
                                       Grant("catalog", frozenset({"*"})))),
        "outsider": User("outsider-pass", (Grant("outsider/*", frozenset({"pull", "push"})),)),
    }


def _b64url(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode()


@dataclass
class Issued:
    user: str
    scopes: tuple[str, ...]
    access: tuple[dict[str, Any], ...]
    token: str = ""


@dataclass
class TokenServer:
    root: Path
    users: dict[str, User] = field(default_factory=team_users)
    valid_for: int = DEFAULT_VALID_FOR
    issued: list[Issued] = field(default_factory=list)
    port: int = 0
    _server: ThreadingHTTPServer | None = None
    _thread: threading.Thread | None = None
    _lock: threading.Lock = field(default_factory=threading.Lock)

    def __post_init__(self) -> None:
        self._key = ec.generate_private_key(ec.SECP256R1())
        self.certificate = _self_signed(self._key)

    @property
    def realm(self) -> str:
        return f"http://127.0.0.1:{self.port}/token"

    @property
    def cert_bundle(self) -> Path:
        return self.root / "token-root.pem"

    def registry_auth_config(self, bundle: Path | None = None) -> str:
        """The `auth:` block of a distribution config that trusts this server (its certificate at `bundle`)."""
        return ("auth:\n  token:\n"
                f"    realm: {self.realm}\n    service: {SERVICE}\n    issuer: {ISSUER}\n"
                f"    rootcertbundle: {bundle or self.cert_bundle}\n")

    def certificate_pem(self) -> bytes:
        return self.certificate.public_bytes(serialization.Encoding.PEM)

    def start(self) -> TokenServer:
        self.root.mkdir(parents=True, exist_ok=True)
        self.cert_bundle.write_bytes(self.certificate.public_bytes(serialization.Encoding.PEM))
        self._server = ThreadingHTTPServer(("127.0.0.1", 0), _handler(self))
        self._server.daemon_threads = True
        self.port = int(self._server.server_address[1])
        self._thread = threading.Thread(target=self._server.serve_forever, kwargs={"poll_interval": 0.1},
                                        daemon=True)
        self._thread.start()
        return self

    def stop(self) -> None:
        server, self._server = self._server, None
        if server is not None:
            server.shutdown()
            server.server_close()
        if self._thread is not None:
            self._thread.join(timeout=10)

    # -- issuing ------------------------------------------------------------------------------------------------

    def authenticate(self, header: str | None) -> str | None:
        """The user name for a Basic header; "" for anonymous; None for wrong credentials."""
        if not header:
            return ""
        kind, _, value = header.partition(" ")
        if kind.lower() != "basic":
            return None
        try:
            name, _, password = base64.b64decode(value, validate=True).decode().partition(":")
        except (ValueError, UnicodeDecodeError):
            return None
        user = self.users.get(name)
        return name if user is not None and secrets.compare_digest(user.password, password) else None

    def grant(self, user: str, scopes: list[str]) -> list[dict[str, Any]]:
        grants = self.users[user].grants if user else ()
        access = []
        for scope in scopes:
            kind, _, rest = scope.partition(":")
            name, _, actions = rest.rpartition(":")
            pattern_name = "catalog" if kind == "registry" else name
            allowed: set[str] = set()
            for g in grants:
                if (kind == "registry") == (g.pattern == "catalog") and fnmatch.fnmatchcase(pattern_name, g.pattern):
                    allowed |= set(actions.split(",")) if "*" in g.actions else set(actions.split(",")) & g.actions
            if allowed:
                access.append({"type": kind, "name": name, "actions": sorted(allowed)})
        return access

    def token(self, user: str, access: list[dict[str, Any]]) -> str:
        now = int(time.time())
        header = {"alg": "ES256", "typ": "JWT",
                  "x5c": [base64.b64encode(self.certificate.public_bytes(serialization.Encoding.DER)).decode()]}
        claims = {"iss": ISSUER, "sub": user, "aud": SERVICE, "iat": now, "nbf": now - 5,
                  "exp": now + self.valid_for - REGISTRY_LEEWAY, "jti": secrets.token_hex(8), "access": access}
        signing_input = f"{_b64url(json.dumps(header).encode())}.{_b64url(json.dumps(claims).encode())}"
        r, s = decode_dss_signature(self._key.sign(signing_input.encode(), ec.ECDSA(hashes.SHA256())))
        return f"{signing_input}.{_b64url(r.to_bytes(32, 'big') + s.to_bytes(32, 'big'))}"

    def answer(self, authorization: str | None, query: str) -> tuple[int, dict[str, Any]]:
        user = self.authenticate(authorization)
        if user is None:
            return 401, {"errors": [{"code": "UNAUTHORIZED", "message": "wrong user name or password"}]}
        params = parse_qs(query)
        if params.get("service") != [SERVICE]:
            return 400, {"errors": [{"code": "INVALID_SERVICE", "message": "unknown service"}]}
        scopes = [s for value in params.get("scope", []) for s in value.split(" ") if s]
        access = self.grant(user, scopes)
        token = self.token(user, access)
        with self._lock:
            self.issued.append(Issued(user, tuple(scopes), tuple(access), token))
        issued_at = datetime.datetime.now(datetime.UTC).strftime("%Y-%m-%dT%H:%M:%SZ")
        return 200, {"token": token, "access_token": token, "expires_in": self.valid_for, "issued_at": issued_at}


def _self_signed(key: ec.EllipticCurvePrivateKey) -> x509.Certificate:
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, ISSUER)])
    now = datetime.datetime.now(datetime.UTC)
    return (x509.CertificateBuilder().subject_name(name).issuer_name(name).public_key(key.public_key())
            .serial_number(x509.random_serial_number())
            .not_valid_before(now - datetime.timedelta(hours=1)).not_valid_after(now + datetime.timedelta(days=2))
            .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
            .add_extension(x509.KeyUsage(digital_signature=True, content_commitment=False, key_encipherment=False,
                                         data_encipherment=False, key_agreement=False, key_cert_sign=True,
                                         crl_sign=False, encipher_only=False, decipher_only=False), critical=True)
            .sign(key, hashes.SHA256()))


def _handler(server: TokenServer) -> type[BaseHTTPRequestHandler]:
    class Handler(BaseHTTPRequestHandler):
        def do_GET(self) -> None:
            url = urlsplit(self.path)
            if url.path != "/token":
                status, body = 404, {"errors": [{"code": "NOT_FOUND", "message": "no such endpoint"}]}
            else:
                status, body = server.answer(self.headers.get("Authorization"), url.query)
            data = json.dumps(body).encode()
            self.send_response(status)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(data)))
            if status == 401:
                self.send_header("WWW-Authenticate", 'Basic realm="imgtool-test-token-server"')
            self.end_headers()
            self.wfile.write(data)

        def log_message(self, format: str, *args: Any) -> None:
            pass  # quiet: tests read `server.issued` instead

    return Handler


@contextmanager
def running(root: Path, **kwargs: Any) -> Iterator[TokenServer]:
    server = TokenServer(root, **kwargs).start()
    try:
        yield server
    finally:
        server.stop()
