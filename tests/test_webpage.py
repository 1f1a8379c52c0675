"""The try-on page and the API docs in a real headless Chromium against the real service.

Debian's `chromium` and `chromium-driver` packages, driven by Selenium with explicit paths (no
browser download). The service is the real app on a real threaded WSGI server with the tiny
synthetic models. Without chromium the test is skipped locally, and fails in CI (CI=true).
A screenshot of the page with a result goes to $FASTFIT_SCREENSHOT_DIR (default: the test's
temporary folder); its path is printed.
"""
from __future__ import annotations

import base64
import io
import os
import shutil
import time
from pathlib import Path

import pytest
from PIL import Image

from _live_server import serve
from helpers import TEST_RESOLUTION
from fastfit_engine.runtime.engine import STAGES
from fastfit_engine.request.schema import NUMBER_FIELDS_BY_NAME
from server import create_app

CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")
CHROMEDRIVER = shutil.which("chromedriver") or "/usr/bin/chromedriver"


@pytest.fixture(scope="module")
def browser():
    if not CHROMIUM or not os.path.exists(CHROMEDRIVER):
        msg = "needs Debian's chromium and chromium-driver (apt-get install chromium chromium-driver)"
        if os.environ.get("CI", "").lower() == "true":
            pytest.fail(msg)
        pytest.skip(msg)
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service

    options = webdriver.ChromeOptions()
    options.binary_location = CHROMIUM
    options.set_capability("goog:loggingPrefs", {"browser": "ALL"})  # the console: CSP violations land there
    for arg in ("--headless=new", "--no-sandbox", "--disable-dev-shm-usage", "--disable-gpu",
                "--window-size=1200,1400", "--disable-extensions", "--no-first-run"):
        options.add_argument(arg)
    driver = webdriver.Chrome(service=Service(executable_path=CHROMEDRIVER), options=options)
    driver.set_page_load_timeout(30)
    driver.set_script_timeout(30)
    yield driver
    driver.quit()


@pytest.fixture(scope="module")
def live(engine):
    app = create_app(engine, {"QUEUE_SIZE": 2})
    with serve(app) as url:
        yield app, url


def _wait(driver, condition, timeout: float = 30.0):
    from selenium.webdriver.support.ui import WebDriverWait

    return WebDriverWait(driver, timeout, poll_frequency=0.05).until(condition)


def _open_page(driver, url):
    driver.get(url + "/")
    _wait(driver, lambda d: d.execute_script("return document.body.dataset.state") == "idle")
    return driver


def _csp_violations(driver) -> list[str]:
    """Console messages since the last call that say the Content-Security-Policy blocked something."""
    return [e["message"] for e in driver.get_log("browser") if "Content Security Policy" in e["message"]]


def _by_id(driver, element_id):
    from selenium.webdriver.common.by import By

    return driver.find_element(By.ID, element_id)


def _set_number(driver, name, value):
    el = _by_id(driver, f"input-{name}")
    el.clear()
    el.send_keys(str(value))


def _screenshot_dir(tmp_path) -> Path:
    out = Path(os.environ.get("FASTFIT_SCREENSHOT_DIR") or tmp_path)
    out.mkdir(parents=True, exist_ok=True)
    return out


