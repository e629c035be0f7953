"""The distribution (OCI registry) HTTP client.

Contract:
- Every request carries the OCI Accept headers; manifests are read with a 4 MiB cap and checked
  against their digest; blobs stream (never whole into memory unless the caller asks for bytes).
- Failures that may pass (connection reset, timeout, 5xx, 429) are retried a bounded number of times
  with backoff (429 honours Retry-After, capped); then one RemoteFailed with the registry's words.
- Auth: a 401 is answered once from its challenge (Basic, or a Bearer token for the repository's
  scope, cached per scope until it expires); a second 401 means "log in", a 403 names the right.
- Redirects are followed by hand, at most MAX_REDIRECTS, and credentials never follow a redirect to
  another host.
- Nothing secret is ever logged or put into an error: only method, path and status.
"""

from __future__ import annotations

import contextlib
import json
import logging
import threading
import time
from collections.abc import Callable, Iterator
from typing import Any
from urllib.parse import urljoin, urlsplit

import httpx

from imgtool.errors import Corrupt, NotFound, Refused
from imgtool.oci.descriptor import check_digest, sha256_of
from imgtool.oci.media import MANIFEST_ACCEPT, OCI_INDEX
from imgtool.oci.target import MAX_MANIFEST, READ_SIZE, Fetched, Stats, verified_stream
from imgtool.remote import auth
from imgtool.remote.errors import RemoteFailed, TransferBroken

log = logging.getLogger("imgtool.remote")
retry_log = logging.getLogger("imgtool.remote.retry")  # one line per retry; shown on a terminal by the CLI
# httpx and httpcore log requests, response headers and upload-session URLs at DEBUG; --debug shows
# our own one line per request (method, path, status) instead, never a header.
for _noisy in ("httpx", "httpcore"):
    logging.getLogger(_noisy).setLevel(logging.WARNING)

ATTEMPTS = 5
BACKOFF = (0.2, 0.5, 1.0, 2.0, 4.0)
MAX_RETRY_AFTER = 30.0
MAX_REDIRECTS = 3
MAX_ERROR_BODY = 64 << 10
RETRIABLE = {429, 500, 502, 503, 504}


# A time bound for every response body: httpx's timeouts bound each read, so a body that trickles
# one byte a second never times out, and a check between pieces never runs either (iter_bytes waits
# for a whole piece). Each body gets a deadline of BODY_GRACE seconds plus its expected size at
# BODY_MIN_RATE; when it passes, a timer closes the response, the blocked read fails, and the
# caller gets one RemoteFailed that says so.
BODY_GRACE = 60.0  # seconds any body may take on top of its size at BODY_MIN_RATE
BODY_MIN_RATE = 64 << 10  # bytes per second a body must average


# What a failed connection means, in words (the exception class names httpx uses mean nothing to people).
_TRANSPORT_WORDS = (
    (httpx.ConnectTimeout, "no answer to the connection attempt (timed out)"),
    (httpx.ReadTimeout, "no answer in time (read timed out)"),
    (httpx.WriteTimeout, "could not send in time (write timed out)"),
    (httpx.PoolTimeout, "no free connection in time"),
    (httpx.RemoteProtocolError, "the server closed the connection or answered something that is not HTTP"),
    (httpx.ProxyError, "the proxy refused the connection"),
    (httpx.ReadError, "the connection broke while reading"),
    (httpx.WriteError, "the connection broke while sending"),
)


def transport_words(exc: BaseException) -> str:
    """Why a request could not be made, for people: refused, unknown host, TLS, timed out, broken."""
    detail = str(exc).lower()
    if isinstance(exc, httpx.ConnectError):
        if "certificate" in detail or "ssl" in detail or "tls" in detail:
            return "its TLS certificate is not trusted here (or TLS failed)"
        if "name or service not known" in detail or "nodename nor servname" in detail or \
                "temporary failure in name resolution" in detail or "no address" in detail:
            return "the host name does not resolve"
        if "refused" in detail:
            return "the connection was refused (nothing listens there)"
        if "unreachable" in detail:
            return "the network or host is unreachable"
        return "could not connect"
    for kind, words in _TRANSPORT_WORDS:
        if isinstance(exc, kind):
            return words
    return "the connection failed"


