"""A thin OCI distribution client for the tests (stdlib http.client), with the Bearer token dance.

Not imgtool's client: it exists to prove what the registries and test servers enforce, and to
feed what they serve into imgtool's verification code.
"""

from __future__ import annotations

import base64
import hashlib
import http.client
import json
import re
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from urllib.parse import urlencode, urlsplit

from imgtool.errors import NotFound
from imgtool.oci.target import Fetched, Stats

_PARAM = re.compile(r'(\w+)="([^"]*)"')
MANIFEST_TYPES = "application/vnd.oci.image.manifest.v1+json, application/vnd.oci.image.index.v1+json"


@dataclass
class Answer:
    status: int
    headers: dict[str, str]
    body: bytes

    def json(self) -> object:
        return json.loads(self.body)


def challenge(header: str) -> dict[str, str]:
    kind, _, params = header.partition(" ")
    return {"kind": kind.lower(), **dict(_PARAM.findall(params))}


def digest_of(data: bytes) -> str:
    return "sha256:" + hashlib.sha256(data).hexdigest()


@dataclass
class Client:
    host: str  # 127.0.0.1:PORT
    user: str | None = None
    password: str | None = None
    tokens: dict[str, str] = field(default_factory=dict)  # scope -> token
    fetched: int = 0
    timeout: float = 10.0
    max_body: int = 64 * 1024 * 1024

    def _raw(self, method: str, target: str, body: bytes = b"", headers: dict[str, str] | None = None) -> Answer:
        url = urlsplit(target if "://" in target else f"http://{self.host}{target}")
        assert url.hostname == "127.0.0.1", "tests talk to loopback only"
        conn = http.client.HTTPConnection(url.netloc, timeout=self.timeout)
        try:
            conn.request(method, url.path + (f"?{url.query}" if url.query else ""), body=body or None,
                         headers=headers or {})
            response = conn.getresponse()
            data = response.read(self.max_body + 1)
            return Answer(response.status, {k.lower(): v for k, v in response.getheaders()}, data)
        finally:
            conn.close()

    def _basic(self) -> dict[str, str]:
        if self.user is None:
            return {}
        secret = base64.b64encode(f"{self.user}:{self.password}".encode()).decode()
        return {"Authorization": f"Basic {secret}"}

    def fetch_token(self, params: dict[str, str], *, store_as: str | None = None) -> Answer:
        """A token for the challenge's scope, cached under `store_as` (default: that scope). The registry
        lists a scope's actions in no fixed order (push,pull or pull,push), so a caller caches under the
        scope it asks with."""
        query = urlencode({"service": params.get("service", ""), "scope": params.get("scope", "")})
        answer = self._raw("GET", f"{params['realm']}?{query}", headers=self._basic())
        if answer.status == 200:
            self.fetched += 1
            data = answer.json()
            assert isinstance(data, dict)
            self.tokens[params.get("scope", "") if store_as is None else store_as] = str(data["token"])
        return answer

    def request(self, method: str, path: str, *, scope: str, body: bytes = b"",
                headers: dict[str, str] | None = None) -> Answer:
        """One request, authenticated with the cached token for `scope`, refreshed once on a 401."""
        sent = dict(headers or {})
        for attempt in range(2):
            if scope in self.tokens:
                sent["Authorization"] = f"Bearer {self.tokens[scope]}"
            answer = self._raw(method, path, body, sent)
            found = challenge(answer.headers.get("www-authenticate", ""))
            if answer.status != 401 or found["kind"] != "bearer" or attempt == 1:
                return answer
            if self.fetch_token(found, store_as=scope).status != 200:
                return answer
        raise AssertionError("unreachable")

    # -- the few calls the tests use ------------------------------------------------------------------------------

    def push_blob(self, repo: str, data: bytes) -> Answer:
        scope = f"repository:{repo}:pull,push"
        started = self.request("POST", f"/v2/{repo}/blobs/uploads/", scope=scope)
        if started.status != 202:
            return started
        location = started.headers["location"]
        sep = "&" if "?" in location else "?"
        return self.request("PUT", f"{location}{sep}digest={digest_of(data)}", scope=scope, body=data,
                            headers={"Content-Type": "application/octet-stream"})

    def push_manifest(self, repo: str, reference: str, data: bytes,
                      media_type: str = "application/vnd.oci.image.manifest.v1+json") -> Answer:
        return self.request("PUT", f"/v2/{repo}/manifests/{reference}", scope=f"repository:{repo}:pull,push",
                            body=data, headers={"Content-Type": media_type})

    def manifest(self, repo: str, reference: str) -> Answer:
        return self.request("GET", f"/v2/{repo}/manifests/{reference}", scope=f"repository:{repo}:pull",
                            headers={"Accept": MANIFEST_TYPES})

    def blob(self, repo: str, digest: str) -> Answer:
        return self.request("GET", f"/v2/{repo}/blobs/{digest}", scope=f"repository:{repo}:pull")

    def tags(self, repo: str) -> Answer:
        return self.request("GET", f"/v2/{repo}/tags/list", scope=f"repository:{repo}:pull")

    def catalog(self) -> Answer:
        return self.request("GET", "/v2/_catalog", scope="registry:catalog:*")


