"""The draw-a-digit page in a real headless Chromium (Debian's chromium + chromium-driver, driven
by Selenium): draw digits with mouse, touch and pen strokes, read the prediction and the bars,
upload files.

Screenshots go to test-artifacts/ at the repository root. The test skips only when Chromium or
its driver is genuinely missing on a developer's machine; under CI (env CI set) that is a
failure, because .ci/run installs both.
"""
from __future__ import annotations

import math
import os
import re
import shutil
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from serve_process import ServerProcess

ARTIFACTS = Path(__file__).resolve().parents[1] / "test-artifacts"
# Flags for a machine that reaches nothing but package registries: no sandbox (root in a
# container), no GPU, and none of the background traffic Chromium starts on its own.
CHROMIUM_FLAGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
                  "--disable-background-networking", "--disable-component-update", "--disable-sync",
                  "--disable-dev-shm-usage", "--window-size=1000,760"]

pytestmark = pytest.mark.slow   # trains on real MNIST (the shared 1-epoch run)


def need(condition: bool, why: str) -> None:
    if not condition:
        if os.environ.get("CI"):
            pytest.fail(f"{why}; CI must provide it (.ci/run installs chromium and chromium-driver)")
        pytest.skip(why)


@pytest.fixture(scope="session")
def chromium() -> tuple[str, str]:
    """(browser, driver) paths. Session-scoped so that, named first, it is checked before the
    session's real-MNIST training starts: a machine without Chromium skips at once."""
    browser_path, driver_path = shutil.which("chromium"), shutil.which("chromedriver")
    need(bool(browser_path and driver_path), "Debian's chromium and chromium-driver are not installed "
                                             "(apt-get install chromium chromium-driver)")
    try:
        import selenium  # noqa: F401
    except ImportError:
        need(False, "selenium is not installed (pip install -r requirements.txt)")
    return browser_path, driver_path


@pytest.fixture(scope="module")
def browser(chromium, tmp_path_factory):
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service

    browser_path, driver_path = chromium
    options = webdriver.ChromeOptions()
    options.binary_location = browser_path    # with both paths given, selenium-manager downloads nothing
    for flag in CHROMIUM_FLAGS:
        options.add_argument(flag)
    options.add_argument(f"--user-data-dir={tmp_path_factory.mktemp('chromium-profile')}")
    driver = webdriver.Chrome(service=Service(executable_path=driver_path), options=options)
    driver.set_page_load_timeout(30)
    yield driver
    driver.quit()


@pytest.fixture(scope="module")
def page_url(trained_mnist_run, tmp_path_factory):
    with ServerProcess(trained_mnist_run, log=tmp_path_factory.mktemp("serve") / "serve.log") as srv:
        yield srv.url


# Strokes in canvas pixels (the canvas is 280x280), drawn as a person would.
SEVEN = [[(75, 60), (205, 60), (175, 120), (140, 185), (115, 240)]]
ZERO = [[(140 + 62 * math.sin(t / 24 * 2 * math.pi), 140 - 95 * math.cos(t / 24 * 2 * math.pi))
         for t in range(26)]]


def draw(driver, strokes: list[list[tuple[float, float]]], before_release=None) -> None:
    """Mouse strokes; `before_release(driver)` runs while the button is still down on the last one."""
    from selenium.webdriver.common.action_chains import ActionChains

    pad = driver.find_element("id", "pad")
    scale = pad.size["width"] / 280                      # CSS pixels per canvas pixel
    centre = 140

    def offset(p):  # selenium offsets are from the element's centre, in CSS pixels
        return round((p[0] - centre) * scale), round((p[1] - centre) * scale)

    for i, points in enumerate(strokes):
        chain = ActionChains(driver, duration=20).move_to_element_with_offset(pad, *offset(points[0])).click_and_hold()
        for p in points[1:]:
            chain.move_to_element_with_offset(pad, *offset(p))
        if before_release and i == len(strokes) - 1:
            chain.perform()
            before_release(driver)
            chain = ActionChains(driver)
        chain.release().perform()


def swipe(driver, points: list[tuple[float, float]], kind: str) -> None:
    """One stroke with a finger ("touch") or a stylus ("pen"): pointer events of that type."""
    from selenium.webdriver.common.actions import interaction
    from selenium.webdriver.common.actions.action_builder import ActionBuilder
    from selenium.webdriver.common.actions.pointer_input import PointerInput

    pad = driver.find_element("id", "pad")
    scale = pad.size["width"] / 280
    pointer = PointerInput(interaction.POINTER_TOUCH if kind == "touch" else interaction.POINTER_PEN, kind)
    actions = ActionBuilder(driver, mouse=pointer, duration=20)
    for i, (x, y) in enumerate(points):
        actions.pointer_action.move_to(pad, round((x - 140) * scale), round((y - 140) * scale))
        if i == 0:
            actions.pointer_action.pointer_down()
    actions.pointer_action.pointer_up()
    actions.perform()


