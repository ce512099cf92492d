"""End to end: the demo page at `/` in headless Chromium (Debian's), against a real server process
serving the shipped MNIST model, behind an API key typed into the page.

Needs `apt-get install chromium chromium-driver` and `pip install selenium`; skipped, saying so,
only where Chromium or its driver is not installed. Screenshots are saved under the test's tmp
dir and copied to $GLORO_ARTIFACTS when it is set.
"""

from __future__ import annotations

import os
import shutil
from collections.abc import Callable, Iterator
from pathlib import Path

import httpx
import numpy as np
import pytest
from selenium import webdriver
from selenium.webdriver.chrome.service import Service
from selenium.webdriver.common.action_chains import ActionChains
from selenium.webdriver.common.actions.action_builder import ActionBuilder
from selenium.webdriver.common.actions.interaction import POINTER_TOUCH
from selenium.webdriver.common.actions.pointer_input import PointerInput
from selenium.common.exceptions import TimeoutException
from selenium.webdriver.common.by import By
from selenium.webdriver.common.keys import Keys
from selenium.webdriver.remote.webdriver import WebDriver
from selenium.webdriver.support.ui import WebDriverWait

from server_support import MNIST, ROOT, ServerProcess, load_idx, png_bytes

pytestmark = pytest.mark.e2e

REPOSITORY = ROOT / "server" / "model_repository"
MODEL = "mnist-2c2f"
CHROMIUM = Path("/usr/bin/chromium")
CHROMEDRIVER = Path("/usr/bin/chromedriver")
KEY = "demo-key-123"
EPS_RANGE = 6  # the page's slider goes to this many times the model's eps (demo.js)
WAIT_S = 15


def chromium_paths() -> tuple[str, str]:
    browser = shutil.which("chromium") or (str(CHROMIUM) if CHROMIUM.is_file() else None)
    driver = shutil.which("chromedriver") or (str(CHROMEDRIVER) if CHROMEDRIVER.is_file() else None)
    if browser is None or driver is None:
        pytest.skip("Chromium not installed: apt-get install chromium chromium-driver (no browser is downloaded)")
    return browser, driver


@pytest.fixture(scope="module")
def server() -> Iterator[ServerProcess]:
    if not (REPOSITORY / MODEL / "1" / "gloro.json").is_file():
        pytest.skip(f"the shipped model {MODEL} is not in {REPOSITORY} yet")
    args = ["--repository", str(REPOSITORY), "--default-model", MODEL, "--api-key", KEY, "--threads", "1"]
    with ServerProcess(args) as process:
        yield process


@pytest.fixture(scope="module")
def browser(tmp_path_factory: pytest.TempPathFactory) -> Iterator[WebDriver]:
    binary, driver_path = chromium_paths()
    profile = tmp_path_factory.mktemp("chromium-profile")
    options = webdriver.ChromeOptions()
    options.binary_location = binary
    for flag in ("--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
                 "--disable-background-networking", "--disable-component-update", "--disable-sync",
                 "--disable-dev-shm-usage", "--window-size=1100,900", f"--user-data-dir={profile}"):
        options.add_argument(flag)
    # An explicit driver path: selenium-manager is never asked to find or download anything.
    service = Service(executable_path=driver_path, log_output=str(profile / "chromedriver.log"))
    driver = webdriver.Chrome(service=service, options=options)
    try:
        yield driver
    finally:
        driver.quit()


@pytest.fixture(scope="module")
def mnist() -> tuple[np.ndarray, np.ndarray]:
    return load_idx(MNIST / "t10k-images-idx3-ubyte.gz")[:100], load_idx(MNIST / "t10k-labels-idx1-ubyte.gz")[:100]


def save_screenshot(driver: WebDriver, directory: Path, name: str) -> Path:
    path = directory / name
    assert driver.save_screenshot(str(path)), "no screenshot"
    assert path.stat().st_size > 10_000  # a rendered page, not an empty image
    if os.environ.get("GLORO_ARTIFACTS"):
        artifacts = Path(os.environ["GLORO_ARTIFACTS"])
        artifacts.mkdir(parents=True, exist_ok=True)
        shutil.copy(path, artifacts / name)
    return path


