"""The web view's handlers through Starlette's TestClient (in process, no network): the token gate,
the security headers, every page of a full home, hostile text rendered as text, errors, actions."""

from __future__ import annotations

import re
from collections.abc import Iterator
from typing import Any, cast

import pytest
from starlette.applications import Starlette
from starlette.testclient import TestClient

from imgtool.gallery import lookup
from imgtool.home import Home
from imgtool.web import security
from imgtool.web.app import build, warm
from tests.web.home import HOSTILE, XSS_CONSOLE, XSS_NAME_TEXT, XSS_REASON

PAGES = ("/", "/galleries/team", "/definitions/team/base", "/definitions/team/checked", "/definitions/pulled/base",
         "/definitions/team/base/sharing", "/versions/team/base/1.0.0", "/versions/team/base/1.1.0",
         "/versions/team/checked/1.0.0", "/versions/pulled/base/1.0.0", "/lineage", "/remotes", "/vms",
         "/vms/web1", "/store")


def client(home: Home, *, actions: bool = False, cookie: bool = True) -> tuple[TestClient, security.Secrets]:
    keys = security.Secrets()
    c = TestClient(build(home.root, keys, allow_actions=actions), follow_redirects=False)
    if cookie:
        c.cookies.set(security.COOKIE, keys.token)
    return c, keys


@pytest.fixture(scope="module")
def web(web_home: Home) -> Iterator[TestClient]:
    c, _ = client(web_home)
    yield c


@pytest.mark.parametrize("path", [*PAGES, "/api/galleries", "/api/du", "/static/style.css", "/static/console.js",
                                  "/no/such/page"])
def test_without_the_token_every_answer_is_403(web_home: Home, path: str) -> None:
    c, keys = client(web_home, cookie=False)
    assert c.get(path).status_code == 403
    c.cookies.set(security.COOKIE, keys.token[:-1] + ("A" if keys.token[-1] != "A" else "B"))
    assert c.get(path).status_code == 403
    assert c.get(path + "?token=wrong").status_code == 403


def test_the_token_becomes_a_strict_http_only_cookie_and_leaves_the_url(web_home: Home) -> None:
    c, keys = client(web_home, cookie=False)
    answer = c.get(f"/definitions/team/base?page=1&token={keys.token}")
    assert answer.status_code == 303
    assert answer.headers["location"] == "/definitions/team/base?page=1"
    cookie = answer.headers["set-cookie"]
    assert cookie.startswith(f"{security.COOKIE}={keys.token};")
    assert "HttpOnly" in cookie and "SameSite=Strict" in cookie
    assert c.get("/definitions/team/base").status_code == 200  # the client kept the cookie


def test_every_answer_carries_a_strict_content_security_policy(web: TestClient) -> None:
    for path in ("/", "/api/galleries", "/static/style.css", "/no/such/page"):
        headers = web.get(path).headers
        assert headers["content-security-policy"] == security.CSP
        assert "script-src 'self'" in security.CSP and "unsafe-inline" not in security.CSP
        assert headers["x-content-type-options"] == "nosniff" and headers["referrer-policy"] == "no-referrer"


@pytest.mark.parametrize("path", PAGES)
def test_every_page_renders_and_escapes_untrusted_text(web: TestClient, path: str) -> None:
    answer = web.get(path)
    assert answer.status_code == 200, answer.text[:500]
    html = answer.text
    for text in HOSTILE:
        for piece in text.split("\n"):
            assert piece not in html or "<" not in piece, f"{piece!r} reached {path} unescaped"
    assert "<script" not in html.replace('<script src="/static/console.js" defer></script>', "")
    assert not re.search(r"<[^>]*\sonerror=", html)  # no element carries an event handler
    assert not re.search(r"\sstyle=", html)  # the CSP allows no inline style


def test_hostile_text_is_shown_escaped_where_it_belongs(web: TestClient) -> None:
    assert _escaped(XSS_NAME_TEXT) in web.get("/definitions/team/base").text
    assert _escaped(XSS_REASON) in web.get("/versions/team/base/1.1.0").text
    checked = web.get("/definitions/team/checked").text
    assert _escaped(XSS_CONSOLE) in checked and "failed" in checked
    assert "&lt;script&gt;alert(&#39;serial&#39;)&lt;/script&gt;" in web.get("/vms/web1").text