def test_page_try_on_end_to_end(browser, live, sample_files, tmp_path, capsys):
    app, url = live
    d = _open_page(browser, url)

    # the inputs come from the schema (through /openapi.json)
    for name, field in NUMBER_FIELDS_BY_NAME.items():
        el = _by_id(d, f"input-{name}")
        assert float(el.get_attribute("min")) == field.minimum and float(el.get_attribute("max")) == field.maximum
        assert el.get_attribute("value") == ("" if field.default is None else str(field.default))
    assert _by_id(d, "input-seed").get_attribute("placeholder") == "random"

    _by_id(d, "input-person").send_keys(str(sample_files["person"]))
    _by_id(d, "input-upper").send_keys(str(sample_files["upper"]))
    # previews show the chosen pictures
    for name, path in (("person", sample_files["person"]), ("upper", sample_files["upper"])):
        width = _wait(d, lambda d: d.execute_script(
            f"const i = document.getElementById('preview-{name}'); return !i.hidden && i.complete && i.naturalWidth"))
        assert width == Image.open(path).width
    _set_number(d, "steps", 1)
    _set_number(d, "seed", 7)
    _set_number(d, "guidance_scale", 1)

    svc = app.extensions["fastfit"]
    svc.gpu_lock.acquire()  # hold the GPU so the progress indication is seen for certain
    try:
        _by_id(d, "submit").click()
        _wait(d, lambda d: _by_id(d, "working").is_displayed())
        assert not _by_id(d, "submit").is_enabled()
        assert d.execute_script("return document.getElementById('progress').tagName") == "PROGRESS"
    finally:
        svc.gpu_lock.release()

    _wait(d, lambda d: d.execute_script(
        "const i = document.getElementById('result-image'); return i.complete && i.naturalWidth > 0"), 60)
    assert not _by_id(d, "working").is_displayed() and not _by_id(d, "error").is_displayed()
    size = d.execute_script("const i = document.getElementById('result-image'); return [i.naturalWidth, i.naturalHeight]")
    assert tuple(size) == TEST_RESOLUTION
    assert _by_id(d, "result-seed").text == "7"
    rows = d.execute_script(
        "return [...document.querySelectorAll('#result-timings tr')].map(r => [...r.cells].map(c => c.textContent))")
    assert [r[0] for r in rows] == list(STAGES) and all(r[1].endswith(" s") for r in rows)
    # the person is shown beside the result
    assert d.execute_script("return document.getElementById('result-person').naturalWidth") > 0

    # the download button holds exactly the bytes the service answers for the same request
    link = _by_id(d, "download")
    assert link.get_attribute("download") == "fastfit-7.png" and link.get_attribute("href").startswith("blob:")
    data_url = d.execute_async_script(
        "const done = arguments[0]; fetch(document.getElementById('download').href).then(r => r.blob())"
        ".then(b => { const f = new FileReader(); f.onload = () => done(f.result); f.readAsDataURL(b); });")
    downloaded = base64.b64decode(data_url.split(",", 1)[1])
    files = {n: (io.BytesIO(sample_files[n].read_bytes()), f"{n}.png") for n in ("person", "upper")}
    direct = app.test_client().post("/prompt", data={**files, "steps": "1", "seed": "7", "guidance_scale": "1"},
                                    content_type="multipart/form-data")
    assert direct.status_code == 200 and downloaded == direct.data
    assert _csp_violations(d) == []  # the whole try-on ran under the strict policy

    shot = _screenshot_dir(tmp_path) / "tryon_page.png"
    assert d.save_screenshot(str(shot))
    assert Image.open(shot).size[0] > 600
    with capsys.disabled():
        print(f"\ntry-on page screenshot: {shot}")


def test_page_shows_the_service_error(browser, live, sample_files):
    _, url = live
    d = _open_page(browser, url)
    for name in ("person", "dress", "upper"):
        _by_id(d, f"input-{name}").send_keys(str(sample_files[name]))
    _by_id(d, "submit").click()
    _wait(d, lambda d: _by_id(d, "error").is_displayed())
    assert _by_id(d, "error").text == "dress cannot be combined with upper: a dress replaces both (dress_conflict)"
    assert not _by_id(d, "result").is_displayed()
    assert _by_id(d, "submit").is_enabled()  # the page can be used again


def test_docs_render_from_our_own_server(browser, live):
    _, url = live
    browser.get(url + "/docs/")
    _wait(browser, lambda d: d.execute_script(
        "return document.querySelectorAll('.opblock-summary-path').length") >= 5)
    paths = browser.execute_script(
        "return [...document.querySelectorAll('.opblock-summary-path')].map(e => e.dataset.path || e.textContent)")
    assert "/prompt" in paths
    # every resource the page loaded (scripts, styles, the document) came from this server
    resources = browser.execute_script("return performance.getEntriesByType('resource').map(e => e.name)")
    assert any(r.endswith("/docs/swagger-ui-bundle.js") for r in resources)
    assert any(r.endswith("/openapi.json") for r in resources)
    assert all(r.startswith(url + "/") for r in resources), resources
    assert _csp_violations(browser) == []  # it all runs under the strict policy (no inline script)


