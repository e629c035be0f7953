"""A hostile OCI registry for the tests: it speaks the distribution API and lies in every way asked.

`Liar` serves on 127.0.0.1 (a free port, threads, stopped in teardown) what a test puts in it
(`put_blob`, `put_manifest`, `tag`, or `load_from` a real registry through any reader), and
applies `Lie`s to matching requests. Content-level lies (a pack index pointing outside its pack, a
chunk whose BLAKE3 does not match, a config with path-traversing names or an absurd virtual size, a
version record that disagrees with its tag, a referrers index listing unrelated manifests, a
signature over another digest) are built by the test as bytes and served as if they were honest:
the liar never checks what it serves, and serves any bytes under any digest. Transport-level lies
are `Lie` kinds:

    wrong-bytes      the right length, one byte flipped (a blob or manifest that is not its digest)
    truncate         Content-Length as promised, then the connection closes halfway (RST)
    huge-length      Content-Length: 2**50, then a little data and a close
    endless          chunked, never-ending body (bounded by `limit` bytes, or the client leaving)
    slow             one byte every `delay` seconds (bounded by `limit` bytes)
    late             the honest answer, after `delay` seconds (a request another can overlap)
    status           answer `status` with `body` and `headers` (429 + Retry-After, 500 disk full…)
    redirect         307 to the same path on `Liar.elsewhere`, a second listener (another origin)
                     that records whether credentials followed
    huge-manifest    a manifest of `size` bytes (default just above 4 MiB) for the matched path

Each lie applies to requests whose method and path match, for its first `times` matches (None:
always), so "429 twice, then the truth" tests retry paths. Every request is logged (`requests`)
with whether it carried credentials. Nothing here is trusted to stop by itself except by bounds.
"""

from __future__ import annotations

import base64
import hashlib
import json
import re
import socket
import struct
import threading
from collections.abc import Iterator
from contextlib import contextmanager, suppress
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any
from urllib.parse import urlsplit

MANIFEST_LIMIT = 4 * 1024 * 1024
_MANIFEST = re.compile(r"^/v2/(?P<repo>.+?)/manifests/(?P<ref>[^/]+)$")
_BLOB = re.compile(r"^/v2/(?P<repo>.+?)/blobs/(?P<digest>sha256:[0-9a-f]{64})$")
_TAGS = re.compile(r"^/v2/(?P<repo>.+?)/tags/list$")
_REFERRERS = re.compile(r"^/v2/(?P<repo>.+?)/referrers/(?P<digest>sha256:[0-9a-f]{64})$")
_UPLOAD = re.compile(r"^/v2/(?P<repo>.+?)/blobs/uploads/(?P<id>[^/]*)$")
_RANGE = re.compile(r"bytes=(\d+)-(\d+)")


def sha256(data: bytes) -> str:
    return "sha256:" + hashlib.sha256(data).hexdigest()


@dataclass
class Lie:
    kind: str
    path: str = ".*"  # regex over the request path (no query)
    method: str = "GET"  # GET matches HEAD too
    times: int | None = None
    status: int = 500
    body: bytes = b""
    headers: dict[str, str] = field(default_factory=dict)
    limit: int = 64 * 1024 * 1024
    delay: float = 1.0
    size: int = MANIFEST_LIMIT + 1
    used: int = 0

    def matches(self, method: str, path: str) -> bool:
        if self.times is not None and self.used >= self.times:
            return False
        same = self.method == method or (self.method == "GET" and method == "HEAD")
        return same and re.fullmatch(self.path, path) is not None


@dataclass
class Seen:
    method: str
    path: str
    authorized: bool
    port: int
    range: str = ""  # the Range header, when the request had one


@dataclass
class Repo:
    blobs: dict[str, bytes] = field(default_factory=dict)
    manifests: dict[str, tuple[str, bytes]] = field(default_factory=dict)  # digest -> (media type, bytes)
    tags: dict[str, str] = field(default_factory=dict)


