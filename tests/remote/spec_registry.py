"""An honest OCI registry with the referrers API, written from the distribution spec v1.1 for the tests.

distribution 2.8 (the real test registry) has no `GET /v2/<name>/referrers/<digest>`; this server has
it, so imgtool's referrers code can be tested on the native path. It implements only what the spec says
and checks what a registry must check:

- blobs: `HEAD`/`GET /v2/<name>/blobs/<digest>`, upload by `POST …/blobs/uploads/` then a monolithic
  `PUT <location>?digest=` (the digest is re-computed: 400 DIGEST_INVALID on a mismatch), cross-repository
  mount (`POST …/blobs/uploads/?mount=&from=`: 201 when the source has it, else 202 and a session);
- manifests: `HEAD`/`GET`/`PUT`/`DELETE /v2/<name>/manifests/<reference>`; a PUT by digest must match
  its bytes, a PUT whose config or layers are not in the repository is 400 MANIFEST_BLOB_UNKNOWN (the
  subject need not exist), a PUT with a `subject` is answered with `OCI-Subject: <subject digest>`;
- `GET /v2/<name>/tags/list`;
- `GET /v2/<name>/referrers/<digest>[?artifactType=…]`: 200 with an image index of every manifest in the
  repository whose `subject` is that digest (an empty list when there is none), each descriptor carrying
  `artifactType` (the manifest's, else its config's media type) and its annotations; the filter is
  applied and announced with `OCI-Filters-Applied: artifactType`.

Everything is kept in memory; every request is logged (`seen`). It listens on 127.0.0.1, a free port,
and is stopped in teardown.
"""

from __future__ import annotations

import hashlib
import json
import re
import threading
import uuid
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any
from urllib.parse import parse_qs, urlsplit

OCI_MANIFEST = "application/vnd.oci.image.manifest.v1+json"
OCI_INDEX = "application/vnd.oci.image.index.v1+json"
MAX_MANIFEST = 4 << 20
_NAME = r"(?P<name>[a-z0-9]+(?:(?:[._]|__|-+)[a-z0-9]+)*(?:/[a-z0-9]+(?:(?:[._]|__|-+)[a-z0-9]+)*)*)"
_DIGEST = r"(?P<digest>sha256:[0-9a-f]{64})"
_ROUTES = [
    ("blob", re.compile(rf"^/v2/{_NAME}/blobs/{_DIGEST}$")),
    ("upload", re.compile(rf"^/v2/{_NAME}/blobs/uploads/(?P<session>[0-9a-f-]*)$")),
    ("manifest", re.compile(rf"^/v2/{_NAME}/manifests/(?P<reference>[^/]+)$")),
    ("tags", re.compile(rf"^/v2/{_NAME}/tags/list$")),
    ("referrers", re.compile(rf"^/v2/{_NAME}/referrers/{_DIGEST}$")),
]
_TAG = re.compile(r"^[A-Za-z0-9_][A-Za-z0-9._-]{0,127}$")
Route = Callable[[str, dict[str, str], dict[str, list[str]], bytes, str], "Answer"]


def sha256(data: bytes) -> str:
    return "sha256:" + hashlib.sha256(data).hexdigest()


@dataclass
class Repository:
    blobs: dict[str, bytes] = field(default_factory=dict)
    manifests: dict[str, tuple[str, bytes]] = field(default_factory=dict)  # digest -> (media type, bytes)
    tags: dict[str, str] = field(default_factory=dict)  # tag -> digest


@dataclass(frozen=True)
class Seen:
    method: str
    path: str
    query: str


class Answer(Exception):
    """The answer to send (raised from deep inside a handler)."""

    def __init__(self, status: int, body: bytes = b"", headers: dict[str, str] | None = None) -> None:
        super().__init__(status)
        self.status, self.body, self.headers = status, body, headers or {}


def error(status: int, code: str, message: str) -> Answer:
    body = json.dumps({"errors": [{"code": code, "message": message}]}).encode()
    return Answer(status, body, {"Content-Type": "application/json"})