def test_page_tells_what_it_is_doing_synthetic_weights_progress_and_the_mask(browser, live, sample_files, monkeypatch):
    app, url = live
    engine = app.extensions["fastfit"].engine
    monkeypatch.setattr(engine, "synthetic_weights", True)  # as for a tree the synthetic writer marked
    _csp_violations(browser)  # forget earlier messages
    d = _open_page(browser, url)
    assert not _by_id(d, "synthetic").is_displayed()  # nothing said before the service has said it
    _by_id(d, "input-person").send_keys(str(sample_files["person"]))
    _by_id(d, "input-upper").send_keys(str(sample_files["upper"]))
    _set_number(d, "steps", 30)
    _set_number(d, "seed", 9)
    _by_id(d, "show-mask").click()
    # every text the progress line shows, recorded as it changes
    d.execute_script("""window.seenStages = [];
        new MutationObserver(() => window.seenStages.push(document.getElementById('stage').textContent))
          .observe(document.getElementById('stage'), {childList: true, characterData: true, subtree: true});""")
    svc = app.extensions["fastfit"]
    svc.gpu_lock.acquire()
    try:
        _by_id(d, "submit").click()
        _wait(d, lambda d: _by_id(d, "stage").text == "waiting for the GPU")
    finally:
        svc.gpu_lock.release()
    _wait(d, lambda d: d.execute_script(
        "const i = document.getElementById('result-mask'); return i.complete && i.naturalWidth > 0"), 90)
    seen = d.execute_script("return window.seenStages")
    steps = [s for s in seen if s.startswith("diffusion: step ")]
    assert steps and all(s.endswith(" of 30") for s in steps), seen
    assert d.execute_script("return document.getElementById('progress').max") == 30

    notice = _by_id(d, "synthetic")
    assert notice.is_displayed() and "synthetic weights" in notice.text and "noise" in notice.text
    # the mask beside the result is the service's mask preview of the same request
    assert _by_id(d, "mask-figure").is_displayed() and _by_id(d, "result-image").is_displayed()
    data_url = d.execute_async_script(
        "const done = arguments[0]; fetch(document.getElementById('result-mask').src).then(r => r.blob())"
        ".then(b => { const f = new FileReader(); f.onload = () => done(f.result); f.readAsDataURL(b); });")
    shown = base64.b64decode(data_url.split(",", 1)[1])
    files = {n: (io.BytesIO(sample_files[n].read_bytes()), f"{n}.png") for n in ("person", "upper")}
    direct = app.test_client().post("/prompt", data={**files, "seed": "9", "preview": "mask"},
                                    content_type="multipart/form-data")
    assert direct.status_code == 200 and shown == direct.data
    assert not _by_id(d, "error").is_displayed()
    assert _csp_violations(d) == []


def test_page_and_docs_run_under_the_strict_policy_and_refuse_framing(browser, live, sample_files):
    _, url = live
    _csp_violations(browser)  # forget earlier messages
    d = _open_page(browser, url)  # the page's script ran: it built the form from /openapi.json
    _by_id(d, "input-person").send_keys(str(sample_files["person"]))  # a preview from an object URL
    _wait(d, lambda d: d.execute_script(
        "const i = document.querySelector('img'); return i && i.complete && i.naturalWidth > 0"))
    assert _csp_violations(d) == []
    # another site framing the page or the docs: Chromium refuses (frame-ancestors 'none')
    for path in ("/", "/docs/"):
        d.get("data:text/html,<iframe id=f src='%s%s'></iframe>" % (url, path))
        time.sleep(1.0)
        d.switch_to.frame(_by_id(d, "f"))
        assert d.execute_script("return document.getElementById('tryon') || document.getElementById('swagger-ui')") is None
        d.switch_to.default_content()