class Liar:
    def __init__(self, *, credentials: tuple[str, str] | None = None, referrers_api: bool = False) -> None:
        self.repos: dict[str, Repo] = {}
        self.lies: list[Lie] = []
        self.requests: list[Seen] = []
        self.credentials = credentials  # require Basic auth when set
        self.referrers_api = referrers_api
        self.stopping = threading.Event()
        self.uploads: dict[str, bytes] = {}
        self._lock = threading.Lock()
        self._servers: list[ThreadingHTTPServer] = []
        self._threads: list[threading.Thread] = []

    # -- content ----------------------------------------------------------------------------------------------------

    def repo(self, name: str) -> Repo:
        return self.repos.setdefault(name, Repo())

    def put_blob(self, repo: str, data: bytes, *, digest: str | None = None) -> str:
        """Serve `data` as blob `digest` (its own sha256 unless the test lies about it)."""
        digest = digest or sha256(data)
        self.repo(repo).blobs[digest] = data
        return digest

    def put_manifest(self, repo: str, data: bytes, *, tag: str | None = None, digest: str | None = None,
                     media_type: str = "application/vnd.oci.image.manifest.v1+json") -> str:
        digest = digest or sha256(data)
        self.repo(repo).manifests[digest] = (media_type, data)
        if tag is not None:
            self.repo(repo).tags[tag] = digest
        return digest

    def lie(self, kind: str, **kwargs: Any) -> Lie:
        lie = Lie(kind, **kwargs)
        with self._lock:
            self.lies.append(lie)
        return lie

    # -- serving ----------------------------------------------------------------------------------------------------

    @property
    def host(self) -> str:
        return f"127.0.0.1:{self._servers[0].server_address[1]}"

    @property
    def url(self) -> str:
        return f"http://{self.host}"

    @property
    def elsewhere(self) -> str:
        """The other origin redirects point at (same content, a different port)."""
        return f"http://127.0.0.1:{self._servers[1].server_address[1]}"

    def start(self) -> Liar:
        for _ in range(2):
            server = ThreadingHTTPServer(("127.0.0.1", 0), _handler(self))
            server.daemon_threads = True
            thread = threading.Thread(target=server.serve_forever, kwargs={"poll_interval": 0.1}, daemon=True)
            thread.start()
            self._servers.append(server)
            self._threads.append(thread)
        return self

    def stop(self) -> None:
        self.stopping.set()
        for server in self._servers:
            server.shutdown()
            server.server_close()
        for thread in self._threads:
            thread.join(timeout=10)

    def take_lie(self, method: str, path: str) -> Lie | None:
        with self._lock:
            for lie in self.lies:
                if lie.matches(method, path):
                    lie.used += 1
                    return lie
        return None

    def seen(self, port: int | None = None) -> list[Seen]:
        with self._lock:
            return [s for s in self.requests if port is None or s.port == port]

    @property
    def elsewhere_port(self) -> int:
        return int(self._servers[1].server_address[1])