def _expected_size(response: httpx.Response, fallback: int) -> int:
    declared = response.headers.get("content-length", "")
    return min(int(declared), fallback) if declared.isdigit() else fallback


@contextlib.contextmanager
def _bounded(response: httpx.Response, size: int, *, label: str, what: str) -> Iterator[None]:
    """Read `response` (about `size` bytes) inside the block; RemoteFailed if it outlives its deadline."""
    seconds = BODY_GRACE + size / BODY_MIN_RATE
    fired = threading.Event()

    def cut() -> None:
        fired.set()
        response.close()

    timer = threading.Timer(seconds, cut)
    timer.daemon = True
    timer.start()
    try:
        yield
    except (httpx.TransportError, httpx.StreamError, OSError) as exc:
        if fired.is_set():
            raise RemoteFailed(f"{label}: {what} took longer than {seconds:.0f} s (slower than "
                               f"{BODY_MIN_RATE >> 10} KiB/s)",
                               hint="the remote is stalled or too slow; try again later") from None
        if isinstance(exc, httpx.TransportError):
            raise
        raise TransferBroken(f"{label}: reading {what} broke off ({transport_words(exc)})",
                           hint="run the command again") from None
    finally:
        timer.cancel()


def _printable(text: str, limit: int = 200) -> str:
    """Text from a remote, safe to show: printable, bounded."""
    cleaned = "".join(ch if ch.isprintable() else "?" for ch in text)
    return cleaned[:limit] + ("…" if len(cleaned) > limit else "")


def registry_message(response: httpx.Response) -> str:
    """The registry's own error words (`errors[0].code: message`), or the status line."""
    try:
        body = json.loads(response.read()[:MAX_ERROR_BODY])
        first = body["errors"][0]
        return _printable(f"{first.get('code', '')}: {first.get('message', '')}".strip(": "))
    except (ValueError, KeyError, IndexError, TypeError, AttributeError, httpx.HTTPError):
        return f"HTTP {response.status_code}"


