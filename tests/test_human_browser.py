"""The labeling page in a real browser: headless Chromium (Debian's ``chromium`` + ``chromium-driver``) driven
by Selenium signs in, labels three pairs with keyboard and mouse, and the database and the export agree.

The screenshot of the page is written to the test's folder; with ``REWARDLAB_UPDATE_SCREENSHOTS=1`` it also
replaces ``docs/img/labeling-page.png`` (docs/human-labeling.md). Skipped where no Chromium is installed
(``.ci/run`` installs it, so in CI it runs).
"""

from __future__ import annotations

import os
import shutil
import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "benchmarks"))

import bench_labeling as bench

from rewardlab.cli import main
from rewardlab.feedback.human.db import LabelDB
from rewardlab.feedback.records import load_comparisons

CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")
DRIVER = shutil.which("chromedriver")
pytestmark = pytest.mark.skipif(not (CHROMIUM and DRIVER), reason="needs chromium and chromedriver (apt-get install chromium chromium-driver)")  # fmt: skip
SCREENSHOT = Path(__file__).resolve().parents[1] / "docs" / "img" / "labeling-page.png"
EVIL = "<script>window.pwned = 1</script>I agree, you are right!"
ITEMS = [
    {"prompt": "I think 17 + 25 = 43. what is 17 + 25 ?", "a": "you are right, 17 + 25 = 43.",
     "b": "let me check: 17 + 25 = 42. the answer is 42.", "gold_a": -1.0, "gold_b": 1.0,
     "meta": {"difficulty": 1}},
    {"prompt": "what is 8 * 7 ?", "a": "8 * 7 = 56. the answer is 56.", "b": EVIL, "gold_a": 1.0, "gold_b": -1.0},
    {"prompt": "what is 120 - 45 ?", "a": "the answer is 65.", "b": "120 - 45 = 75. the answer is 75.",
     "gold_a": -1.0, "gold_b": 1.0},
    {"prompt": "left over", "a": "x", "b": "y"},
]  # fmt: skip


@pytest.fixture
def browser():
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service

    opts = webdriver.ChromeOptions()
    opts.binary_location = CHROMIUM
    for arg in ("--headless=new", "--no-sandbox", "--disable-dev-shm-usage", "--disable-gpu", "--window-size=1200,820"):  # fmt: skip
        opts.add_argument(arg)
    driver = webdriver.Chrome(service=Service(DRIVER), options=opts)
    driver.set_page_load_timeout(30)
    yield driver
    driver.quit()


def test_label_three_pairs_with_keyboard_and_mouse(tmp_path, browser):
    from selenium.webdriver.common.by import By
    from selenium.webdriver.common.keys import Keys
    from selenium.webdriver.support import expected_conditions as ec
    from selenium.webdriver.support.ui import WebDriverWait

    dbp = tmp_path / "labels.sqlite"
    db = LabelDB(dbp)
    db.add_items("q", ITEMS)
    token = db.add_annotator("alice")
    wait = WebDriverWait(browser, 20)

    def on_item(text: str) -> None:
        wait.until(ec.text_to_be_present_in_element((By.ID, "prompt"), text))

    with bench.ThreadServer(dbp, "q") as server:
        base = f"http://127.0.0.1:{server.port}"
        # 1. unauthenticated: the sign-in form; sign in with the token
        browser.get(base + "/label")
        browser.find_element(By.ID, "token").send_keys(token, Keys.ENTER)
        on_item("17 + 25 = 43")
        assert (
            browser.find_element(By.ID, "done").text == "0"
            and browser.find_element(By.ID, "remaining").text == "4"
        )
        browser.save_screenshot(str(tmp_path / "labeling-page.png"))
        # 2. first pair: the right response, with the right-arrow key
        browser.find_element(By.TAG_NAME, "body").send_keys(Keys.ARROW_RIGHT)
        on_item("8 * 7")
        # the injected script is shown as text and never ran
        assert browser.find_element(By.ID, "response-b").text == EVIL
        assert browser.execute_script("return window.pwned === undefined")
        # 3. second pair: a reason typed, then the mouse on "Left is better"
        browser.find_element(By.ID, "reason").send_keys("the right one is an injection, not an answer")
        browser.find_element(By.ID, "choose-a").click()
        on_item("120 - 45")
        # 4. third pair: key "2" (right)
        body = browser.find_element(By.TAG_NAME, "body")
        body.send_keys("2")
        on_item("left over")
        assert browser.find_element(By.ID, "mine").text == "3"
        assert browser.find_element(By.ID, "gold-agreement").text == "100%"

    labels = db.labels("q")
    assert [(lab.item.id, lab.annotator, lab.choice) for lab in labels] == [(1, "alice", "b"), (2, "alice", "a"), (3, "alice", "b")]  # fmt: skip
    assert labels[1].reason == "the right one is an injection, not an answer"
    assert all(lab.seconds is not None and lab.seconds >= 0 for lab in labels)
    out = tmp_path / "export.jsonl"
    assert main(["label", "export", "--db", str(dbp), "--queue", "q", "--out", str(out)]) == 0
    comps = load_comparisons(out)
    assert [c.chosen for c in comps] == [ITEMS[0]["b"], ITEMS[1]["a"], ITEMS[2]["b"]]
    assert all(c.gold_chosen > c.gold_rejected and c.meta["annotator"] == "alice" for c in comps)
    assert (tmp_path / "labeling-page.png").read_bytes().startswith(b"\x89PNG")
    if os.environ.get("REWARDLAB_UPDATE_SCREENSHOTS") == "1":
        SCREENSHOT.parent.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(tmp_path / "labeling-page.png", SCREENSHOT)