def wait(driver: WebDriver, condition: Callable[[WebDriver], object], message: str) -> object:
    try:
        return WebDriverWait(driver, WAIT_S, poll_frequency=0.05).until(condition)
    except TimeoutException:
        status = driver.find_element(By.ID, "status").text
        raise AssertionError(f"{message}; the page's status line says: {status!r}") from None


def text(driver: WebDriver, element_id: str) -> str:
    return driver.find_element(By.ID, element_id).text


def badge(driver: WebDriver) -> str:
    return driver.find_element(By.ID, "badge").get_attribute("data-state") or ""


def open_page(driver: WebDriver, server: ServerProcess) -> None:
    """Load `/`, type the API key, wait for the model list."""
    driver.get(server.url + "/")
    driver.find_element(By.ID, "api-key").send_keys(KEY, Keys.TAB)  # 'change' re-lists the models
    wait(driver, lambda d: d.find_elements(By.CSS_SELECTOR, f"#model option[value='{MODEL}']"), "no model listed")


def api_predict(server: ServerProcess, png: bytes, **params: object) -> dict:
    r = httpx.post(f"{server.url}/v1/models/{MODEL}/predict", params=params, content=png,
                   headers={"Content-Type": "image/png", "X-API-Key": KEY}, timeout=10)
    assert r.status_code == 200, r.text
    return r.json()["predictions"][0]


def test_api_key_field_is_sent_as_x_api_key(browser: WebDriver, server: ServerProcess) -> None:
    browser.get(server.url + "/")
    wait(browser, lambda d: "API key" in text(d, "status"), "no API key error without a key")
    assert browser.find_elements(By.CSS_SELECTOR, "#model option") == []
    browser.find_element(By.ID, "api-key").send_keys(KEY, Keys.TAB)
    wait(browser, lambda d: d.find_elements(By.CSS_SELECTOR, "#model option"), "models not listed with the key")
    model = httpx.get(f"{server.url}/v1/models/{MODEL}", headers={"X-API-Key": KEY}).json()
    slider = browser.find_element(By.ID, "eps")
    assert float(slider.get_attribute("value")) == pytest.approx(model["epsilon"])
    assert float(slider.get_attribute("min")) == 0
    assert float(slider.get_attribute("max")) == pytest.approx(EPS_RANGE * model["epsilon"])
    links = {a.text: a.get_attribute("href") for a in browser.find_elements(By.CSS_SELECTOR, "nav a")}
    assert links == {"API docs": server.url + "/docs", "Metrics": server.url + "/metrics"}
    for href in links.values():
        assert httpx.get(href).status_code == 200