def _escaped(text: str) -> str:
    return (text.replace("&", "&amp;").replace("<", "&lt;").replace(">", "&gt;").replace("'", "&#39;")
            .replace('"', "&#34;"))


def test_the_versions_table_says_why_latest_picked_what_it_did(web: TestClient) -> None:
    html = web.get("/definitions/team/base").text
    assert "team/base@latest</strong> resolves to" in html
    assert "chosen: highest eligible version" in html and "dropped: revoked" in html
    assert "completed" in html and "imgtool replicate team/base@1.2.0" in html  # one target done, one failed
    pulled = web.get("/versions/pulled/base/1.0.0").text
    assert "trusted</span> on mirror" in pulled and "pulled as" not in pulled and "sha256:" in pulled


def test_a_replication_under_way_shows_its_progress(fresh_home: Home) -> None:
    """What a replicate running in another terminal records every 2 s (bytes done of the total)."""
    from imgtool.flows import replication

    replication._update(fresh_home, ("team", "base", "1.2.0"), "down", state="replicating", progress=3 << 20,
                        total=12 << 20)
    c, _ = client(fresh_home)
    row = c.get("/definitions/team/base").text.split(">1.2.0</a></th>", 1)[1].split("</tr>", 1)[0]
    assert "state-replicating" in row and "3.0 MiB of 12.0 MiB" in row


def test_the_versions_table_shows_the_audit(web: TestClient) -> None:
    """A generalized definition's versions are audited at publish: this one's disk holds no file system
    the audit can read, published with --allow-unaudited, which is recorded (and shown) with why;
    specialized ones have none."""
    checked = web.get("/definitions/team/checked").text.split(">1.0.0</a></th>", 1)[1].split("</tr>", 1)[0]
    assert "not audited (published with --allow-unaudited): no ext2/3/4 root file system found" in checked
    base = web.get("/definitions/team/base").text.split(">1.0.0</a></th>", 1)[1].split("</tr>", 1)[0]
    assert "not audited" not in base and '<span class="muted">none</span>' in base


def test_the_version_page_shows_disks_provenance_and_what_stands_on_it(web: TestClient, web_home: Home) -> None:
    html = web.get("/versions/team/base/1.2.0").text
    assert "OS disk" in html and "2.0 MiB" in html  # the virtual size
    assert 'href="/vms/web1"' in html and "team/base@2.0.0" in html  # a VM on it, a version captured from it
    captured = web.get("/versions/team/base/2.0.0").text
    assert "vm: web1" in captured


def test_the_version_page_shows_its_boot_profile(web: TestClient) -> None:
    assert "2 chunks in first-read order (os: 2)" in web.get("/versions/team/checked/1.0.0").text
    assert "none (a passing boot check records one)" in web.get("/versions/team/base/1.2.0").text
    shown = web.get("/api/versions/team/checked/1.0.0").json()["boot_profile"]
    assert shown == {"chunks": 2, "disks": [{"disk": "os", "chunks": 2}], "problem": None}


def test_the_vm_console_api_strips_terminal_control_sequences(web: TestClient) -> None:
    body = web.get("/api/vms/web1/console").json()
    assert body["name"] == "web1" and body["state"] == "stopped"
    assert "bold line" in body["lines"] and not any("\x1b" in line for line in body["lines"])


def test_errors_say_what_and_what_to_do(web: TestClient) -> None:
    missing = web.get("/versions/team/base/9.9.9")
    assert missing.status_code == 404 and "does not exist" in missing.text and "hint:" in missing.text
    api = web.get("/api/versions/team/base/9.9.9")
    assert api.status_code == 404 and api.json()["error"]["category"] == "not-found"
    assert web.get("/definitions/team/base?page=abc").status_code == 400
    assert web.get("/definitions/nope/nothing").status_code == 404
    assert web.get("/no/such/page").status_code == 404


def test_actions_are_off_unless_allowed(web: TestClient, fresh_home: Home) -> None:
    html = web.get("/versions/team/checked/1.0.0").text
    assert "<form" not in html
    c, keys = client(fresh_home)
    answer = c.post("/actions/versions/team/base/1.0.0/revoke", data={"csrf": keys.csrf, "reason": "x"})
    assert answer.status_code == 403
    assert lookup.get_version(fresh_home, "team/base@1.0.0")[0].revocation is None


