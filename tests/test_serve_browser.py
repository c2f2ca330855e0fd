"""The web page of `tlearn serve` in Debian's headless Chromium: upload an image through the
page's file input, read the predicted label and the bars on screen, keep a screenshot."""

from __future__ import annotations

import httpx
import pytest

import tlearn
from browser import artifact_dir, broken_images, chromium
from serving import tlearn_serve
from tiny_run import CLASSES, train_tiny

pytest.importorskip("fastapi")


@pytest.mark.slow
def test_page_classifies_an_uploaded_image_and_docs_render_offline(tmp_path):
    from selenium.webdriver.common.by import By
    from selenium.webdriver.support.ui import WebDriverWait

    pytest.importorskip("onnxruntime")  # what the default engine serves
    run = train_tiny(tmp_path)
    image = run.parent / "images" / "dog" / "dog_002.png"
    want = tlearn.load(run).predict([str(image)], topk=3)[0]
    with tlearn_serve(run) as (url, _), chromium() as driver:  # the default engine: auto
        assert httpx.get(f"{url}/health").json()["engine"] == "onnxruntime"
        driver.get(f"{url}/")
        info = driver.find_element(By.ID, "model-info")
        WebDriverWait(driver, 30).until(lambda d: "3 classes" in info.text)
        assert "test_efficientnet" in info.text
        driver.find_element(By.ID, "file").send_keys(str(image))
        WebDriverWait(driver, 60).until(
            lambda d: len(d.find_elements(By.CSS_SELECTOR, "#bars .bar")) == len(CLASSES)
        )
        assert driver.find_element(By.ID, "top-label").text == want.labels[0]
        bars = driver.find_elements(By.CSS_SELECTOR, "#bars .bar")
        labels = [b.find_element(By.CLASS_NAME, "label").text for b in bars]
        shown = [float(b.find_element(By.CLASS_NAME, "probability").text.rstrip("%")) for b in bars]
        widths = [b.find_element(By.CLASS_NAME, "fill").size["width"] for b in bars]
        track = bars[0].find_element(By.CLASS_NAME, "track").size["width"]
        assert labels == want.labels
        for value, p, width in zip(shown, want.probabilities, widths, strict=True):
            assert abs(value - 100 * p) < 0.2  # the export against predict's inference
            assert abs(width - track * p) <= 3  # the bar is drawn to scale
        preview = driver.find_element(By.ID, "preview")
        assert (
            preview.is_displayed()
            and driver.execute_script("return arguments[0].naturalWidth", preview) == 20
        )
        assert broken_images(driver) == []
        driver.save_screenshot(str(artifact_dir() / "serve-page.png"))
        driver.get(f"{url}/docs")  # Swagger UI from the app's own assets, no CDN
        WebDriverWait(driver, 30).until(lambda d: d.find_elements(By.CSS_SELECTOR, ".opblock"))
        paths = [e.text for e in driver.find_elements(By.CSS_SELECTOR, ".opblock-summary-path")]
        assert "/predict" in paths
        driver.save_screenshot(str(artifact_dir() / "serve-docs.png"))
