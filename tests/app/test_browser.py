"""The app in a real headless Chromium: upload an image, ask, get a mask overlay; rank videos for a sentence.

Needs Debian's `chromium` and `chromium-driver` (`apt-get install -y chromium chromium-driver`) and the
`selenium` Python package (the workspace's dev extra); skipped with the reason when one is missing.
Nothing is installed or downloaded at run time.

PixelLM model: the checkpoint `make demo-pixellm` wrote (demo_outputs/pixellm/checkpoints/last.ckpt in the
repository, or the file named by VISLANG_APP_TEST_PIXELLM_CKPT) when present; otherwise the test trains
the demo config briefly (300 scenes, 4 epochs, a few minutes on 2 cores) so that the answer carries real
segmentation tokens. VLAB: `make demo-vlab`'s checkpoint (or VISLANG_APP_TEST_VLAB_CKPT) when present, else an untrained tiny VLAB (the
test checks the page shows the ranking, not its quality). VISLANG_APP_SCREENSHOT_DIR=<dir> keeps the
screenshots (packages/app/docs/ holds the committed ones).
"""

from __future__ import annotations

import os
import re
import signal
import socket
import subprocess
import sys
import time
import urllib.request
from io import BytesIO
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from vislang.pixellm.callbacks import PALETTE
from vislang.shared.data.synthetic import SyntheticWorld
from vislang.shared.text import SYNTHETIC_TOKENIZER_DIR

pytestmark = pytest.mark.slow

REPO = Path(__file__).resolve().parents[2]
CHROMIUM, CHROMEDRIVER = Path("/usr/bin/chromium"), Path("/usr/bin/chromedriver")
CHROMIUM_FLAGS = [
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--window-size=1200,1000",
]
WAIT_SECONDS = 300


def _browser_or_skip():  # noqa: ANN202 (selenium's module)
    if not CHROMIUM.is_file() or not CHROMEDRIVER.is_file():
        pytest.skip(
            f"no system browser: {CHROMIUM} / {CHROMEDRIVER} missing (apt-get install -y chromium chromium-driver)"
        )
    return pytest.importorskip("selenium.webdriver", reason="selenium is not installed (pip install -e '.[dev]')")


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture(scope="module")
def pixellm_ckpt(tmp_path_factory) -> Path:
    demo = Path(os.environ.get("VISLANG_APP_TEST_PIXELLM_CKPT", REPO / "demo_outputs/pixellm/checkpoints/last.ckpt"))
    if demo.is_file():
        return demo
    from vislang.shared.cli import build_cli

    tmp = tmp_path_factory.mktemp("pixellm_train")
    checkpoint = '[{"class_path": "lightning.pytorch.callbacks.ModelCheckpoint", "init_args": {"dirpath": "%s", "save_last": true}}]'
    argv, sys.argv = sys.argv, ["lightning"]
    try:
        build_cli(
            [
                "fit",
                "-c",
                str(REPO / "packages/pixellm/configs/demo.yaml"),
                f"--data.init_args.muse_root={tmp / 'muse'}",
                "--data.init_args.synthetic_images=300",
                "--data.init_args.num_workers=0",
                "--trainer.max_epochs=4",
                "--trainer.limit_val_batches=0",
                "--model.init_args.evaluate_before_training=false",
                f"--model.init_args.tokenizer={SYNTHETIC_TOKENIZER_DIR}",
                f"--trainer.default_root_dir={tmp}",
                "--trainer.logger=false",
                "--trainer.enable_progress_bar=false",
                f"--trainer.callbacks={checkpoint % (tmp / 'checkpoints')}",
            ]
        )
    finally:
        sys.argv = argv
    return tmp / "checkpoints" / "last.ckpt"


@pytest.fixture(scope="module")
def served_vlab_ckpt(vlab_ckpt: Path) -> Path:
    """The demo's VLAB when present, else the untrained tiny one of conftest.py."""
    demo = Path(os.environ.get("VISLANG_APP_TEST_VLAB_CKPT", REPO / "demo_outputs/vlab/checkpoints/last.ckpt"))
    return demo if demo.is_file() else vlab_ckpt