def test_uploaded_mnist_digit_is_certified_and_abstains_above_its_radius(
    browser: WebDriver, server: ServerProcess, mnist: tuple[np.ndarray, np.ndarray], tmp_path: Path
) -> None:
    images, labels = mnist
    model = httpx.get(f"{server.url}/v1/models/{MODEL}", headers={"X-API-Key": KEY}).json()
    eps = model["epsilon"]
    # The first test digit the model gets right and certifies with a radius the slider can pass.
    for image, label in zip(images, labels):
        truth = api_predict(server, png_bytes(image), return_logits="true")
        if truth["label"] == label and eps < truth["radius"] < EPS_RANGE * eps * 0.95:
            break
    else:
        pytest.fail(f"none of {len(images)} MNIST test digits is certified with a radius in ({eps}, {EPS_RANGE * eps})")
    upload = tmp_path / f"mnist-{int(label)}.png"
    upload.write_bytes(png_bytes(image))

    open_page(browser, server)
    browser.find_element(By.ID, "file").send_keys(str(upload))
    wait(browser, lambda d: badge(d) == "certified", "the uploaded digit is not shown certified")
    assert text(browser, "class") == str(label)
    assert "Certified" in text(browser, "badge")
    assert text(browser, "radius") == f"{truth['radius']:.3f}"
    assert text(browser, "eps-shown") == f"{eps:.3f}"
    rows = browser.find_elements(By.CSS_SELECTOR, "#logits tbody tr")
    assert len(rows) == len(model["classes"])
    logits = [float(r.find_elements(By.TAG_NAME, "td")[1].text) for r in rows]
    assert np.allclose(logits, truth["logits"], atol=0.006)
    top = browser.find_element(By.CSS_SELECTOR, "#logits tr.top td").text
    assert top == str(label)
    fill = browser.find_element(By.ID, "radius-fill").value_of_css_property("width")
    bar = browser.find_element(By.ID, "radius-bar").size["width"]
    assert float(fill.removesuffix("px")) == pytest.approx(bar * truth["radius"] / (EPS_RANGE * eps), abs=3)
    save_screenshot(browser, tmp_path, "demo-certified.png")

    # Push eps to the slider's top, past the radius: the page asks again and the model abstains.
    browser.find_element(By.ID, "eps").send_keys(Keys.END)
    wait(browser, lambda d: badge(d) == "abstain", "raising eps above the radius did not turn the badge to abstain")
    assert text(browser, "eps-shown") == f"{EPS_RANGE * eps:.3f}"
    assert text(browser, "class") == str(label)  # the same class, no longer certified
    assert "Abstain" in text(browser, "badge")
    assert "abstain" in browser.find_element(By.ID, "radius-bar").get_attribute("class")
    save_screenshot(browser, tmp_path, "demo-abstain.png")

    # and back down to eps 0: certified again
    browser.find_element(By.ID, "eps").send_keys(Keys.HOME)
    wait(browser, lambda d: badge(d) == "certified", "eps 0 is not certified")


def draw_one(browser: WebDriver, touch: bool) -> None:
    """A vertical stroke down the middle of the pad, like a '1', with the mouse or a finger."""
    pad = browser.find_element(By.ID, "pad")
    height = pad.size["height"]
    steps = [(0, round(height * 0.07))] * 10
    if touch:
        finger = PointerInput(POINTER_TOUCH, "finger")
        actions = ActionBuilder(browser, mouse=finger)
        actions.pointer_action.move_to(pad, 0, -round(height * 0.35)).pointer_down()
        for dx, dy in steps:
            actions.pointer_action.move_by(dx, dy)
        actions.pointer_action.pointer_up()
        actions.perform()
    else:
        chain = ActionChains(browser).move_to_element_with_offset(pad, 0, -round(height * 0.35)).click_and_hold()
        for dx, dy in steps:
            chain.move_by_offset(dx, dy)
        chain.release().perform()


@pytest.mark.parametrize("touch", [False, True], ids=["mouse", "touch"])
def test_drawn_stroke_is_sent_at_the_model_size_and_read_as_a_one(
    browser: WebDriver, server: ServerProcess, touch: bool, tmp_path: Path
) -> None:
    open_page(browser, server)
    browser.execute_script(
        "window.pointerTypes = [];"
        "document.getElementById('pad').addEventListener('pointerdown', e => pointerTypes.push(e.pointerType));"
    )
    draw_one(browser, touch)
    assert browser.execute_script("return pointerTypes;") == ["touch" if touch else "mouse"]
    # The server refuses any other size (422), so an answer means the page sent exactly 28x28.
    wait(browser, lambda d: badge(d) in ("certified", "abstain"), "no prediction for the drawn stroke")
    assert text(browser, "class") == "1"
    seen = browser.execute_script(
        "const c = document.getElementById('seen');"
        "return [c.width, c.height, Array.from(c.getContext('2d').getImageData(0, 0, c.width, c.height).data)"
        ".filter((v, i) => i % 4 === 0 && v > 0).length];"
    )
    width, height, lit = seen
    assert (width, height) == (28, 28)
    assert 20 <= lit <= 150  # a thin vertical line, framed like MNIST, not an empty or full image
    save_screenshot(browser, tmp_path, f"demo-drawn-{'touch' if touch else 'mouse'}.png")

    browser.find_element(By.ID, "clear").click()
    assert not browser.find_element(By.ID, "answer").is_displayed()