EMPTY = b"{}"


def artifact_manifest(layers: list[bytes], *, artifact_type: str = "application/vnd.imgtool.test.v1+json",
                      subject: dict[str, object] | None = None) -> bytes:
    """An OCI 1.1 artifact manifest over `layers` (the empty config), as canonical JSON."""
    body: dict[str, object] = {
        "schemaVersion": 2, "mediaType": "application/vnd.oci.image.manifest.v1+json", "artifactType": artifact_type,
        "config": {"mediaType": "application/vnd.oci.empty.v1+json", "digest": digest_of(EMPTY), "size": 2},
        "layers": [{"mediaType": "application/octet-stream", "digest": digest_of(b), "size": len(b)} for b in layers],
    }
    if subject is not None:
        body["subject"] = subject
    return json.dumps(body, sort_keys=True, separators=(",", ":")).encode()


def push_artifact(client: Client, repo: str, tag: str, layers: list[bytes]) -> tuple[str, bytes]:
    """Push blobs then the manifest under `tag`; returns its digest and bytes."""
    for blob in [EMPTY, *layers]:
        answer = client.push_blob(repo, blob)
        assert answer.status == 201, (answer.status, answer.body[:300])
    manifest = artifact_manifest(layers)
    answer = client.push_manifest(repo, tag, manifest)
    assert answer.status == 201, (answer.status, answer.body[:300])
    return digest_of(manifest), manifest


class Adapter:
    """An imgtool.oci Target over the thin client (honest transport, no checks of its own).

    It hands imgtool exactly what the registry sent, unverified, so that what is under test is
    imgtool.oci.referrers' own checks; any status but 200/201/202/404 is an AssertionError (the
    transport is not what these tests are about).
    """

    def __init__(self, client: Client) -> None:
        self.client = client
        self.label = f"test registry {client.host}"
        self.stats = Stats()

    def _body(self, answer: Answer, what: str) -> bytes:
        if answer.status == 404:
            raise NotFound(f"{what} is not there", hint="a test")
        assert answer.status == 200, (answer.status, answer.body[:200])
        return answer.body

    def tags(self, repo: str) -> list[str]:
        body = json.loads(self._body(self.client.tags(repo), repo))
        return list(body.get("tags") or [])

    def has_repository(self, repo: str) -> bool:
        return self.client.tags(repo).status == 200

    def get_manifest(self, repo: str, ref: str) -> Fetched:
        answer = self.client.manifest(repo, ref)
        data = self._body(answer, f"{repo}:{ref}")
        return Fetched(data, digest_of(data), answer.headers.get("content-type", ""))

    def put_manifest(self, repo: str, ref: str, data: bytes, media_type: str) -> str:
        answer = self.client.push_manifest(repo, ref, data, media_type)
        assert answer.status == 201, (answer.status, answer.body[:300])
        return digest_of(data)

    def blob_size(self, repo: str, digest: str) -> int | None:
        answer = self.client.blob(repo, digest)
        return None if answer.status == 404 else len(self._body(answer, digest))

    def get_blob(self, repo: str, digest: str, *, size: int) -> Iterator[bytes]:
        yield self._body(self.client.blob(repo, digest), digest)

    def get_range(self, repo: str, digest: str, start: int, length: int) -> bytes:
        return self._body(self.client.blob(repo, digest), digest)[start:start + length]

    def put_blob(self, repo: str, digest: str, data: bytes) -> None:
        answer = self.client.push_blob(repo, data)
        assert answer.status == 201, (answer.status, answer.body[:200])

    def mount_blob(self, repo: str, digest: str, source: str) -> bool:
        return False

    def supports_referrers_api(self, repo: str) -> bool:
        return self.referrers_api(repo, "sha256:" + "0" * 64) is not None

    def referrers_api(self, repo: str, digest: str) -> bytes | None:
        answer = self.client.request("GET", f"/v2/{repo}/referrers/{digest}", scope=f"repository:{repo}:pull")
        if answer.status == 404:
            return None  # distribution 2.8: no referrers API
        return self._body(answer, f"the referrers of {digest}")

    def close(self) -> None:
        return None


def wait_until_refused(client: Client, token: str) -> None:
    """Bounded wait for the registry itself to call `token` expired (not a timing assertion)."""
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        answer = client._raw("GET", "/v2/team/base/tags/list", headers={"Authorization": f"Bearer {token}"})
        if answer.status == 401:
            return
        time.sleep(0.25)
    raise AssertionError("the registry kept accepting an expired token")
