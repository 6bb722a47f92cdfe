"""The web page of deepselfie serve in real headless Chromium (driven by selenium): pick a photo,
read its score, see the best crop. Skips when Chromium, its driver or selenium is missing (CI
installs them: .ci/run)."""
import os
import shutil

import numpy as np
import pytest
from PIL import Image

from models.selfie.crop import CropSearch
from models.selfie.score import Scorer, load_bgr, write_scores
from deepselfie.serve.server import App, Reference, start_in_thread
from nets import bright_net, skimage_photos

BROWSER = next(filter(None, map(shutil.which, ("chromium", "chromium-browser",
                                                "google-chrome"))), None)
DRIVER = shutil.which("chromedriver")
if os.environ.get("DEEPSELFIE_REQUIRE_BROWSER") and not (BROWSER and DRIVER):
    raise RuntimeError("DEEPSELFIE_REQUIRE_BROWSER is set but chromium/chromedriver are missing")
webdriver = pytest.importorskip("selenium.webdriver", reason="selenium is not installed")
pytestmark = pytest.mark.skipif(not (BROWSER and DRIVER),
                                reason="no chromium and chromedriver on PATH")


@pytest.fixture
def page(tmp_path):
    from selenium.webdriver.chrome.service import Service
    deploy, weights = bright_net(tmp_path)
    scorer = Scorer(deploy, weights, mean="128,128,128")
    write_scores([("a.jpg", 0.1), ("b.jpg", 0.5), ("c.jpg", 0.9), ("d.jpg", 0.99)],
                 tmp_path / "scores.csv")
    app = App(scorer, Reference.load(tmp_path / "scores.csv"), CropSearch(seed=0))
    server, thread = start_in_thread(app, "127.0.0.1", 0)
    options = webdriver.ChromeOptions()
    options.binary_location = BROWSER
    for flag in ("--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking",
                 "--no-first-run", "--disable-dev-shm-usage", f"--user-data-dir={tmp_path / 'ud'}"):
        options.add_argument(flag)
    driver = webdriver.Chrome(options=options, service=Service(executable_path=DRIVER))
    driver.set_page_load_timeout(60)
    try:
        driver.get(server.url)
        yield driver, scorer
    finally:
        driver.quit()
        server.shutdown()
        server.server_close()
        thread.join(5)


def wait_for(driver, condition, timeout=60):
    from selenium.webdriver.support.ui import WebDriverWait
    return WebDriverWait(driver, timeout).until(lambda d: condition(d))


def test_upload_a_photo_see_its_score_and_best_crop(page, tmp_path):
    from selenium.webdriver.common.by import By
    driver, scorer = page
    assert "How good is your selfie" in driver.title
    photo = tmp_path / "astronaut.png"
    Image.fromarray(dict(skimage_photos())["astronaut"]).save(photo)
    expected = float(scorer.score_images([load_bgr(photo)])[0])

    driver.find_element(By.ID, "file").send_keys(str(photo))
    score = wait_for(driver, lambda d: d.find_element(By.ID, "score").text)
    assert score == f"{100 * expected:.1f}"
    assert "of the reference set" in driver.find_element(By.ID, "percentile").text
    # the crop image appears: a decoded picture, square like the net's input
    size = wait_for(driver, lambda d: d.execute_script(
        "const c = document.getElementById('crop');"
        "return c.complete && c.naturalWidth > 0 ? [c.naturalWidth, c.naturalHeight] : null;"))
    assert size[0] == size[1] > 16
    crop_score = float(driver.find_element(By.ID, "crop-score").text)
    assert crop_score >= float(score)
    assert driver.find_element(By.ID, "error").text == ""

    # a file that is not an image: the page says so, and the next photo still works
    notes = tmp_path / "notes.txt"
    notes.write_text("not a photo")
    driver.find_element(By.ID, "file").send_keys(str(notes))
    error = wait_for(driver, lambda d: d.find_element(By.ID, "error").text)
    assert "not an image" in error
    dark = tmp_path / "dark.jpg"
    Image.fromarray(np.full((64, 80, 3), 20, np.uint8)).save(dark)
    driver.find_element(By.ID, "file").send_keys(str(dark))
    low = wait_for(driver, lambda d: d.find_element(By.ID, "score").text)
    assert float(low) < float(score)
