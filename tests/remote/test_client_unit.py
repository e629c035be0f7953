"""The registry client's auth, retry and redirect rules, with the network edge replaced (httpx.MockTransport).

The real-registry tests cover the happy paths; these pin down what distribution 2.8 cannot show:
Bearer tokens per scope (reused, refreshed), 429 Retry-After, bounded 5xx retries, and credentials that
never follow a redirect to another host.
"""

from __future__ import annotations

import base64
import json
from collections.abc import Callable

import httpx
import pytest

from imgtool.errors import Refused
from imgtool.remote import auth, registry
from imgtool.remote.errors import RemoteFailed
from imgtool.remote.registry import RegistryClient

Handler = Callable[[httpx.Request], httpx.Response]
SECRET = "hunter2-secret"


@pytest.fixture(autouse=True)
def no_sleep(monkeypatch: pytest.MonkeyPatch) -> list[float]:
    slept: list[float] = []
    monkeypatch.setattr("imgtool.remote.registry.time.sleep", slept.append)
    return slept


def client(handler: Handler, *, creds: auth.Credentials | None = None) -> RegistryClient:
    return RegistryClient("https://reg.example", label="r", credentials=creds,
                          transport=httpx.MockTransport(handler))


def bearer_registry(issued: list[str], seen: list[str | None], *, lifetime: int = 300) -> Handler:
    def handle(request: httpx.Request) -> httpx.Response:
        if request.url.host == "auth.example":
            assert request.headers.get("authorization") == "Basic " + base64.b64encode(
                f"bob:{SECRET}".encode()).decode()
            scope = request.url.params["scope"]
            token = f"tok-{len(issued)}-{scope}"
            issued.append(scope)
            return httpx.Response(200, json={"token": token, "expires_in": lifetime})
        got = request.headers.get("authorization")
        seen.append(got)
        if not got or not got.startswith("Bearer tok-"):
            challenge = 'Bearer realm="https://auth.example/token",service="reg",scope="repository:a/b:pull"'
            return httpx.Response(401, headers={"www-authenticate": challenge})
        return httpx.Response(200, json={"tags": ["1.0.0"]})
    return handle


def test_bearer_token_is_fetched_per_scope_and_reused() -> None:
    issued: list[str] = []
    seen: list[str | None] = []
    c = client(bearer_registry(issued, seen), creds=auth.Credentials("bob", SECRET))
    assert c.tags("a/b") == ["1.0.0"]
    assert c.tags("a/b") == ["1.0.0"]
    assert issued == ["repository:a/b:pull"]  # one token, reused
    c.tags("c/d")
    assert issued == ["repository:a/b:pull", "repository:c/d:pull"]  # another repository, another scope


def test_an_expired_token_is_refreshed() -> None:
    issued: list[str] = []
    seen: list[str | None] = []
    c = client(bearer_registry(issued, seen, lifetime=5), creds=auth.Credentials("bob", SECRET))
    c.tags("a/b")
    c.tags("a/b")
    assert len(issued) == 1  # a short-lived token is still reused while fresh
    c._tokens["repository:a/b:pull"].expires = 0  # it expired: the next request is answered with a new one
    assert c.tags("a/b") == ["1.0.0"]
    assert len(issued) == 2


def test_401_without_credentials_says_log_in_and_403_names_the_right() -> None:
    def handle(request: httpx.Request) -> httpx.Response:
        if request.method == "POST":
            return httpx.Response(403, json={"errors": [{"code": "DENIED", "message": "requested access denied"}]})
        return httpx.Response(401, headers={"www-authenticate": 'Basic realm="x"'})
    c = client(handle)
    with pytest.raises(Refused, match="needs a login") as caught:
        c.tags("a/b")
    assert "imgtool remote login r" in caught.value.hint
    c2 = client(lambda r: handle(r) if r.method == "POST" else httpx.Response(202))
    with pytest.raises(Refused, match="denies push access to a/b"):
        c2.put_blob("a/b", "sha256:" + "0" * 64, b"x")


def test_wrong_password_never_shows_the_secret() -> None:
    c = client(lambda r: httpx.Response(401, headers={"www-authenticate": 'Basic realm="x"'}),
               creds=auth.Credentials("bob", SECRET))
    with pytest.raises(Refused) as caught:
        c.tags("a/b")
    assert SECRET not in str(caught.value) and "rejected the credentials of user bob" in caught.value.message
    assert SECRET not in repr(auth.Credentials("bob", SECRET))


def test_429_honours_retry_after_and_5xx_retries_are_bounded(no_sleep: list[float]) -> None:
    answers = iter([httpx.Response(429, headers={"retry-after": "7"}), httpx.Response(200, json={"tags": []})])
    assert client(lambda r: next(answers)).tags("a/b") == []
    assert no_sleep == [7.0]
    calls: list[int] = []

    def down(request: httpx.Request) -> httpx.Response:
        calls.append(1)
        return httpx.Response(503, json={"errors": [{"code": "UNAVAILABLE", "message": "no space left on device"}]})
    with pytest.raises(RemoteFailed, match="no space left on device"):
        client(down).tags("a/b")
    assert len(calls) == registry.ATTEMPTS