class SpecRegistry:
    def __init__(self) -> None:
        self.repositories: dict[str, Repository] = {}
        self.seen: list[Seen] = []
        self.uploads: dict[str, str] = {}  # session -> repository name
        self.lock = threading.Lock()
        self._server: ThreadingHTTPServer | None = None
        self._thread: threading.Thread | None = None

    @property
    def host(self) -> str:
        assert self._server is not None
        return f"127.0.0.1:{self._server.server_address[1]}"

    @property
    def url(self) -> str:
        return f"http://{self.host}"

    def repository(self, name: str) -> Repository:
        return self.repositories.setdefault(name, Repository())

    def requested(self, method: str, pattern: str) -> list[Seen]:
        return [s for s in self.seen if s.method == method and re.search(pattern, s.path)]

    # -- the API ---------------------------------------------------------------------------------------------------

    def handle(self, method: str, path: str, query: dict[str, list[str]], body: bytes,
               content_type: str) -> Answer:
        if path == "/v2/":
            return Answer(200, b"{}", {"Content-Type": "application/json"})
        for kind, pattern in _ROUTES:
            match = pattern.fullmatch(path)
            if match is not None:
                route: Route = getattr(self, f"_{kind}")
                with self.lock:
                    return route(method, match.groupdict(), query, body, content_type)
        return error(404, "NAME_UNKNOWN", f"no route for {path}")

    def _blob(self, method: str, args: dict[str, str], query: dict[str, list[str]], body: bytes,
              ctype: str) -> Answer:
        data = self.repository(args["name"]).blobs.get(args["digest"])
        if method not in ("GET", "HEAD"):
            return error(405, "UNSUPPORTED", "blobs are read-only here")
        if data is None:
            return error(404, "BLOB_UNKNOWN", "blob unknown to registry")
        headers = {"Content-Type": "application/octet-stream", "Docker-Content-Digest": args["digest"],
                   "Content-Length": str(len(data))}
        return Answer(200, data if method == "GET" else b"", headers)

    def _upload(self, method: str, args: dict[str, str], query: dict[str, list[str]], body: bytes,
                ctype: str) -> Answer:
        name = args["name"]
        if method == "POST" and not args["session"]:
            mount, source = query.get("mount", [""])[0], query.get("from", [""])[0]
            if mount and mount in self.repository(source).blobs:
                self.repository(name).blobs[mount] = self.repository(source).blobs[mount]
                return Answer(201, b"", {"Location": f"/v2/{name}/blobs/{mount}", "Docker-Content-Digest": mount})
            session = str(uuid.uuid4())
            self.uploads[session] = name
            return Answer(202, b"", {"Location": f"/v2/{name}/blobs/uploads/{session}", "Range": "0-0"})
        if method == "PUT" and self.uploads.get(args["session"]) == name:
            digest = query.get("digest", [""])[0]
            if sha256(body) != digest:
                return error(400, "DIGEST_INVALID", "provided digest did not match uploaded content")
            del self.uploads[args["session"]]
            self.repository(name).blobs[digest] = body
            return Answer(201, b"", {"Location": f"/v2/{name}/blobs/{digest}", "Docker-Content-Digest": digest})
        return error(404, "BLOB_UPLOAD_UNKNOWN", "blob upload unknown to registry")

    def _manifest(self, method: str, args: dict[str, str], query: dict[str, list[str]], body: bytes,
                  ctype: str) -> Answer:
        repo, reference = self.repository(args["name"]), args["reference"]
        digest = reference if reference.startswith("sha256:") else repo.tags.get(reference, "")
        if method == "PUT":
            return self._put_manifest(repo, reference, body, ctype)
        if digest not in repo.manifests:
            return error(404, "MANIFEST_UNKNOWN", "manifest unknown to registry")
        if method == "DELETE":
            del repo.manifests[digest]
            repo.tags = {t: d for t, d in repo.tags.items() if d != digest}
            return Answer(202)
        media_type, data = repo.manifests[digest]
        headers = {"Content-Type": media_type, "Docker-Content-Digest": digest, "Content-Length": str(len(data))}
        return Answer(200, data if method == "GET" else b"", headers)

    def _put_manifest(self, repo: Repository, reference: str, body: bytes, ctype: str) -> Answer:
        digest = sha256(body)
        if len(body) > MAX_MANIFEST:
            return error(413, "SIZE_INVALID", "manifest too big")
        if reference.startswith("sha256:") and reference != digest:
            return error(400, "DIGEST_INVALID", "the manifest's digest is not its reference")
        if not reference.startswith("sha256:") and not _TAG.fullmatch(reference):
            return error(400, "TAG_INVALID", "manifest tag did not match URI")
        try:
            manifest = json.loads(body)
        except ValueError:
            return error(400, "MANIFEST_INVALID", "manifest invalid")
        if not isinstance(manifest, dict) or manifest.get("mediaType", ctype) != ctype:
            return error(400, "MANIFEST_INVALID", "the mediaType field is not the Content-Type")
        for needed in _blobs_named(manifest, ctype):
            if needed not in repo.blobs and needed not in repo.manifests:
                return error(400, "MANIFEST_BLOB_UNKNOWN", f"blob unknown to registry: {needed}")
        repo.manifests[digest] = (ctype, body)
        if not reference.startswith("sha256:"):
            repo.tags[reference] = digest
        headers = {"Location": f"/v2/manifests/{digest}", "Docker-Content-Digest": digest}
        subject = manifest.get("subject")
        if isinstance(subject, dict) and isinstance(subject.get("digest"), str):
            headers["OCI-Subject"] = subject["digest"]
        return Answer(201, b"", headers)

    def _tags(self, method: str, args: dict[str, str], query: dict[str, list[str]], body: bytes,
              ctype: str) -> Answer:
        if args["name"] not in self.repositories:
            return error(404, "NAME_UNKNOWN", "repository name not known to registry")
        listed = {"name": args["name"], "tags": sorted(self.repositories[args["name"]].tags)}
        return Answer(200, json.dumps(listed).encode(), {"Content-Type": "application/json"})

    def _referrers(self, method: str, args: dict[str, str], query: dict[str, list[str]], body: bytes,
                   ctype: str) -> Answer:
        wanted = query.get("artifactType", [None])[0]
        found = []
        for digest, (media_type, data) in self.repository(args["name"]).manifests.items():
            manifest = json.loads(data)
            subject = manifest.get("subject")
            if not isinstance(subject, dict) or subject.get("digest") != args["digest"]:
                continue
            descriptor = _referrer(digest, media_type, data, manifest)
            if wanted is None or descriptor.get("artifactType") == wanted:
                found.append(descriptor)
        headers = {"Content-Type": OCI_INDEX}
        if wanted is not None:
            headers["OCI-Filters-Applied"] = "artifactType"
        index = {"schemaVersion": 2, "mediaType": OCI_INDEX, "manifests": found}
        return Answer(200, json.dumps(index).encode(), headers)

    # -- serving ---------------------------------------------------------------------------------------------------

    def start(self) -> SpecRegistry:
        registry = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def _any(self) -> None:
                url = urlsplit(self.path)
                length = int(self.headers.get("Content-Length") or 0)
                body = self.rfile.read(length) if length else b""
                with registry.lock:
                    registry.seen.append(Seen(self.command, url.path, url.query))
                answer = registry.handle(self.command, url.path, parse_qs(url.query), body,
                                         self.headers.get("Content-Type", ""))
                self.send_response(answer.status)
                for key, value in answer.headers.items():
                    self.send_header(key, value)
                if "Content-Length" not in answer.headers:
                    self.send_header("Content-Length", str(len(answer.body)))
                self.send_header("Docker-Distribution-API-Version", "registry/2.0")
                self.end_headers()
                if self.command != "HEAD":
                    self.wfile.write(answer.body)

            do_GET = do_HEAD = do_PUT = do_POST = do_DELETE = do_PATCH = _any

            def log_message(self, format: str, *args: Any) -> None:
                pass

        self._server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self._server.daemon_threads = True
        self._thread = threading.Thread(target=self._server.serve_forever, kwargs={"poll_interval": 0.1},
                                        daemon=True)
        self._thread.start()
        return self

    def stop(self) -> None:
        if self._server is not None:
            self._server.shutdown()
            self._server.server_close()
        if self._thread is not None:
            self._thread.join(timeout=10)


def _blobs_named(manifest: dict[str, Any], media_type: str) -> list[str]:
    """What must be in the repository before a manifest may name it (an index names manifests)."""
    if media_type == OCI_INDEX:
        return [m.get("digest", "") for m in manifest.get("manifests") or []]
    config = manifest.get("config") or {}
    return [config.get("digest", "")] + [layer.get("digest", "") for layer in manifest.get("layers") or []]


def _referrer(digest: str, media_type: str, data: bytes, manifest: dict[str, Any]) -> dict[str, Any]:
    artifact_type = manifest.get("artifactType") or (manifest.get("config") or {}).get("mediaType")
    descriptor: dict[str, Any] = {"mediaType": media_type, "digest": digest, "size": len(data)}
    if artifact_type:
        descriptor["artifactType"] = artifact_type
    if manifest.get("annotations"):
        descriptor["annotations"] = manifest["annotations"]
    return descriptor


@contextmanager
def running() -> Iterator[SpecRegistry]:
    registry = SpecRegistry().start()
    try:
        yield registry
    finally:
        registry.stop()
