"""The Gradio app in a real headless Chromium (Debian's `chromium` and `chromium-driver`, driven by Selenium): the
page loads, a photo is uploaded, the faces' results appear and equal the pipeline's; a non-image is refused on the
page. The screenshot is kept in `test-artifacts/app.png`."""

import json
import os
import shutil
import socket
import time
from pathlib import Path

import numpy as np
import pytest
from PIL import Image
from skimage.data import astronaut

import affect_hf
from affect_hf.hub import save_model_folder
from tests.test_modeling import tiny_emma_with_visible_heads


ARTIFACTS = Path(__file__).resolve().parents[1] / "test-artifacts"
CHROMIUM, CHROMEDRIVER = shutil.which("chromium"), shutil.which("chromedriver")


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


@pytest.fixture(scope="module")
def emma_folder(tmp_path_factory) -> Path:
    model = tiny_emma_with_visible_heads()
    return save_model_folder(model, tmp_path_factory.mktemp("app") / "emma")


@pytest.fixture(scope="module")
def served(emma_folder):
    from affect_hf.app import launch_app

    folder = emma_folder
    port = free_port()
    page, _ = launch_app(folder, port=port, device="cpu", prevent_thread_lock=True)
    yield folder, f"http://127.0.0.1:{port}/"
    page.close()


@pytest.fixture(scope="module")
def browser():
    if not (CHROMIUM and CHROMEDRIVER) and os.environ.get("CI") != "true":  # CI installs them: there it must run
        pytest.skip("needs Chromium and chromedriver (apt-get install chromium chromium-driver)")
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service

    options = webdriver.ChromeOptions()
    options.binary_location = CHROMIUM
    for argument in ("--headless=new", "--no-sandbox", "--disable-dev-shm-usage", "--window-size=1400,2200"):
        options.add_argument(argument)
    driver = webdriver.Chrome(service=Service(CHROMEDRIVER), options=options)
    yield driver
    driver.quit()


def wait_for(condition, timeout: float = 60.0, message: str = ""):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = condition()
        if value:
            return value
        time.sleep(0.2)
    raise AssertionError(f"timed out waiting for {message}")


def test_upload_a_photo_and_read_the_faces_results(served, browser, tmp_path):
    from selenium.webdriver.common.by import By

    folder, url = served
    photo = tmp_path / "photo.png"
    Image.fromarray(astronaut()[:320, 60:420]).save(photo)
    browser.get(url)
    upload = wait_for(lambda: browser.find_elements(By.CSS_SELECTOR, "#image-input input[type=file]"), message="page")
    upload[0].send_keys(str(photo))
    wait_for(lambda: browser.find_elements(By.CSS_SELECTOR, "#image-input img"), message="the uploaded image")
    browser.find_element(By.ID, "analyse-image").click()
    results = browser.find_element(By.CSS_SELECTOR, "#results-json textarea")
    text = wait_for(lambda: results.get_attribute("value"), message="the results")
    wait_for(lambda: browser.find_elements(By.CSS_SELECTOR, "#faces-image img"), message="the annotated image")
    ARTIFACTS.mkdir(exist_ok=True)
    browser.save_screenshot(str(ARTIFACTS / "app.png"))

    rows = json.loads(text)
    [face] = affect_hf.pipeline(folder, device="cpu")(np.asarray(Image.open(photo)))
    assert len(rows) == 1 and rows[0]["face_id"] == 0
    assert rows[0]["valence"] == pytest.approx(face["valence"], abs=1e-5)
    assert rows[0]["arousal"] == pytest.approx(face["arousal"], abs=1e-5)
    assert rows[0]["expression"] == face["expression"]
    assert [rows[0][name] for name in face["au_active"]] == [int(active) for active in face["au_active"].values()]
    assert rows[0]["box_x1"] == pytest.approx(face["box"][0], abs=1e-3)
    assert "1 face(s) found." in browser.find_element(By.ID, "notice").text
    with Image.open(ARTIFACTS / "app.png") as screenshot:
        assert screenshot.width >= 1000