def test_resets_and_timeouts_are_retried() -> None:
    failures = iter([httpx.ConnectError("reset"), httpx.ReadTimeout("slow")])

    def flaky(request: httpx.Request) -> httpx.Response:
        failure = next(failures, None)
        if failure is not None:
            raise failure
        return httpx.Response(200, json={"tags": ["1.0.0"]})
    assert client(flaky).tags("a/b") == ["1.0.0"]


@pytest.mark.parametrize(("failure", "words"), [
    (httpx.ConnectError("[Errno 111] Connection refused"), "the connection was refused"),
    (httpx.ConnectError("[Errno -2] Name or service not known"), "the host name does not resolve"),
    (httpx.ConnectError("[SSL: CERTIFICATE_VERIFY_FAILED] certificate verify failed"), "TLS certificate"),
    (httpx.ConnectTimeout("timed out"), "timed out"),
    (httpx.RemoteProtocolError("Server disconnected without sending a response."), "closed the connection"),
])
def test_an_unreachable_registry_is_named_with_why_and_each_retry_is_said(
        failure: Exception, words: str, no_sleep: list[float], caplog: pytest.LogCaptureFixture) -> None:
    def down(request: httpx.Request) -> httpx.Response:
        raise failure
    with caplog.at_level("INFO", logger="imgtool.remote.retry"), pytest.raises(RemoteFailed) as caught:
        client(down).tags("a/b")
    message = caught.value.message
    assert message.startswith("r (reg.example) could not be reached: ") and words in message, message
    assert type(failure).__name__ not in message + caught.value.hint
    assert f"{registry.ATTEMPTS} tries" in message and "GET /v2/a/b/tags/list" in message
    assert len(no_sleep) == registry.ATTEMPTS - 1  # no pause after the last try
    said = [r.getMessage() for r in caplog.records if r.name == "imgtool.remote.retry"]
    assert len(said) == registry.ATTEMPTS - 1 and all(words in line and "trying again" in line for line in said)


def test_credentials_never_follow_a_redirect_to_another_host() -> None:
    seen: dict[str, str | None] = {}

    def handle(request: httpx.Request) -> httpx.Response:
        seen[request.url.host] = request.headers.get("authorization")
        if request.url.host == "reg.example":
            if not request.headers.get("authorization"):
                return httpx.Response(401, headers={"www-authenticate": 'Basic realm="x"'})
            return httpx.Response(307, headers={"location": "https://cdn.example/blob?sig=1"})
        return httpx.Response(200, content=b"data")
    c = client(handle, creds=auth.Credentials("bob", SECRET))
    assert c.get_range("a/b", "sha256:" + "1" * 64, 0, 4) == b"data"
    assert seen["reg.example"] is not None and seen["cdn.example"] is None


def test_manifest_size_limit_and_digest_check() -> None:
    big = httpx.Response(200, content=b"{" + b" " * (4 << 20) + b"}",
                         headers={"content-type": "application/vnd.oci.image.manifest.v1+json"})
    from imgtool.errors import Corrupt
    with pytest.raises(Corrupt, match="limit"):
        client(lambda r: big).get_manifest("a/b", "1.0.0")
    body = json.dumps({"schemaVersion": 2}).encode()
    with pytest.raises(Corrupt, match="digest"):
        client(lambda r: httpx.Response(200, content=body)).get_manifest("a/b", "sha256:" + "2" * 64)


def test_challenge_and_auth_file_parsing(tmp_path: pytest.TempPathFactory) -> None:
    found = auth.parse_challenge('Bearer realm="https://a/t",service="s",scope="repository:x:pull,push"')
    assert found is not None and found.params["scope"] == "repository:x:pull,push"
    assert auth.parse_challenge("Negotiate abc") is None
    assert auth._key_host("https://Index.Example:5000/v1/") == "index.example:5000"


@pytest.mark.parametrize(("body", "why"), [
    (b'{"format": 1, "kind": "imgtool-version-config", "kind": "x"}', "duplicate key"),
    (b'{"format": 1.0, "kind": "imgtool-version-config"}', "fractional number"),
    (b'{"format": NaN}', "non-standard number"), (b"[1]", "not a JSON object"), (b"{", "not JSON")])
def test_a_version_config_is_read_by_the_strict_kit(body: bytes, why: str) -> None:
    from imgtool.errors import Corrupt
    from imgtool.remote import format as fmt

    with pytest.raises(Corrupt, match=why):
        fmt.parse_config(body, "config of team/base:1.0.0")
    with pytest.raises(Corrupt, match="limit"):
        fmt.parse_config(b" " * (fmt.MAX_CONFIG + 1), "config of team/base:1.0.0")