class RegistryClient:
    """One registry (scheme://host[:port]); thread-safe (push and pull use it from a pool)."""

    def __init__(self, base_url: str, *, label: str, credentials: auth.Credentials | None,
                 verify: bool | str = True, timeout: float = 60.0, login_hint: str = "",
                 transport: httpx.BaseTransport | None = None) -> None:
        parts = urlsplit(base_url)
        self.base = f"{parts.scheme}://{parts.netloc}"
        self.host = parts.netloc.lower()
        self.label = label
        self.credentials = credentials
        self.login_hint = login_hint or f"log in with imgtool remote login {label}"
        self.stats = Stats()
        self.http = httpx.Client(verify=verify, timeout=httpx.Timeout(timeout, connect=10.0),
                                 follow_redirects=False, limits=httpx.Limits(max_connections=16),
                                 headers={"User-Agent": "imgtool"}, transport=transport)
        self._tokens: dict[str, auth.Token] = {}
        self._basic = False
        self._lock = threading.Lock()
        self._referrers_api: dict[str, bool] = {}

    def close(self) -> None:
        self.http.close()

    # -- the request loop -------------------------------------------------------------------------

    def _auth_header(self, scope: str) -> dict[str, str]:
        with self._lock:
            token = self._tokens.get(scope)
            if token is not None and token.fresh:
                return {"Authorization": f"Bearer {token.value}"}
            if self._basic and self.credentials is not None:
                return {"Authorization": self.credentials.basic()}
        return {}

    def request(self, method: str, path: str, *, repo: str | None = None, actions: str = "pull",
                headers: dict[str, str] | None = None, content: bytes | None = None,
                stream: bool = False, params: dict[str, str] | None = None) -> httpx.Response:
        """Send with auth, retries and redirects; the caller checks the status (2xx, 404...).

        The first 401 is answered from its challenge and the request sent again (not counted as a
        retry); a 401 after that means the credentials were rejected.
        """
        scope = auth.scope_for(repo, actions) if repo else ""
        url = self.base + path
        answered = False
        last = ""
        unreachable = False
        started = time.monotonic()
        attempt = 0
        while attempt < ATTEMPTS:
            try:
                response = self._send_following(method, url, scope, headers or {}, content, stream, params)
            except httpx.TransportError as exc:
                last, unreachable = transport_words(exc), True
                attempt += 1
                if attempt < ATTEMPTS:  # no pause after the last try: nothing follows it
                    self._retrying(method, path, last, attempt - 1)
                    time.sleep(BACKOFF[attempt - 1])
                continue
            unreachable = False
            if response.status_code == 401:
                challenge = auth.parse_challenge(response.headers.get("www-authenticate", ""))
                response.close()
                if answered:
                    if challenge is not None and challenge.params.get("error") == "insufficient_scope":
                        raise self._no_access(repo, actions)  # a fresh token without the right: no such right
                    raise self._unauthorized(repo, rejected=True)
                answered = True
                if not self._answer(challenge, scope):
                    raise self._unauthorized(repo)
                continue
            if response.status_code in RETRIABLE and attempt + 1 < ATTEMPTS:
                last = registry_message(response)
                wait = self._retry_after(response) if response.status_code == 429 else BACKOFF[attempt]
                response.close()
                self._retrying(method, path, last, attempt, wait)
                time.sleep(wait)
                attempt += 1
                continue
            return self._checked(response, repo, actions)
        raise self._gave_up(method, path, last, unreachable=unreachable, seconds=time.monotonic() - started)

    def _retrying(self, method: str, path: str, why: str, attempt: int, wait: float | None = None) -> None:
        """Say that a request is tried again (the `imgtool.remote.retry` log: the CLI shows it on a terminal,
        so a wait of seconds is never silent)."""
        wait = BACKOFF[attempt] if wait is None else wait
        retry_log.info("%s (%s): %s; trying again in %.1fs (%d of %d tries failed; %s %s)", self.label, self.host,
                       why, wait, attempt + 1, ATTEMPTS, method, path)

    def _gave_up(self, method: str, path: str, why: str, *, unreachable: bool, seconds: float) -> RemoteFailed:
        tries = f"{ATTEMPTS} tries in {seconds:.0f}s ({method} {path})"
        if not unreachable:
            return RemoteFailed(f"{self.label} ({self.host}) kept failing: {why}; {tries}",
                                hint="check that the registry is up and has space, then run the command again")
        hint = (f"give imgtool the registry's CA (imgtool remote add {self.label} URL --ca-file CA.pem)"
                if "TLS" in why else
                f"check that a registry answers at {self.base} (imgtool remote show {self.label}), then run the "
                "command again")
        return RemoteFailed(f"{self.label} ({self.host}) could not be reached: {why}; {tries}", hint=hint)

    def _send_following(self, method: str, url: str, scope: str, headers: dict[str, str],
                        content: bytes | None, stream: bool, params: dict[str, str] | None) -> httpx.Response:
        same_host = True
        for _hop in range(MAX_REDIRECTS + 1):
            sent = {**headers, **(self._auth_header(scope) if same_host else {})}
            request = self.http.build_request(method, url, headers=sent, content=content, params=params)
            response = self.http.send(request, stream=stream)
            self.stats.add(requests=1, sent=len(content or b""))
            log.debug("remote %s %s -> %d", method, urlsplit(url).path, response.status_code)
            if response.status_code not in (301, 302, 303, 307, 308) or "location" not in response.headers:
                return response
            response.close()
            url = urljoin(url, response.headers["location"])
            params = None
            target = urlsplit(url)
            if target.scheme not in ("https", "http"):
                raise RemoteFailed(f"{self.label} redirected to a {target.scheme!r} URL",
                                   hint="the registry is misconfigured; ask its admin")
            # Credentials never follow a redirect to another host (blob storage, CDNs, attackers).
            same_host = same_host and target.netloc.lower() == self.host
        raise RemoteFailed(f"{self.label}: more than {MAX_REDIRECTS} redirects for {urlsplit(url).path}",
                           hint="the registry is misconfigured; ask its admin")

    @staticmethod
    def _retry_after(response: httpx.Response) -> float:
        try:
            return min(max(float(response.headers.get("retry-after", "1")), 0.0), MAX_RETRY_AFTER)
        except ValueError:
            return 1.0

    def _answer(self, challenge: auth.Challenge | None, scope: str) -> bool:
        """Prepare credentials for a 401's challenge; False when there is nothing to answer with."""
        if challenge is None:
            return False
        if challenge.scheme == "basic":
            if self.credentials is None:
                return False
            with self._lock:
                self._basic = True
            return True
        token = self._fetch_token(challenge, scope)
        with self._lock:
            self._tokens[scope] = token
        return True

    def _fetch_token(self, challenge: auth.Challenge, scope: str) -> auth.Token:
        realm = challenge.params.get("realm", "")
        parts = urlsplit(realm)
        loopback = parts.hostname in ("127.0.0.1", "localhost", "::1")
        if parts.scheme != "https" and not (parts.scheme == "http" and (loopback or self.base.startswith("http:"))):
            raise RemoteFailed(f"{self.label} asks for a token from {_printable(realm, 80)!r}, not an https URL",
                               hint="the registry is misconfigured; ask its admin")
        params = {"service": challenge.params.get("service", "")}
        wanted = scope or challenge.params.get("scope", "")
        if wanted:
            params["scope"] = wanted
        headers = {"Authorization": self.credentials.basic()} if self.credentials else {}
        try:
            response = self.http.get(realm, params=params, headers=headers)
        except httpx.TransportError as exc:
            raise RemoteFailed(f"{self.label}: the token service did not answer ({transport_words(exc)})",
                               hint="check the network, then run the command again") from None
        self.stats.add(requests=1)
        if response.status_code in (401, 403):
            raise self._unauthorized(scope.split(":")[1] if scope else None, rejected=self.credentials is not None)
        if response.status_code != 200:
            raise RemoteFailed(f"{self.label}: the token service answered HTTP {response.status_code}",
                               hint="run the command again later")
        try:
            return auth.parse_token(json.loads(response.content[:MAX_ERROR_BODY * 16]))
        except ValueError as exc:
            raise RemoteFailed(f"{self.label}: the token service's answer is unusable ({exc})",
                               hint="the registry is misconfigured; ask its admin") from None

    def _unauthorized(self, repo: str | None, *, rejected: bool = False) -> Refused:
        what = f"repository {repo}" if repo else "the registry"
        if self.credentials is None:
            return Refused(f"{self.label} needs a login to access {what}", hint=self.login_hint)
        return Refused(f"{self.label} rejected the credentials of user {self.credentials.username} for {what}"
                       if rejected else f"{self.label} refused access to {what}",
                       hint=self.login_hint + " (check the user name and password)")

    def _no_access(self, repo: str | None, actions: str) -> Refused:
        right = "push" if "push" in actions else "pull"
        who = f"user {self.credentials.username}" if self.credentials else "anonymous access"
        return Refused(f"{self.label}: no {right} access to {repo or 'the registry'} for {who}",
                       hint=f"ask the registry's admin for {right} rights on {repo or 'it'}"
                            + ("" if self.credentials else f", or {self.login_hint}"))

    def _checked(self, response: httpx.Response, repo: str | None, actions: str) -> httpx.Response:
        if response.status_code == 403:
            words = registry_message(response)
            response.close()
            right = "push" if "push" in actions else "pull"
            raise Refused(f"{self.label} denies {right} access to {repo or 'the registry'} ({words})",
                          hint=f"ask the registry's admin for {right} rights on {repo or 'it'}")
        if response.status_code == 401:
            response.close()
            raise self._unauthorized(repo, rejected=True)
        return response

    def _fail(self, response: httpx.Response, what: str) -> RemoteFailed:
        words = registry_message(response)
        response.close()
        return RemoteFailed(f"{self.label}: {what} failed: HTTP {response.status_code} {words}",
                            hint="check the registry (space, configuration), then run the command again")

    # -- API ----------------------------------------------------------------------------------------

    def ping(self) -> None:
        response = self.request("GET", "/v2/")
        if response.status_code != 200:
            raise self._fail(response, "GET /v2/")
        response.close()

    def has_repository(self, repo: str) -> bool:
        """Whether the registry knows `repo` (its tag list answers) after /v2/ answered as a registry's does;
        an empty tag list cannot tell a new repository from a misspelled one, or a registry from a web page."""
        response = self.request("GET", "/v2/")
        if response.status_code != 200:
            words = registry_message(response)
            response.close()
            raise RemoteFailed(f"{self.label} ({self.base}) does not answer as an OCI registry: GET /v2/ gave "
                               f"HTTP {response.status_code} {words}".rstrip(),
                               hint=f"check the URL (imgtool remote show {self.label}); a registry answers "
                                    "/v2/ with 200, or 401 before login")
        response.close()
        response = self.request("GET", f"/v2/{repo}/tags/list", repo=repo)
        if response.status_code in (200, 404):
            response.close()
            return response.status_code == 200
        raise self._fail(response, f"listing the tags of {repo}")

    def tags(self, repo: str) -> list[str]:
        """Every tag of `repo` (paged, bounded: 1000 pages); none when the repository does not exist."""

        def refused(response: httpx.Response) -> list[str] | None:
            return [] if response.status_code == 404 else None

        return self._listing(f"/v2/{repo}/tags/list", "tags", f"tag list of {repo}", f"listing the tags of {repo}",
                             repo=repo, unanswered=refused)

    def repositories(self) -> list[str]:
        """Every repository the registry lists (GET /v2/_catalog, paged, bounded). A registry that offers no
        catalog (GHCR, Docker Hub) answers 404 or 405: NotFound, saying to name each definition."""

        def no_catalog(response: httpx.Response) -> list[str] | None:
            if response.status_code not in (404, 405):
                return None
            raise NotFound(f"{self.label} does not list its repositories (no /v2/_catalog)",
                           hint="pull each definition instead: imgtool pull REMOTE:GALLERY/DEFINITION --all")

        try:
            return self._listing("/v2/_catalog?n=1000", "repositories", "the repository catalog",
                                 "listing the repositories", repo=None, unanswered=no_catalog)
        except Refused as exc:  # the catalog is a right of its own (registry:catalog:*)
            raise Refused(f"{exc.message} (listing its repositories, /v2/_catalog)",
                          hint="pull each definition instead: imgtool pull REMOTE:GALLERY/DEFINITION --all, "
                               "or ask the registry's admin for the catalog right") from None

    def _listing(self, path: str, key: str, what: str, doing: str, *, repo: str | None,
                 unanswered: Callable[[httpx.Response], list[str] | None]) -> list[str]:
        """The strings under `key` of a paged list (the Link header's next page), at most 1000 pages.
        `unanswered` turns a status other than 200 into an answer, an error, or None (then `_fail`)."""
        found: list[str] = []
        page: str | None = path
        for _page in range(1000):  # bounded: a thousand pages
            assert page is not None
            response = self.request("GET", page, repo=repo, stream=True)
            if response.status_code != 200:
                try:
                    answer = unanswered(response)
                except BaseException:
                    response.close()
                    raise
                if answer is None:
                    raise self._fail(response, doing)  # reads the registry's words, then closes
                response.close()
                return found + answer
            body = self._read_json(response, MAX_MANIFEST, what)
            items = body.get(key) if isinstance(body, dict) else None
            found.extend(item for item in (items or []) if isinstance(item, str))
            page = _next_link(response.headers.get("link", ""))
            if page is None:
                return found
        return found
        return found

    def get_manifest(self, repo: str, ref: str) -> Fetched:
        response = self.request("GET", f"/v2/{repo}/manifests/{ref}", repo=repo, stream=True,
                                headers={"Accept": MANIFEST_ACCEPT})
        if response.status_code == 404:
            response.close()
            raise NotFound(f"{self.label} has no {repo}:{ref}",
                           hint=f"check the spelling; imgtool remote versions {self.label}:GALLERY/DEFINITION "
                                "lists the versions it has")
        if response.status_code != 200:
            raise self._fail(response, f"reading manifest {repo}:{ref}")
        data = self._read_capped(response, MAX_MANIFEST, f"manifest {repo}:{ref}")
        digest = sha256_of(data)
        if ref.startswith("sha256:") and digest != ref:
            raise Corrupt(f"{self.label} served a manifest for {ref[:19]}… whose digest is {digest[:19]}…",
                          hint="the registry serves wrong data; ask its admin")
        media_type = response.headers.get("content-type", "").split(";")[0].strip()
        return Fetched(data, digest, media_type)

    def put_manifest(self, repo: str, ref: str, data: bytes, media_type: str) -> str:
        if len(data) > MAX_MANIFEST:
            raise Refused(f"the manifest for {repo}:{ref} is {len(data)} bytes, above the 4 MiB registries accept",
                          hint="the version has too many packs; this is a bug worth reporting")
        response = self.request("PUT", f"/v2/{repo}/manifests/{ref}", repo=repo, actions="pull,push",
                                content=data, headers={"Content-Type": media_type})
        if response.status_code not in (200, 201):
            raise self._fail(response, f"putting manifest {repo}:{ref}")
        response.close()
        with self._lock:
            if "oci-subject" in response.headers:
                self._referrers_api[repo] = True
        return sha256_of(data)

    def blob_size(self, repo: str, digest: str) -> int | None:
        response = self.request("HEAD", f"/v2/{repo}/blobs/{digest}", repo=repo)
        response.close()
        if response.status_code == 404:
            return None
        if response.status_code != 200:
            raise self._fail(response, f"checking blob {digest[:19]}")
        try:
            return int(response.headers.get("content-length", "-1"))
        except ValueError:
            return -1

    def get_blob(self, repo: str, digest: str, *, size: int) -> Iterator[bytes]:
        check_digest(digest, "a blob reference")
        return verified_stream(self._blob_pieces(repo, digest, size), digest, size,
                               f"blob {digest[:19]}… of {repo}")

    def _blob_pieces(self, repo: str, digest: str, size: int) -> Iterator[bytes]:
        response = self.request("GET", f"/v2/{repo}/blobs/{digest}", repo=repo, stream=True)
        try:
            if response.status_code == 404:
                raise NotFound(f"{self.label} has no blob {digest[:19]}… in {repo}",
                               hint="the remote version is incomplete; ask its publisher to push it again")
            if response.status_code != 200:
                raise self._fail(response, f"reading blob {digest[:19]}")
            try:
                with _bounded(response, size, label=self.label, what=f"blob {digest[:19]}…"):
                    for piece in response.iter_bytes(READ_SIZE):
                        self.stats.add(received=len(piece))
                        yield piece
            except httpx.TransportError as exc:
                raise TransferBroken(f"{self.label}: the transfer of blob {digest[:19]}… broke off "
                                   f"({transport_words(exc)})", hint="run the command again; it resumes") from None
        finally:
            response.close()

    def get_range(self, repo: str, digest: str, start: int, length: int) -> bytes:
        """Bytes [start, start+length) of a blob (Range GET; a 200 is cut to the range)."""
        check_digest(digest, "a blob reference")
        response = self.request("GET", f"/v2/{repo}/blobs/{digest}", repo=repo, stream=True,
                                headers={"Range": f"bytes={start}-{start + length - 1}"})
        try:
            if response.status_code == 404:
                raise NotFound(f"{self.label} has no blob {digest[:19]}… in {repo}",
                               hint="the remote version is incomplete; ask its publisher to push it again")
            if response.status_code not in (200, 206):
                raise self._fail(response, f"reading blob {digest[:19]}")
            skip = start if response.status_code == 200 else 0
            out = bytearray()
            try:
                with _bounded(response, skip + length, label=self.label, what=f"blob {digest[:19]}…"):
                    for piece in response.iter_bytes(READ_SIZE):
                        self.stats.add(received=len(piece))
                        if skip >= len(piece):
                            skip -= len(piece)
                            continue
                        out += piece[skip:]
                        skip = 0
                        if len(out) >= length:
                            break
            except httpx.TransportError as exc:
                raise TransferBroken(f"{self.label}: the transfer of blob {digest[:19]}… broke off "
                                   f"({transport_words(exc)})", hint="run the command again; it resumes") from None
        finally:
            response.close()
        if len(out) < length:
            raise Corrupt(f"{self.label} returned {len(out)} of {length} bytes of blob {digest[:19]}…",
                          hint="the remote version is damaged; ask its publisher to push it again")
        return bytes(out[:length])

    def put_blob(self, repo: str, digest: str, data: bytes) -> None:
        """POST an upload session, then one monolithic PUT (the fastest on distribution)."""
        response = self.request("POST", f"/v2/{repo}/blobs/uploads/", repo=repo, actions="pull,push")
        response.close()
        if response.status_code != 202 or "location" not in response.headers:
            raise self._fail(response, f"starting the upload of {digest[:19]}")
        location = urljoin(self.base + f"/v2/{repo}/blobs/uploads/", response.headers["location"])
        target = urlsplit(location)
        if target.netloc.lower() != self.host:
            raise RemoteFailed(f"{self.label} wants the upload sent to another host",
                               hint="imgtool never sends credentials to another host; ask the registry's admin")
        path = target.path + (f"?{target.query}&" if target.query else "?") + f"digest={digest}"
        response = self.request("PUT", path, repo=repo, actions="pull,push", content=data,
                                headers={"Content-Type": "application/octet-stream"})
        response.close()
        if response.status_code not in (201, 204):
            raise self._fail(response, f"uploading {digest[:19]}")
        with self.stats.lock:
            self.stats.blobs_uploaded += 1

    def mount_blob(self, repo: str, digest: str, source: str) -> bool:
        response = self.request("POST", f"/v2/{repo}/blobs/uploads/", repo=repo, actions="pull,push",
                                params={"mount": digest, "from": source})
        response.close()
        if response.status_code == 201:
            with self.stats.lock:
                self.stats.blobs_mounted += 1
            return True
        if response.status_code == 202:  # not mounted: an upload session was opened instead; let it expire
            return False
        raise self._fail(response, f"mounting {digest[:19]} from {source}")

    # -- referrers ----------------------------------------------------------------------------------

    def supports_referrers_api(self, repo: str) -> bool:
        with self._lock:
            known = self._referrers_api.get(repo)
        if known is not None:
            return known
        probe = "sha256:" + "0" * 64
        response = self.request("GET", f"/v2/{repo}/referrers/{probe}", repo=repo, stream=True,
                                headers={"Accept": OCI_INDEX})
        ctype = response.headers.get("content-type", "")
        response.close()
        found = response.status_code == 200 and OCI_INDEX in ctype
        with self._lock:
            self._referrers_api[repo] = found
        return found

    def referrers_api(self, repo: str, digest: str) -> bytes | None:
        """The referrers API's index of `digest`, or None when the registry has no referrers API (the
        caller, imgtool.oci.referrers, then reads the fallback tag)."""
        check_digest(digest, "a referrers subject")
        if not self.supports_referrers_api(repo):
            return None
        response = self.request("GET", f"/v2/{repo}/referrers/{digest}", repo=repo, stream=True,
                                headers={"Accept": OCI_INDEX})
        if response.status_code != 200:
            raise self._fail(response, f"listing referrers of {digest[:19]}")
        return self._read_capped(response, MAX_MANIFEST, f"referrers of {digest[:19]}")

    # -- reading bodies -----------------------------------------------------------------------------

    def _read_capped(self, response: httpx.Response, limit: int, what: str) -> bytes:
        declared = response.headers.get("content-length")
        if declared is not None and declared.isdigit() and int(declared) > limit:
            response.close()
            raise Corrupt(f"{self.label}: {what} is {declared} bytes, above the {limit}-byte limit",
                          hint="the remote serves something imgtool does not read")
        out = bytearray()
        try:
            with _bounded(response, _expected_size(response, limit), label=self.label, what=what):
                for piece in response.iter_bytes(READ_SIZE):
                    out += piece
                    if len(out) > limit:
                        raise Corrupt(f"{self.label}: {what} is above the {limit}-byte limit",
                                      hint="the remote serves something imgtool does not read")
        except httpx.TransportError as exc:
            raise TransferBroken(f"{self.label}: reading {what} broke off ({transport_words(exc)})",
                               hint="run the command again") from None
        finally:
            response.close()
        self.stats.add(received=len(out))
        return bytes(out)

    def _read_json(self, response: httpx.Response, limit: int, what: str) -> Any:
        try:
            return json.loads(self._read_capped(response, limit, what))
        except ValueError:
            raise Corrupt(f"{self.label}: {what} is not JSON", hint="the registry answers wrongly") from None


def _next_link(header: str) -> str | None:
    """The path of a `Link: </v2/...>; rel="next"` header (tag list pagination)."""
    if 'rel="next"' not in header:
        return None
    start, end = header.find("<"), header.find(">")
    if start < 0 or end < start:
        return None
    path = urlsplit(header[start + 1:end])
    return path.path + (f"?{path.query}" if path.query else "")