def test_actions_need_the_csrf_token_and_a_same_origin_form(fresh_home: Home) -> None:
    c, keys = client(fresh_home, actions=True)
    for data, headers in (({"reason": "x"}, {}), ({"reason": "x", "csrf": "forged"}, {}),
                          ({"reason": "x", "csrf": keys.csrf}, {"origin": "http://evil.example"})):
        answer = c.post("/actions/versions/team/base/1.0.0/revoke", data=data, headers=headers)
        assert answer.status_code == 403
    assert lookup.get_version(fresh_home, "team/base@1.0.0")[0].revocation is None


def test_revoke_and_promote_call_the_library_like_the_cli(fresh_home: Home) -> None:
    c, keys = client(fresh_home, actions=True)
    page = c.get("/versions/team/checked/1.0.0").text
    assert keys.csrf in page and "/actions/versions/team/checked/1.0.0/promote" in page
    answer = c.post("/actions/versions/team/base/1.0.0/revoke", data={"csrf": keys.csrf, "reason": "CVE-1"},
                    headers={"origin": "http://testserver"})
    assert answer.status_code == 303 and answer.headers["location"] == "/versions/team/base/1.0.0"
    revoked = lookup.get_version(fresh_home, "team/base@1.0.0")[0].revocation
    assert revoked is not None and revoked.reason == "CVE-1"
    assert c.post("/actions/versions/team/checked/1.0.0/promote", data={"csrf": keys.csrf}).status_code == 303
    check = lookup.get_version(fresh_home, "team/checked@1.0.0")[0].check
    assert check is not None and check.state == "promoted"
    empty = c.post("/actions/versions/team/base/1.2.0/revoke", data={"csrf": keys.csrf, "reason": " "})
    assert empty.status_code == 400


def test_the_store_page_counts_in_the_background(web_home: Home) -> None:
    keys = security.Secrets()
    app = build(web_home.root, keys)
    c = TestClient(app)
    c.cookies.set(security.COOKIE, keys.token)
    first = c.get("/store").text
    assert "Counting what the store holds" in first or "Store on disk" in first
    cast(Starlette, app.app).state.ctx.du.wait(120)
    assert "Store on disk" in c.get("/store").text


def test_after_warming_the_first_visits_find_everything_ready(fresh_home: Home) -> None:
    """What `imgtool serve` does before it prints its URL: the caches are filled and du is counted, so
    the store page's first visit shows the totals and /api/du answers that count (its Age header says
    how old it is) instead of counting again."""
    from tests.web.test_web_units import _age, _key_folders

    _age(*_key_folders(fresh_home), fresh_home.store.layout.name("versions", "team", "base"))
    keys = security.Secrets()
    app = build(fresh_home.root, keys)
    warm(app)
    ctx = cast(Starlette, app.app).state.ctx
    counted = ctx.du.get()
    assert counted.value is not None and not counted.computing
    c = TestClient(app)
    c.cookies.set(security.COOKIE, keys.token)
    store = c.get("/store").text
    assert "Store on disk" in store
    listed = re.findall(r'<th scope="row"><a href="/versions/[^"]*">([^<]*)</a></th>', store)
    most = sorted(counted.value["versions"], key=lambda r: r["unique_bytes"], reverse=True)
    assert listed and listed[0] == most[0]["ref"] and set(listed) == {r["ref"] for r in most}  # < 50 here
    answer = c.get("/api/du")
    assert answer.status_code == 200 and int(answer.headers["age"]) >= 0
    assert answer.json() == counted.value and ctx.du.get().computed_at == counted.computed_at