def results(driver, since: dict | None = None) -> dict:
    """Wait until the page is idle (and has shown a new answer since `since`), then read it."""
    from selenium.webdriver.support.ui import WebDriverWait

    def ready(d) -> bool:
        state, answers = d.execute_script("return [document.body.dataset.state, document.body.dataset.answers]")
        return state == "idle" and (since is None or int(answers or 0) > since["answers"])

    WebDriverWait(driver, 20).until(ready)
    return driver.execute_script("""
        const bars = [...document.querySelectorAll('#bars li')];
        const seen = document.getElementById('seen');
        return {
          prediction: document.getElementById('prediction').textContent,
          confidence: document.getElementById('confidence').textContent,
          message: document.getElementById('message').textContent,
          messageIsError: document.getElementById('message').classList.contains('error'),
          names: bars.map(li => li.querySelector('.name').textContent),
          shown: bars.map(li => li.querySelector('.pct').textContent),
          widths: bars.map(li => li.querySelector('.fill').style.width),
          probabilities: bars.map(li => Number(li.dataset.probability)),
          top: bars.findIndex(li => li.classList.contains('top')),
          seen: [seen.naturalWidth, seen.naturalHeight],
          answers: Number(document.body.dataset.answers || 0),
        };""")


def check_prediction(r: dict, digit: str) -> None:
    assert r["prediction"] == digit, r
    assert r["names"] == [str(i) for i in range(10)] and r["top"] == int(digit)
    shown = [float(re.fullmatch(r"(\d+\.\d)%", s).group(1)) for s in r["shown"]]
    assert abs(sum(shown) - 100) <= 0.5 + 1e-9        # ten values each rounded to 0.1%
    assert abs(sum(r["probabilities"]) - 1) < 1e-4
    assert max(shown) == shown[int(digit)] and shown[int(digit)] > 50
    assert r["seen"] == [28, 28] and not r["messageIsError"]


def test_draw_digits_and_upload_in_chromium(chromium, browser, page_url, real_mnist_cache, tmp_path):
    ARTIFACTS.mkdir(exist_ok=True)
    browser.get(page_url)
    first = results(browser)
    assert browser.title == "Draw a digit · mnist-cnn" and first["prediction"] == "–"
    assert first["message"] == "Draw a digit in the box." and len(first["names"]) == 10

    live = []
    draw(browser, SEVEN, before_release=lambda d: live.append(results(d, since=first)))
    assert live[0]["prediction"] == "7"               # answered while the mouse button is still down
    seven = results(browser)
    browser.save_screenshot(str(ARTIFACTS / "serve-drawn-7.png"))
    check_prediction(seven, "7")

    browser.find_element("id", "clear").click()
    cleared = results(browser)
    assert cleared["prediction"] == "–" and cleared["message"] == "Draw a digit in the box."

    draw(browser, ZERO)
    zero = results(browser, since=cleared)
    browser.save_screenshot(str(ARTIFACTS / "serve-drawn-0.png"))
    check_prediction(zero, "0")

    # Upload: a real MNIST test digit, printed dark on white at 10x the size, as a photo would be.
    from mnist_cnn.data.idx import read_idx
    images = read_idx(next(real_mnist_cache.rglob("t10k-images*")))
    labels = read_idx(next(real_mnist_cache.rglob("t10k-labels*")))
    index = int(np.flatnonzero(labels == 4)[0])
    photo = Image.fromarray(255 - images[index]).resize((280, 280), Image.Resampling.BICUBIC)
    photo.save(tmp_path / "four.png")
    browser.find_element("id", "upload").send_keys(str(tmp_path / "four.png"))
    four = results(browser, since=zero)
    browser.save_screenshot(str(ARTIFACTS / "serve-uploaded-4.png"))
    check_prediction(four, "4")

    (tmp_path / "notes.txt").write_text("not a picture")
    browser.find_element("id", "upload").send_keys(str(tmp_path / "notes.txt"))
    refused = results(browser, since=four)
    browser.save_screenshot(str(ARTIFACTS / "serve-refused-upload.png"))
    assert refused["messageIsError"] and refused["message"].startswith("That file could not be read as an image.")
    assert refused["prediction"] == "–" and refused["top"] == -1 and set(refused["shown"]) == {"–"}

    # A finger and a stylus draw too (pointer events of type touch and pen).
    swipe(browser, [(140, 40), (142, 90), (144, 140), (146, 190), (148, 240)], "touch")
    one = results(browser, since=refused)
    check_prediction(one, "1")
    browser.find_element("id", "clear").click()
    swipe(browser, SEVEN[0], "pen")
    check_prediction(results(browser, since=one), "7")

    logs = [e for e in browser.get_log("browser") if e["level"] == "SEVERE" and "api/predict" not in e["message"]]
    assert logs == []                                  # no script errors (the refused upload's 422 aside)