@pytest.mark.parametrize("kind", ["notes", "bomb"])
def test_a_file_the_page_cannot_read_is_refused_with_a_message(served, browser, tmp_path, kind):
    from selenium.webdriver.common.by import By

    from tests.test_api import png_header

    _, url = served
    if kind == "notes":
        path, expected = tmp_path / "notes.txt", "neither an image nor a video"
        path.write_text("not a picture")
    else:  # a decompression bomb: a small file that declares 50000 x 50000 pixels
        path, expected = tmp_path / "bomb.png", "bomb.png cannot be read"
        path.write_bytes(png_header(50000, 50000))
    browser.get(url)
    tab = wait_for(lambda: [b for b in browser.find_elements(By.CSS_SELECTOR, "button[role=tab]") if "File" in b.text],
                   message="the file tab")  # fmt: skip
    tab[0].click()
    wait_for(lambda: browser.find_elements(By.CSS_SELECTOR, "#file-input input[type=file]"), message="file input")
    browser.find_element(By.CSS_SELECTOR, "#file-input input[type=file]").send_keys(str(path))
    time.sleep(1.0)
    browser.find_element(By.ID, "analyse-file").click()
    wait_for(lambda: expected in browser.page_source, message="the error message")
    assert "Traceback" not in browser.page_source and "upstream" not in browser.page_source.lower()


def test_a_video_gives_plots_and_a_table_and_is_cut_at_the_limit(emma_folder, tmp_path):
    from affect_hf.app import analyse_video
    from affect_hf.data.synthetic_video import write_face_video
    from affect_hf.inference.analysis import FaceAffectAnalyzer
    from affect_hf.inference.table import read_table

    video = write_face_video(tmp_path / "clip.mp4", astronaut()[40:300, 110:350], num_frames=24, fps=12)
    analyzer = FaceAffectAnalyzer.from_pretrained(emma_folder, device="cpu")
    table, plots, notice = analyse_video(analyzer, str(video), max_seconds=1.0, folder=tmp_path / "out")
    rows = read_table(table)
    assert rows["time"].max() < 1.0 and rows["frame"].nunique() == 12
    assert "cut at 1 s" in notice and "12 frames, 24 faces" in notice
    assert sorted(path.name.removeprefix("clip.mp4_") for path in plots) == [
        "action_units.png",
        "circumplex.png",
        "expressions.png",
        "valence_arousal.png",
    ]


def test_the_space_file_builds_the_page(emma_folder, monkeypatch):
    import importlib.util

    import gradio as gr

    monkeypatch.setenv("AFFECT_MODEL", str(emma_folder))
    space = Path(__file__).resolve().parents[1] / "spaces" / "app.py"
    spec = importlib.util.spec_from_file_location("space_app", space)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    assert isinstance(module.demo, gr.Blocks) and module.MODEL == str(emma_folder)
    requirements = (space.parent / "requirements.txt").read_text()
    assert "affect-hf[app,video,plots]" in requirements


def test_the_tables_and_plots_a_page_served_are_removed_when_its_process_ends(emma_folder):
    import subprocess
    import sys

    from tests.runs import REPO_ROOT

    script = (
        "import affect_hf\nfrom affect_hf.app import build_app\n"
        f"page = build_app(affect_hf.pipeline({str(emma_folder)!r}, device='cpu'))\n"
        "assert page.work_folder.is_dir()\nprint(page.work_folder)\n"
    )
    result = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True,
                            env={**os.environ, "PYTHONPATH": str(REPO_ROOT)})  # fmt: skip
    assert result.returncode == 0, result.stderr[-2000:]
    work = Path(result.stdout.strip().splitlines()[-1])
    assert work.name.startswith("affect-hf-app-") and not work.exists()
