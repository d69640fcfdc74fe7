"""The explorer end to end in a real headless browser (Debian's chromium and its driver, which
``make test`` installs): the page loads and shows its three pictures, a click on a visible patch of the
masked picture hides it and changes the reconstruction, the attention maps render."""

import shutil
import threading
import time

import pytest

webdriver = pytest.importorskip("selenium.webdriver")
uvicorn = pytest.importorskip("uvicorn")
from selenium.webdriver.common.action_chains import ActionChains  # noqa: E402
from selenium.webdriver.common.by import By  # noqa: E402
from selenium.webdriver.support.ui import WebDriverWait  # noqa: E402

from mimkit.explore.app import create_app, open_socket  # noqa: E402

CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")
DRIVER = shutil.which("chromedriver")
WAIT_S = 120  # a loaded 2-core CI machine


@pytest.fixture(scope="module")
def url(explorer):
    sock = open_socket("127.0.0.1", 0)
    server = uvicorn.Server(uvicorn.Config(create_app(explorer), log_config=None, log_level="warning"))
    thread = threading.Thread(target=server.run, kwargs={"sockets": [sock]}, daemon=True)
    thread.start()
    started = time.monotonic()
    while not server.started:  # uvicorn listens once its loop runs
        assert thread.is_alive() and time.monotonic() - started < WAIT_S, (
            "the explorer's server did not start"
        )
        time.sleep(0.05)
    yield f"http://127.0.0.1:{sock.getsockname()[1]}/"
    server.should_exit = True
    thread.join(timeout=30)
    sock.close()


@pytest.fixture(scope="module")
def browser():
    if CHROMIUM is None or DRIVER is None:
        pytest.skip(
            "chromium or chromedriver not found (make browser, or apt-get install chromium chromium-driver)"
        )
    options = webdriver.ChromeOptions()
    options.binary_location = CHROMIUM
    for flag in (
        "--headless=new",
        "--no-sandbox",
        "--disable-gpu",
        "--disable-dev-shm-usage",
        "--window-size=1200,900",
    ):
        options.add_argument(flag)
    driver = webdriver.Chrome(options=options, service=webdriver.ChromeService(executable_path=DRIVER))
    yield driver
    driver.quit()


def rendered(driver, element_id: str) -> bool:
    return driver.execute_script(
        "const img = document.getElementById(arguments[0]); return img.complete && img.naturalWidth > 0;",
        element_id,
    )


def test_page_click_and_attention(browser, url):
    browser.get(url)
    wait = WebDriverWait(browser, WAIT_S)
    wait.until(lambda d: d.execute_script("return document.body.dataset.ready === '1'"))
    for name in ("original", "masked", "reconstruction"):
        wait.until(lambda d, name=name: rendered(d, name))
    before = browser.find_element(By.ID, "reconstruction").get_attribute("src")
    mask = browser.execute_script("return state.mask")
    patch = mask.index(0)  # a visible patch: the click hides it
    row, col = divmod(patch, 7)
    cell = 224 / 7  # the 28 px picture fills the 224 px canvas
    canvas = browser.find_element(By.ID, "mask-grid")
    # offsets from the canvas' centre (Selenium 4), to the middle of the patch
    dx, dy = (col + 0.5) * cell - 112, (row + 0.5) * cell - 112
    ActionChains(browser).move_to_element_with_offset(canvas, int(dx), int(dy)).click().perform()
    wait.until(lambda d: d.find_element(By.ID, "reconstruction").get_attribute("src") != before)
    assert browser.execute_script("return state.mask")[patch] == 1
    assert sum(browser.execute_script("return state.mask")) == sum(mask) + 1
    wait.until(lambda d: len(d.find_elements(By.CSS_SELECTOR, "#attention-maps img")) == 3)
    maps = "return [...document.querySelectorAll('#attention-maps img')]"
    assert browser.execute_script(maps + ".every(i => i.complete && i.naturalWidth > 0)")
    assert len(browser.find_elements(By.CSS_SELECTOR, "#neighbours img")) == 8
    assert browser.find_element(By.ID, "error").text == ""