def test_while_serving_a_change_is_read_before_anyone_asks(fresh_home: Home,
                                                            monkeypatch: pytest.MonkeyPatch) -> None:
    """app.refresh (what the server runs every second): nothing happens while the names are unchanged;
    after a publish it fills the caches again, so the next request finds the new list remembered."""
    from imgtool.web import app as webapp
    from imgtool.web import documents
    from imgtool.web.memo import home_key
    from tests.remote.helpers import disk_bytes, publish_bytes
    from tests.web.test_web_units import _age, _key_folders

    definition = fresh_home.store.layout.name("versions", "team", "base")
    _age(*_key_folders(fresh_home), definition)
    keys = security.Secrets()
    app = build(fresh_home.root, keys)
    warm(app)
    listed: list[str] = []
    real = documents.version_list
    def counted(home: Home, ref: str) -> list[dict[str, Any]]:
        listed.append(ref)
        return real(home, ref)

    monkeypatch.setattr(documents, "version_list", counted)
    warmed = home_key(fresh_home)
    assert warmed is not None and webapp.refresh(app, warmed) == warmed and listed == []
    publish_bytes(fresh_home, "team/base", "3.0.0", disk_bytes(1 << 20, seed=79))
    _age(*_key_folders(fresh_home), definition)
    now = webapp.refresh(app, warmed)
    assert now not in (None, warmed) and "team/base" in listed
    listed.clear()
    c = TestClient(app)
    c.cookies.set(security.COOKIE, keys.token)
    assert c.get("/api/definitions/team/base/versions").json()[-1]["version"] == "3.0.0"
    assert "3.0.0" in c.get("/definitions/team/base").text and listed == []  # remembered by the refresh


def test_api_du_counts_again_once_the_home_changed(fresh_home: Home) -> None:
    from tests.remote.helpers import disk_bytes, publish_bytes
    from tests.web.test_web_units import _age, _key_folders

    definition = fresh_home.store.layout.name("versions", "team", "base")
    _age(*_key_folders(fresh_home), definition)
    c, _ = client(fresh_home)
    refs = [r["ref"] for r in c.get("/api/du").json()["versions"]]
    assert "team/base@3.0.0" not in refs
    publish_bytes(fresh_home, "team/base", "3.0.0", disk_bytes(1 << 20, seed=78))
    _age(*_key_folders(fresh_home), definition)
    assert "team/base@3.0.0" in [r["ref"] for r in c.get("/api/du").json()["versions"]]


def test_serve_json_prints_one_line_a_script_can_use(web_home: Home) -> None:
    """`imgtool serve --json`: one JSON line on stdout once it is ready; the url carries the token (it is
    what a script needs to get in), base_url does not; nothing on stderr repeats the token."""
    import http.client
    import json
    import os
    import signal
    import subprocess
    import sys
    from urllib.error import HTTPError
    from urllib.request import urlopen

    from tests.cli import Cli

    proc = subprocess.Popen([sys.executable, "-m", "imgtool", "serve", "--port", "0", "--json"],
                            env=Cli(web_home.root).env_for(), text=True, stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, stdin=subprocess.DEVNULL)
    try:
        assert proc.stdout is not None
        ready = json.loads(proc.stdout.readline())
        assert set(ready) == {"url", "base_url", "host", "port", "pid", "startup_ms"}
        assert ready["pid"] == proc.pid and ready["host"] == "127.0.0.1" and ready["startup_ms"] >= 0
        assert ready["base_url"] == f"http://127.0.0.1:{ready['port']}"
        token = ready["url"].split("?token=", 1)[1]
        assert ready["url"] == f"{ready['base_url']}/?token={token}" and len(token) >= 40
        with pytest.raises(HTTPError) as refused:
            urlopen(ready["base_url"] + "/api/galleries", timeout=30)
        assert refused.value.code == 403
        conn = http.client.HTTPConnection("127.0.0.1", ready["port"], timeout=30)
        conn.request("GET", f"/api/galleries?token={token}")
        answer = conn.getresponse()
        answer.read()
        conn.close()
        assert answer.status == 303 and answer.getheader("set-cookie", "").startswith(f"{security.COOKIE}={token};")
    finally:
        proc.send_signal(signal.SIGINT)
        out, err = proc.communicate(timeout=30)
    assert out == "" and token not in err  # nothing more on stdout at exit; no token on stderr
    assert proc.returncode == 0 and os.path.exists(web_home.root)


def test_a_streamed_vm_shows_its_hydration(fresh_home: Home) -> None:
    """The stream server's status file, as vm show --json reads it, on the VM page and in the console
    answer the page polls (console.js writes the same words as the page)."""
    import json

    from imgtool.vm.record import STREAM
    from imgtool.vm.streaming import STATUS

    folder = fresh_home.vms / "web1"
    c, _ = client(fresh_home)
    assert "not streamed" in c.get("/vms/web1").text and c.get("/api/vms/web1/console").json()["hydration"] is None
    (folder / STREAM).write_text("{}")  # the VM still streams its version
    status = {"state": "hydrating", "server": False, "remote": "origin", "bytes_total": 4 << 20,
              "bytes_local": 1 << 20, "bytes_fetched": 1 << 20, "rate_bytes_per_second": 1 << 20, "eta_seconds": 3}
    (folder / STATUS).write_text(json.dumps(status))
    page = c.get("/vms/web1").text
    assert '<span id="vm-hydration">hydrating, 25% local, about 3 s left</span>' in page
    assert 'max="4194304" value="1048576"' in page and "1.0 MiB of 4.0 MiB" in page
    assert c.get("/api/vms/web1/console").json()["hydration"] == status == c.get("/api/vms/web1").json()["hydration"]