@pytest.fixture(scope="module")
def inputs(tmp_path_factory) -> dict[str, object]:
    """A held-out synthetic scene with a multi-target question, a not-an-image file, a folder of videos."""
    from vislang.shared.data.synthetic.writers import write_msrvtt

    root = tmp_path_factory.mktemp("inputs")
    world = SyntheticWorld(seed=0, image_size=64)
    index = next(i for i in range(5000, 5100) if len(world.reasoning_questions(i)[0].target_indices) >= 2)
    question = world.reasoning_questions(index)[0]
    Image.fromarray(world.scene(index).image).save(root / "scene.png")
    (root / "notes.txt").write_text("this is not an image\n")
    write_msrvtt(SyntheticWorld(seed=1, image_size=32, num_videos=6, num_frames=8), root / "msrvtt", 6)
    (root / "msrvtt" / "videos" / "broken.mp4").write_bytes(b"\x00\x00\x00\x18ftypmp42 not a video")
    return {
        "image": root / "scene.png",
        "question": question.question,
        "text_file": root / "notes.txt",
        "videos": root / "msrvtt" / "videos",
    }


@pytest.fixture(scope="module")
def app(pixellm_ckpt: Path, served_vlab_ckpt: Path, inputs: dict[str, object], tmp_path_factory):
    """`python -m vislang.app` on a free port of 127.0.0.1, run from an empty folder; stopped with SIGTERM."""
    cwd = tmp_path_factory.mktemp("app_cwd")
    port = _free_port()
    env = {**os.environ, "OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1", "PYTHONUNBUFFERED": "1"}
    log_path = cwd.parent / "app.log"
    log = open(log_path, "w")  # noqa: SIM115 (the app's stdout; the test reads the file by its path)
    process = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "vislang.app",
            "--pixellm-ckpt",
            str(pixellm_ckpt),
            "--vlab-ckpt",
            str(served_vlab_ckpt),
            "--vlab-videos",
            str(inputs["videos"]),
            "--port",
            str(port),
            "--threads",
            "1",
            "--demo-root",
            str(cwd),
            "--max-upload-mb",
            "1",
        ],
        cwd=cwd,
        env=env,
        stdout=log,
        stderr=subprocess.STDOUT,
    )
    url = f"http://127.0.0.1:{port}/"
    deadline = time.time() + 120
    while time.time() < deadline:
        try:
            urllib.request.urlopen(url, timeout=2).read()
            break
        except OSError:
            if process.poll() is not None:
                break
            time.sleep(1)
    else:
        process.kill()
    log.close()  # the child keeps its own descriptor
    if process.poll() is not None:
        pytest.fail(f"the app did not start:\n{log_path.read_text()[-3000:]}")
    info = {"url": url, "port": port, "cwd": cwd, "process": process, "log": log_path}
    yield info
    if process.poll() is None:
        process.send_signal(signal.SIGTERM)
        process.wait(timeout=30)


@pytest.fixture(scope="module")
def browser(tmp_path_factory):
    webdriver = _browser_or_skip()
    from selenium.webdriver.chrome.service import Service

    options = webdriver.ChromeOptions()
    options.binary_location = str(CHROMIUM)
    for flag in [*CHROMIUM_FLAGS, f"--user-data-dir={tmp_path_factory.mktemp('chromium_profile')}"]:
        options.add_argument(flag)
    driver = webdriver.Chrome(service=Service(str(CHROMEDRIVER)), options=options)
    yield driver
    driver.quit()


def _wait(driver, condition, what: str, timeout: float = WAIT_SECONDS):  # noqa: ANN001, ANN202
    from selenium.common.exceptions import TimeoutException
    from selenium.webdriver.support.ui import WebDriverWait

    try:
        return WebDriverWait(driver, timeout, poll_frequency=0.5).until(lambda d: condition(d) or None)
    except TimeoutException:
        pytest.fail(f"timed out after {timeout} s waiting for {what}")


def _css(driver, selector: str):  # noqa: ANN001, ANN202
    from selenium.webdriver.common.by import By

    return driver.find_elements(By.CSS_SELECTOR, selector)


def _upload(driver, box: str, path: Path) -> None:  # noqa: ANN001
    _css(driver, f"#{box} input[type=file]")[0].send_keys(str(path))
    _wait(driver, lambda d: _css(d, f'#{box} td.filename[aria-label="{path.name}"]'), f"{path.name} in #{box}", 60)


