"""End to end in a real browser: `imgtool serve` as a user starts it, Debian's headless Chromium driven
through Selenium (chromium-driver), pages of a home with galleries, versions, a VM, a revoked version
and replication targets. Screenshots are saved under the test's tmp folder (the path is printed)."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from urllib.error import HTTPError
from urllib.parse import urlsplit
from urllib.request import urlopen

import pytest
from selenium.webdriver.remote.webdriver import WebDriver

from imgtool.home import Home
from tests.conftest import require_tools
from tests.web.home import XSS_CONSOLE, XSS_GALLERY, XSS_NAME_TEXT, XSS_REASON

pytestmark = pytest.mark.integration

CHROMIUM_FLAGS = ("--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking",
                  "--disable-component-update", "--disable-sync", "--no-first-run", "--disable-dev-shm-usage")


@dataclass
class Served:
    url: str  # with the token
    process: subprocess.Popen[str]

    @property
    def base(self) -> str:
        parts = urlsplit(self.url)
        return f"{parts.scheme}://{parts.netloc}"


@pytest.fixture(scope="module")
def served(web_home: Home) -> Iterator[Served]:
    """`imgtool serve --port 0` in its own process, as a user runs it; stopped with SIGINT (Ctrl-C)."""
    env = {**os.environ, "IMGTOOL_HOME": str(web_home.root)}
    proc = subprocess.Popen([sys.executable, "-m", "imgtool", "serve", "--port", "0"], env=env, text=True,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, stdin=subprocess.DEVNULL)
    try:
        assert proc.stdout is not None
        line = proc.stdout.readline()  # blocks until the URL is printed (the socket is bound by then)
        assert line.startswith("imgtool serve: http://127.0.0.1:"), (line, proc.stderr and proc.stderr.read())
        yield Served(line.split(": ", 1)[1].strip(), proc)
    finally:
        proc.send_signal(signal.SIGINT)
        try:
            proc.wait(timeout=20)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(timeout=10)


@pytest.fixture(scope="module")
def browser(tmp_path_factory: pytest.TempPathFactory) -> Iterator[WebDriver]:
    require_tools("chromium", "chromedriver")
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service

    options = webdriver.ChromeOptions()
    options.binary_location = "/usr/bin/chromium"
    for flag in CHROMIUM_FLAGS:
        options.add_argument(flag)
    options.add_argument(f"--user-data-dir={tmp_path_factory.mktemp('chromium-profile')}")
    options.add_argument("--window-size=1280,1000")
    driver = webdriver.Chrome(options=options, service=Service("/usr/bin/chromedriver"))
    driver.set_page_load_timeout(60)
    try:
        yield driver
    finally:
        driver.quit()


@pytest.fixture(scope="module")
def shots(tmp_path_factory: pytest.TempPathFactory) -> Path:
    folder = tmp_path_factory.mktemp("screenshots")
    print(f"\nscreenshots: {folder}")
    return folder


def _shot(driver: WebDriver, folder: Path, name: str) -> None:
    path = folder / f"{name}.png"
    driver.save_screenshot(str(path))
    assert path.stat().st_size > 1000


def _no_alert(driver: WebDriver) -> None:
    from selenium.common.exceptions import NoAlertPresentException

    with pytest.raises(NoAlertPresentException):
        driver.switch_to.alert.text  # noqa: B018


def _text(driver: WebDriver) -> str:
    from selenium.webdriver.common.by import By

    return str(driver.find_element(By.TAG_NAME, "body").text)


def test_it_listens_on_loopback_only(served: Served) -> None:
    port = urlsplit(served.url).port
    assert port is not None
    listening = _listening_addresses(port)
    assert listening == {"127.0.0.1"}
    # Another loopback address reaches any socket bound to 0.0.0.0, but not one bound to 127.0.0.1.
    with pytest.raises(ConnectionRefusedError), socket.create_connection(("127.0.0.2", port), timeout=5):
        pass


def _listening_addresses(port: int) -> set[str]:
    """Local addresses of the TCP sockets listening on `port` (from /proc/net/tcp and tcp6)."""
    found = set()
    for table in ("/proc/net/tcp", "/proc/net/tcp6"):
        for line in Path(table).read_text().splitlines()[1:]:
            local, state = line.split()[1], line.split()[3]
            address, hex_port = local.rsplit(":", 1)
            if state == "0A" and int(hex_port, 16) == port:
                found.add(socket.inet_ntoa(bytes.fromhex(address)[::-1]) if len(address) == 8 else address)
    return found


def test_without_the_token_everything_is_403(served: Served) -> None:
    for path in ("/", "/definitions/team/base", "/api/galleries", "/static/style.css", "/nope"):
        with pytest.raises(HTTPError) as refused:
            urlopen(served.base + path, timeout=30)
        assert refused.value.code == 403


def test_a_browser_walks_the_gallery(served: Served, browser: WebDriver, shots: Path) -> None:
    from selenium.webdriver.common.by import By

    driver = browser
    driver.get(served.base + "/")
    assert "403" in _text(driver)
    driver.get(served.url)
    assert driver.current_url == served.base + "/"  # the token left the address bar
    cookie = driver.get_cookie("imgtool_token")
    assert cookie is not None and cookie["httpOnly"] is True and cookie["sameSite"] == "Strict"
    assert driver.find_element(By.TAG_NAME, "h1").text == "Galleries"
    _shot(driver, shots, "01-galleries")
    assert XSS_GALLERY in _text(driver)  # the gallery's hostile description shows as text
    driver.find_element(By.LINK_TEXT, "team").click()
    driver.find_element(By.LINK_TEXT, "base").click()
    page = _text(driver)
    assert "Definition team/base" in page and XSS_NAME_TEXT in page
    assert "team/base@latest resolves to 2.0.0" in page
    assert "dropped: revoked" in page and "imgtool replicate team/base@1.2.0" in page and "completed" in page
    _no_alert(driver)
    _shot(driver, shots, "02-definition-versions")
    driver.find_element(By.LINK_TEXT, "1.1.0").click()
    banner = driver.find_element(By.CSS_SELECTOR, ".banner.revoked").text
    assert XSS_REASON in banner
    _no_alert(driver)
    _shot(driver, shots, "03-revoked-version")


def test_pages_show_checks_lineage_sharing_trust_vms_and_store(served: Served, browser: WebDriver,
                                                               shots: Path) -> None:
    from selenium.webdriver.common.by import By
    from selenium.webdriver.support.ui import WebDriverWait

    driver = browser
    driver.get(served.url)
    driver.get(served.base + "/definitions/team/checked")
    driver.find_element(By.TAG_NAME, "summary").click()
    tail = driver.find_element(By.CSS_SELECTOR, "pre.console").text
    assert tail == XSS_CONSOLE and "failed" in _text(driver)
    _no_alert(driver)
    _shot(driver, shots, "04-failed-check")
    driver.get(served.base + "/lineage")
    nodes = driver.find_elements(By.CSS_SELECTOR, "svg.lineage g.node")
    titles = {n.find_element(By.TAG_NAME, "text").text for n in nodes}
    assert {"team/base@1.2.0", "web1", "team/base@2.0.0", "mirror", "pulled/base@1.0.0"} <= titles
    assert driver.find_elements(By.CSS_SELECTOR, "g.node-revoked")
    assert "pulled as sha256:" in _text(driver)
    _shot(driver, shots, "05-lineage")
    driver.get(served.base + "/definitions/team/base/sharing")
    assert len(driver.find_elements(By.CSS_SELECTOR, "svg.bars")) == 4
    _shot(driver, shots, "06-sharing")
    driver.get(served.base + "/versions/pulled/base/1.0.0")
    assert "trusted on mirror" in _text(driver)
    driver.get(served.base + "/remotes")
    assert "signed" in _text(driver) and "release" in _text(driver)
    _shot(driver, shots, "07-remotes")
    driver.get(served.base + "/store")
    WebDriverWait(driver, 60, poll_frequency=1).until(_counted)  # the first count runs in the background
    _shot(driver, shots, "08-store")


def _counted(driver: WebDriver) -> bool:
    from selenium.webdriver.common.by import By

    driver.refresh()
    return "Store on disk" in driver.find_element(By.TAG_NAME, "body").text


def test_a_vm_console_updates_live(served: Served, browser: WebDriver, shots: Path, web_home: Home) -> None:
    from selenium.webdriver.common.by import By
    from selenium.webdriver.support.ui import WebDriverWait

    driver = browser
    driver.get(served.url)
    driver.find_element(By.LINK_TEXT, "VMs").click()
    driver.find_element(By.LINK_TEXT, "web1").click()
    console = driver.find_element(By.ID, "console")
    assert "<script>alert('serial')</script>" in console.text and "bold line" in console.text
    marker = f"line written at {time.monotonic_ns()}"
    with (web_home.vms / "web1" / "serial.log").open("a") as log:
        log.write(marker + "\n")
    WebDriverWait(driver, 30, poll_frequency=0.5).until(lambda d: marker in d.find_element(By.ID, "console").text)
    _no_alert(driver)
    _shot(driver, shots, "09-vm-console")


def test_a_streamed_vms_hydration_updates_live(served: Served, browser: WebDriver, web_home: Home) -> None:
    """The stream server rewrites its status file about once a second; the open VM page follows it."""
    import json

    from selenium.webdriver.common.by import By
    from selenium.webdriver.support.ui import WebDriverWait

    from imgtool.vm.streaming import STATUS

    status = web_home.vms / "web1" / STATUS
    figures = {"state": "hydrating", "server": False, "bytes_total": 4 << 20, "bytes_fetched": 0}
    status.write_text(json.dumps({**figures, "bytes_local": 1 << 20}))
    try:
        driver = browser
        driver.get(served.url)
        driver.get(served.base + "/vms/web1")
        shown = driver.find_element(By.ID, "vm-hydration")
        assert "25% local" in shown.text  # no stream.json: the VM no longer streams, so it is complete
        status.write_text(json.dumps({**figures, "bytes_local": 3 << 20}))
        WebDriverWait(driver, 30, poll_frequency=0.5).until(
            lambda d: "75% local" in d.find_element(By.ID, "vm-hydration").text)
        bar = driver.find_element(By.ID, "vm-hydration-bar")
        assert bar.get_attribute("value") == str(3 << 20)
    finally:
        status.unlink()


def test_a_narrow_window_reads(served: Served, browser: WebDriver, shots: Path) -> None:
    from selenium.webdriver.common.by import By

    driver = browser
    driver.get(served.url)
    driver.set_window_size(390, 900)
    try:
        driver.get(served.base + "/versions/team/base/1.0.0")
        width = driver.execute_script("return document.documentElement.scrollWidth")
        inner = driver.execute_script("return window.innerWidth")
        assert width <= inner  # nothing sticks out sideways: long digests and names wrap
        assert driver.find_element(By.TAG_NAME, "h1").text == "Version team/base@1.0.0"
        _shot(driver, shots, "10-narrow-version")
    finally:
        driver.set_window_size(1280, 1000)