def test_sharing_agrees_with_du_on_the_bytes_only_a_version_holds(web: TestClient, web_home: Home) -> None:
    """Two computations of the same number: the sharing page's (chunk sets and users) and imgtool du's
    (a mark of the whole store)."""
    from imgtool import maintenance

    unique = {r["ref"]: r["unique_bytes"] for r in maintenance.du(web_home)["versions"]}
    html = web.get("/definitions/team/base/sharing").text
    for version in ("1.0.0", "1.1.0", "1.2.0", "2.0.0"):
        row = html.split(f">{version}</a></th>", 1)[1].split("</tr>", 1)[0]
        cells = re.findall(r"<td>([^<]*)</td>", row)
        assert cells[3] == _human(unique[f"team/base@{version}"])
    assert unique["team/base@1.1.0"] > 0  # the revoked one holds chunks no other version has


def _human(n: int) -> str:
    from imgtool.flows.shapes import human_bytes

    return human_bytes(n)


def test_remembered_lists_follow_every_publish(fresh_home: Home) -> None:
    """The server remembers a definition's list while its names are unchanged; a publish changes them."""
    from tests.remote.helpers import disk_bytes, publish_bytes
    from tests.web.test_web_units import _age

    c, _ = client(fresh_home)
    folders = [fresh_home.store.layout.name("versions", "team", "base"), fresh_home.vms]

    def versions() -> list[str]:
        return [v["version"] for v in c.get("/api/definitions/team/base/versions").json()]

    _age(*folders)
    assert versions() == ["1.0.0", "1.1.0", "1.2.0", "2.0.0"]
    assert versions() == ["1.0.0", "1.1.0", "1.2.0", "2.0.0"]  # now from memory
    publish_bytes(fresh_home, "team/base", "3.0.0", disk_bytes(1 << 20, seed=77))
    assert versions()[-1] == "3.0.0"  # a folder changed this instant is not trusted: read afresh
    _age(*folders)
    assert versions()[-1] == "3.0.0" and "3.0.0" in c.get("/definitions/team/base").text
    assert "3.0.0" in c.get("/definitions/team/base/sharing").text


def test_stopping_a_stopped_vm_goes_through_the_library(fresh_home: Home) -> None:
    c, keys = client(fresh_home, actions=True)
    assert "/actions/vms/web1/start" in c.get("/vms/web1").text  # a stopped VM offers start
    answer = c.post("/actions/vms/web1/stop", data={"csrf": keys.csrf})
    assert answer.status_code == 303 and answer.headers["location"] == "/vms/web1"
    missing = c.post("/actions/vms/nobody/stop", data={"csrf": keys.csrf})
    assert missing.status_code == 404 and "nobody" in missing.text


def test_serve_refuses_a_listen_name_and_a_bad_port(web_home: Home) -> None:
    from tests.cli import Cli

    cli = Cli(web_home.root)
    named = cli("serve", "--listen", "localhost", ok=False)
    assert named.returncode == 2 and "not an IP address" in named.stderr and "hint:" in named.stderr
    port = cli("serve", "--port", "70000", ok=False)
    assert port.returncode == 2 and "0..65535" in port.stderr


def test_serve_warns_before_it_listens_beyond_loopback(web_home: Home) -> None:
    """192.0.2.1 (TEST-NET-1) is assigned to no interface here: the bind fails without a packet sent,
    after the warning a user must see whenever they ask for more than loopback."""
    from tests.cli import Cli

    done = Cli(web_home.root)("serve", "--listen", "192.0.2.1", "--port", "0", ok=False)
    assert "listening on 192.0.2.1, not only this machine's loopback" in done.stderr
    assert "anyone who can reach it" in done.stderr
    assert done.returncode != 0 and "cannot listen on 192.0.2.1" in done.stderr