def _clear(driver, box: str) -> None:  # noqa: ANN001
    for button in _css(driver, f"#{box} button"):
        if "clear" in (button.get_attribute("aria-label") or button.get_attribute("title") or "").lower():
            button.click()
    _wait(driver, lambda d: _css(d, f"#{box} input[type=file]"), f"#{box} to be empty", 30)


def _type(driver, box: str, text: str) -> None:  # noqa: ANN001
    field = _css(driver, f"#{box} textarea, #{box} input")[0]
    field.clear()
    field.send_keys(text)


def _status(driver, box: str, after: str | None = None) -> str:  # noqa: ANN001
    """The status line once a handler has answered (and no longer shows `after`, the previous answer)."""

    def answered(d):  # noqa: ANN001, ANN202
        text = d.find_element("css selector", f"#{box}").text
        done = text.startswith(("Done", "Cannot do that")) and (after is None or after not in text)
        return text if done else None

    return _wait(driver, answered, f"an answer in #{box}")


def _keep(driver, name: str) -> None:  # noqa: ANN001
    folder = os.environ.get("VISLANG_APP_SCREENSHOT_DIR")
    if folder:
        Path(folder).mkdir(parents=True, exist_ok=True)
        driver.save_screenshot(str(Path(folder) / name))


def _fetch_image(src: str) -> np.ndarray:
    with urllib.request.urlopen(src, timeout=10) as response:
        return np.asarray(Image.open(BytesIO(response.read())).convert("RGB")).astype(float)


def test_pixellm_tab_in_chromium(app, browser, inputs) -> None:
    browser.get(app["url"])
    _wait(browser, lambda d: _css(d, "#pixellm-run"), "the page")
    # bad input first: a text file, answered in the page
    _upload(browser, "pixellm-image", inputs["text_file"])
    _type(browser, "pixellm-question", inputs["question"])
    _css(browser, "#pixellm-run")[0].click()
    assert "notes.txt: not an image Pillow can read" in _status(browser, "pixellm-status")
    # then the scene and its multi-target question
    _clear(browser, "pixellm-image")
    _upload(browser, "pixellm-image", inputs["image"])
    _css(browser, "#pixellm-run")[0].click()
    status = _status(browser, "pixellm-status", after="not an image")
    assert status.startswith("Done"), status
    rows = _css(browser, "#pixellm-legend li.legend-row")
    assert rows, f"no mask in the answer: {browser.find_element('css selector', '#pixellm-answer').text}"
    overlay_src = _wait(
        browser,
        lambda d: [e.get_attribute("src") for e in _css(d, "#pixellm-overlay img") if e.get_attribute("src")],
        "the overlay image",
    )[0]
    overlay = _fetch_image(overlay_src)
    original = np.asarray(Image.open(inputs["image"]).convert("RGB")).astype(float)
    factor = overlay.shape[0] // original.shape[0]  # small images are shown enlarged by whole pixels
    original = np.repeat(np.repeat(original, factor, 0), factor, 1)
    assert factor >= 1 and overlay.shape == original.shape
    # the overlay holds legend colours only: masks blended (alpha 0.5) and edged in their pure colour, painted
    # in legend order, so a later mask may cover an earlier one; the last non-empty mask is never covered
    colours = [np.asarray(PALETTE[k], dtype=float) for k in range(len(rows))]
    changed = np.abs(overlay - original).max(axis=-1) > 1.0
    assert changed.any(), "the overlay shows no mask"
    # a pixel blended with colour c is 0.5 x + 0.5 c for some x in [0, 255]: 2 v - c lies in [0, 255]
    explained = np.zeros_like(changed)
    for colour in colours:
        explained |= ((2 * overlay - colour >= -2) & (2 * overlay - colour <= 257)).all(axis=-1)
    assert explained[changed].all(), "the overlay has colours that are not in the legend"
    areas = [float(re.search(r"([\d.]+)% of the image", row.text).group(1)) for row in rows]
    last = max((k for k, area in enumerate(areas) if area > 0), default=None)
    assert last is not None, f"every mask is empty: {[row.text for row in rows]}"
    assert (overlay == colours[last]).all(axis=-1).any(), f"mask {last + 1}'s edge is not drawn in its legend colour"
    for k, row in enumerate(rows):
        assert row.text.startswith(f"mask {k + 1}:"), row.text
    answer = browser.find_element("css selector", "#pixellm-answer").text
    assert "[mask 1]" in answer
    browser.execute_script("window.scrollTo(0, 0)")
    _keep(browser, "pixellm.png")
    hosts = browser.execute_script("return performance.getEntriesByType('resource').map(e => new URL(e.name).host)")
    assert set(hosts) <= {f"127.0.0.1:{app['port']}"}, f"the page fetched from elsewhere: {sorted(set(hosts))}"