def _handler(liar: Liar) -> type[BaseHTTPRequestHandler]:
    class Handler(BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.1"

        def log_message(self, format: str, *args: Any) -> None:
            pass

        # -- plumbing ---------------------------------------------------------------------------------------------

        def _answer(self, status: int, body: bytes = b"", headers: dict[str, str] | None = None) -> None:
            self.send_response(status)
            for key, value in (headers or {}).items():
                self.send_header(key, value)
            if "Content-Length" not in (headers or {}):
                self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            if self.command != "HEAD":
                with suppress(OSError):
                    self.wfile.write(body)

        def _error(self, status: int, code: str, message: str) -> None:
            body = json.dumps({"errors": [{"code": code, "message": message}]}).encode()
            self._answer(status, body, {"Content-Type": "application/json"})

        def _read_body(self) -> bytes:
            length = int(self.headers.get("Content-Length") or 0)
            return self.rfile.read(min(length, 512 * 1024 * 1024)) if length else b""

        def _reset(self) -> None:
            """Close with a TCP reset instead of a clean end."""
            with suppress(OSError):
                self.connection.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
            self.close_connection = True
            with suppress(OSError):
                self.connection.close()

        # -- dispatch ---------------------------------------------------------------------------------------------

        def _handle(self) -> None:
            path = urlsplit(self.path).path
            port = self.connection.getsockname()[1]
            with liar._lock:
                liar.requests.append(Seen(self.command, path, "Authorization" in self.headers, port,
                                          self.headers.get("Range", "")))
            body = self._read_body() if self.command in ("PUT", "POST", "PATCH") else b""
            if liar.credentials is not None and port != liar.elsewhere_port and not self._authorized():
                self._answer(401, b'{"errors":[{"code":"UNAUTHORIZED","message":"authentication required"}]}',
                             {"WWW-Authenticate": 'Basic realm="liar"', "Content-Type": "application/json"})
                return
            # The other origin (redirect target) tells the truth: a lie there would redirect forever.
            lie = liar.take_lie(self.command, path) if port != liar.elsewhere_port else None
            if lie is not None and self._lie(lie, path):
                return
            self._honest(path, body, lie)

        def _authorized(self) -> bool:
            assert liar.credentials is not None
            expected = base64.b64encode(":".join(liar.credentials).encode()).decode()
            return self.headers.get("Authorization") == f"Basic {expected}"

        def _lie(self, lie: Lie, path: str) -> bool:
            """Apply a transport lie; False when the lie changes the content instead (served by _honest)."""
            if lie.kind == "status":
                self._answer(lie.status, lie.body, {"Content-Type": "application/json", **lie.headers})
            elif lie.kind == "redirect":
                self._answer(307, b"", {"Location": f"{liar.elsewhere}{self.path}"})
            elif lie.kind == "huge-length":
                self.send_response(200)
                self.send_header("Content-Length", str(2**50))
                self.end_headers()
                with suppress(OSError):
                    self.wfile.write(b"\0" * 65536)
                self._reset()
            elif lie.kind == "endless":
                self._endless(lie)
            elif lie.kind == "slow":
                self._slow(lie)
            elif lie.kind == "late":
                liar.stopping.wait(lie.delay)
                return False
            elif lie.kind == "huge-manifest":
                filler = {"schemaVersion": 2, "mediaType": "application/vnd.oci.image.manifest.v1+json",
                          "annotations": {"x": "a" * lie.size}}
                self._answer(200, json.dumps(filler).encode(),
                             {"Content-Type": "application/vnd.oci.image.manifest.v1+json"})
            else:
                return False  # wrong-bytes, truncate: the honest answer, spoilt on the way out; late: later
            return True

        def _endless(self, lie: Lie) -> None:
            self.send_response(200)
            self.send_header("Transfer-Encoding", "chunked")
            self.end_headers()
            sent, piece = 0, b"\0" * 65536
            while sent < lie.limit and not liar.stopping.is_set():
                try:
                    self.wfile.write(b"%x\r\n%b\r\n" % (len(piece), piece))
                except OSError:
                    return
                sent += len(piece)
            self._reset()

        def _slow(self, lie: Lie) -> None:
            self.send_response(200)
            self.send_header("Content-Length", str(lie.limit))
            self.end_headers()
            for _ in range(lie.limit):
                if liar.stopping.wait(lie.delay):
                    break
                try:
                    self.wfile.write(b"\0")
                    self.wfile.flush()
                except OSError:
                    return
            self._reset()

        def _honest(self, path: str, body: bytes, lie: Lie | None) -> None:
            if path == "/v2/":
                self._answer(200, b"{}", {"Content-Type": "application/json",
                                          "Docker-Distribution-API-Version": "registry/2.0"})
                return
            for pattern, method in ((_MANIFEST, self._manifest), (_BLOB, self._blob), (_TAGS, self._tags),
                                    (_REFERRERS, self._referrers), (_UPLOAD, self._upload)):
                match = pattern.fullmatch(path)
                if match is not None:
                    method(match, body, lie)
                    return
            self._error(404, "NOT_FOUND", "no such endpoint")

        def _serve(self, data: bytes, media_type: str, digest: str, lie: Lie | None) -> None:
            headers = {"Content-Type": media_type, "Docker-Content-Digest": digest, "Content-Length": str(len(data))}
            wanted = _RANGE.fullmatch(self.headers.get("Range", ""))
            status = 200
            if wanted is not None and int(wanted[1]) < len(data):  # as registries do: 206 and the slice
                start, end = int(wanted[1]), min(int(wanted[2]), len(data) - 1)
                headers["Content-Range"] = f"bytes {start}-{end}/{len(data)}"
                data, status = data[start:end + 1], 206
                headers["Content-Length"] = str(len(data))
            if lie is not None and lie.kind == "wrong-bytes" and data:
                data = bytes([data[0] ^ 0xFF]) + data[1:]
            if lie is not None and lie.kind == "truncate" and self.command != "HEAD":
                self.send_response(status)
                for key, value in headers.items():
                    self.send_header(key, value)
                self.end_headers()
                with suppress(OSError):
                    self.wfile.write(data[: len(data) // 2])
                    self.wfile.flush()
                self._reset()
                return
            self._answer(status, data, headers)

        def _manifest(self, match: re.Match[str], body: bytes, lie: Lie | None) -> None:
            repo, ref = liar.repo(match["repo"]), match["ref"]
            if self.command == "PUT":
                digest = liar.put_manifest(match["repo"], body, tag=None if ref.startswith("sha256:") else ref,
                                           media_type=self.headers.get("Content-Type", ""))
                self._answer(201, b"", {"Docker-Content-Digest": digest, "Location": self.path})
                return
            digest = repo.tags.get(ref, ref)
            if digest not in repo.manifests:
                self._error(404, "MANIFEST_UNKNOWN", "manifest unknown")
                return
            media_type, data = repo.manifests[digest]
            self._serve(data, media_type, digest, lie)

        def _blob(self, match: re.Match[str], body: bytes, lie: Lie | None) -> None:
            data = liar.repo(match["repo"]).blobs.get(match["digest"])
            if data is None:
                self._error(404, "BLOB_UNKNOWN", "blob unknown to registry")
                return
            self._serve(data, "application/octet-stream", match["digest"], lie)

        def _tags(self, match: re.Match[str], body: bytes, lie: Lie | None) -> None:
            tags = sorted(liar.repo(match["repo"]).tags)
            self._answer(200, json.dumps({"name": match["repo"], "tags": tags}).encode(),
                         {"Content-Type": "application/json"})

        def _referrers(self, match: re.Match[str], body: bytes, lie: Lie | None) -> None:
            if not liar.referrers_api:
                self._answer(404, b"404 page not found\n", {"Content-Type": "text/plain"})
                return
            repo, entries = liar.repo(match["repo"]), []
            for digest, (media_type, data) in repo.manifests.items():
                with suppress(ValueError, AttributeError, TypeError):
                    obj = json.loads(data)
                    if obj.get("subject", {}).get("digest") == match["digest"]:
                        entries.append({"mediaType": media_type, "digest": digest, "size": len(data),
                                        "artifactType": obj.get("artifactType")})
            index = {"schemaVersion": 2, "mediaType": "application/vnd.oci.image.index.v1+json",
                     "manifests": entries}
            self._answer(200, json.dumps(index).encode(), {"Content-Type": "application/vnd.oci.image.index.v1+json"})

        def _upload(self, match: re.Match[str], body: bytes, lie: Lie | None) -> None:
            if self.command == "POST":
                upload = f"u{len(liar.uploads)}"
                liar.uploads[upload] = b""
                self._answer(202, b"", {"Location": f"/v2/{match['repo']}/blobs/uploads/{upload}",
                                        "Docker-Upload-UUID": upload, "Range": "0-0"})
                return
            digest = dict(p.split("=", 1) for p in urlsplit(self.path).query.split("&") if "=" in p).get("digest")
            data = liar.uploads.pop(match["id"], b"") + body
            if self.command == "PATCH":
                liar.uploads[match["id"]] = data
                self._answer(202, b"", {"Location": self.path, "Range": f"0-{max(len(data) - 1, 0)}"})
            elif digest is None or sha256(data) != digest:
                self._error(400, "DIGEST_INVALID", "provided digest did not match uploaded content")
            else:
                liar.put_blob(match["repo"], data)
                self._answer(201, b"", {"Docker-Content-Digest": digest,
                                        "Location": f"/v2/{match['repo']}/blobs/{digest}"})

        do_GET = do_HEAD = do_PUT = do_POST = do_PATCH = do_DELETE = _handle

    return Handler


@contextmanager
def running(**kwargs: Any) -> Iterator[Liar]:
    liar = Liar(**kwargs).start()
    try:
        yield liar
    finally:
        liar.stop()