def test_vlab_tab_in_chromium(app, browser, inputs) -> None:
    from selenium.webdriver.common.by import By

    browser.get(app["url"])
    tab = _wait(
        browser,
        lambda d: [b for b in d.find_elements(By.CSS_SELECTOR, "button[role=tab]") if b.text == "VLAB"],
        "the VLAB tab",
    )[0]
    tab.click()
    _type(browser, "vlab-sentence", "a red circle moves to the left")
    _css(browser, "#vlab-run")[0].click()
    status = _status(browser, "vlab-status")
    thumbnails = _css(browser, "#vlab-gallery img")
    table = browser.find_element(By.CSS_SELECTOR, "#vlab-table").text
    assert len(thumbnails) == 6, table
    assert "broken.mp4" in status and "cannot be decoded" in status
    scores = [float(line.split()[-1]) for line in table.splitlines() if line.split() and line.split()[0].isdigit()]
    assert len(scores) == 6 and scores == sorted(scores, reverse=True)
    # a question about the best-ranked video (picked in the dropdown), then an empty question
    _type(browser, "vlab-question", "what color is the circle?")
    _css(browser, "#vlab-describe")[0].click()
    assert _status(browser, "vlab-status", after="skipped").startswith("Done")
    browser.execute_script("window.scrollTo(0, 0)")
    _keep(browser, "vlab.png")
    _type(browser, "vlab-question", " ")
    _css(browser, "#vlab-describe")[0].click()
    assert "empty question" in _status(browser, "vlab-status", after="Done")


def test_uploads_over_the_limit_are_refused(app, browser, tmp_path: Path) -> None:
    """The app runs with --max-upload-mb 1: the page refuses a 2 MB file, and so does the server itself."""
    import urllib.error

    from selenium.webdriver.common.by import By

    big = tmp_path / "big.png"
    big.write_bytes(np.random.default_rng(0).integers(0, 256, 2 * 1024 * 1024, dtype=np.uint8).tobytes())
    browser.get(app["url"])
    _wait(browser, lambda d: _css(d, "#pixellm-image input[type=file]"), "the page")
    _css(browser, "#pixellm-image input[type=file]")[0].send_keys(str(big))
    toast = _wait(
        browser,
        lambda d: [
            e.text for e in d.find_elements(By.CSS_SELECTOR, "[data-testid='toast-body']") if "exceed" in e.text
        ],
        "the size error",
    )[0]
    assert "maximum allowed size of 1.0 Mb" in toast and "big.png" in toast
    assert not _css(browser, '#pixellm-image td.filename[aria-label="big.png"]')
    boundary = "vislang-test-boundary"
    body = (
        (
            f'--{boundary}\r\nContent-Disposition: form-data; name="files"; filename="big.png"\r\n'
            "Content-Type: application/octet-stream\r\n\r\n"
        ).encode()
        + big.read_bytes()
        + f"\r\n--{boundary}--\r\n".encode()
    )
    request = urllib.request.Request(
        f"{app['url']}gradio_api/upload",
        data=body,
        headers={"Content-Type": f"multipart/form-data; boundary={boundary}"},
    )
    with pytest.raises(urllib.error.HTTPError) as refused:
        urllib.request.urlopen(request, timeout=30)
    assert refused.value.code == 413


def test_app_wrote_nothing_outside_its_temp_folder(app, browser) -> None:
    """Runs last: stop the app; its temporary folder is gone and the folder it ran in is still empty."""
    log = app["log"].read_text()
    assert "temporary folder " in log, log
    temp = Path(log.split("temporary folder ")[1].split(" ")[0])
    assert temp.is_dir() and any(temp.rglob("*.png"))  # overlays and thumbnails went there
    app["process"].send_signal(signal.SIGTERM)
    app["process"].wait(timeout=30)
    assert not temp.exists()
    assert list(app["cwd"].iterdir()) == []
    assert "127.0.0.1" in log and "gradio.live" not in log
