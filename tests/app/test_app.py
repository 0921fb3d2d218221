"""The interactive app (configs/app.json), started by its command on tiny networks and driven like a user would:
in headless Chromium (Playwright on the system's Chromium), and through Gradio's HTTP API.

One app serves the whole module. Its images must equal the command line's for the same settings; an edit's
keep region must be the input's; bad settings and bad uploads must show the bundle's message while the app
keeps serving; eight concurrent clients must each get their images. ``CXR_LDM_UPDATE_SCREENSHOT=1`` copies
the page's screenshot to docs/images/app.png (the README's picture).
"""

from __future__ import annotations

import concurrent.futures
import io
import os
import signal
import socket
import subprocess
import urllib.request
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from helpers.bundle import BUNDLE_ROOT, INFERENCE_CONFIGS, TINY_OVERLAYS, bundle_run_command, cli_env, run_inference
from helpers.data import write_dx
from helpers.editing import run_edit, write_image, write_mask
from scripts.editing.inputs import load_edit_image

#: the app is an overlay of inference and edit
APP_CONFIGS = (str(BUNDLE_ROOT / "configs" / "edit.json"), str(BUNDLE_ROOT / "configs" / "app.json"))
CHROMIUM = "/usr/bin/chromium"
SCREENSHOT = BUNDLE_ROOT / "docs" / "images" / "app.png"
SIZE = 64  # the tiny overlay's image_size
PROMPT = "Small left pleural effusion"
#: the page's defaults (the tiny overlay's steps; inference.json's guidance, scheduler and seed)
DEFAULTS = {"seed": 42, "num_inference_steps": 3, "guidance_scale": 7.0, "scheduler_name": "unipc_karras"}
#: upper bound on waiting for the app to start or answer (a guard against hanging, not a speed check)
WAIT_S = 180


def _free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def _get(url: str) -> bytes:
    with urllib.request.urlopen(url, timeout=30) as response:
        return response.read()


def _pixels(data: bytes) -> np.ndarray:
    return np.asarray(Image.open(io.BytesIO(data))).astype(np.int32)


@pytest.fixture(scope="module")
def app(tiny_model_dir, tmp_path_factory):
    """The app as its README command starts it (tiny networks overlaid), on a free loopback port; its URL and
    its temporary-files folder. Stopped with Ctrl-C (SIGINT) at the end of the module."""
    temporary = tmp_path_factory.mktemp("app_tmp")
    port = _free_port()
    overrides = {
        "bundle_root": str(BUNDLE_ROOT),
        "model_dir": str(tiny_model_dir),
        "load_old": False,
        "text_encoder_source": str(tiny_model_dir / "text_encoder"),
        "port": port,
    }
    command = bundle_run_command([*INFERENCE_CONFIGS, *TINY_OVERLAYS, *APP_CONFIGS], overrides)
    log = open(temporary / "app.log", "w+")  # noqa: SIM115 (read back when the app fails to start)
    # as many threads as this process, whose in-process command-line runs are the reference: float results
    # then agree to the bit
    threads = str(torch.get_num_threads())
    env = {**cli_env(one_thread=False), "OMP_NUM_THREADS": threads, "TMPDIR": str(temporary)}
    process = subprocess.Popen(command, cwd=BUNDLE_ROOT, env=env, stdout=log, stderr=subprocess.STDOUT)
    url = f"http://127.0.0.1:{port}/"
    try:
        _wait_until_up(url, process, log)
        yield {"url": url, "tmp": temporary}
    finally:
        process.send_signal(signal.SIGINT)  # Ctrl-C: the app stops and removes its temporary folder
        try:
            returncode = process.wait(timeout=60)
        except subprocess.TimeoutExpired:
            process.kill()
            raise
        finally:
            log.close()
    assert returncode == 0, (temporary / "app.log").read_text()[-4000:]
    assert not list(temporary.glob("cxr-ldm-app-*")), "the app left its temporary folder behind"


def _wait_until_up(url, process, log) -> None:
    import time

    deadline = time.monotonic() + WAIT_S
    while time.monotonic() < deadline:
        if process.poll() is not None:
            log.seek(0)
            raise AssertionError(f"the app exited ({process.returncode}):\n{log.read()[-4000:]}")
        try:
            _get(url)
            return
        except OSError:
            time.sleep(0.5)
    log.seek(0)
    raise AssertionError(f"the app did not answer within {WAIT_S} s:\n{log.read()[-4000:]}")


@pytest.fixture(scope="module")
def browser():
    """Headless Chromium of the system (the CI installs it; a missing browser fails, it does not skip)."""
    assert os.path.exists(CHROMIUM), (
        f"{CHROMIUM} is missing: apt-get update && apt-get install -y chromium chromium-driver (.ci/run does)."
    )
    from playwright.sync_api import sync_playwright

    with sync_playwright() as playwright:
        chromium = playwright.chromium.launch(executable_path=CHROMIUM, headless=True, args=["--no-sandbox"])
        yield chromium
        chromium.close()


@pytest.fixture
def page(browser, app):
    page = browser.new_page(viewport={"width": 1100, "height": 900})
    page.set_default_timeout(WAIT_S * 1000)
    page.goto(app["url"])
    yield page
    page.close()


@pytest.fixture(scope="module")
def client(app):
    from gradio_client import Client

    return Client(app["url"], verbose=False)


def _image_bytes(page, selector: str) -> bytes:
    source = page.locator(selector).first.get_attribute("src")
    return page.request.get(source).body()


def test_page_generates_the_command_lines_image(page, app, tiny_model_dir, tmp_path):
    page.locator("#prompt textarea").fill(PROMPT)
    page.locator("#generate").click()
    page.locator("#gallery img").first.wait_for()
    from_page = _pixels(_image_bytes(page, "#gallery img"))
    page.get_by_text("seed 42").first.wait_for()  # the settings table and caption name the seed
    (from_cli,) = run_inference(tiny_model_dir, tmp_path / "cli", prompt=PROMPT, seed=DEFAULTS["seed"])
    assert from_page.shape == (SIZE, SIZE)
    assert from_page.std() > 0
    np.testing.assert_array_equal(from_page, _pixels(from_cli.read_bytes()))
    page.screenshot(path=str(app["tmp"] / "app.png"), full_page=True)
    if os.environ.get("CXR_LDM_UPDATE_SCREENSHOT") == "1":
        picture = Image.open(app["tmp"] / "app.png").convert("RGB").quantize(colors=64)
        picture.save(SCREENSHOT, optimize=True)


def test_page_edit_keeps_the_keep_region_and_matches_the_command_line(page, tiny_model_dir, tmp_path):
    image = write_image(tmp_path / "chest.png")
    keep = write_mask(tmp_path / "keep.png", (0, 0, 28, 96))
    page.get_by_role("tab", name="Edit").click()
    page.locator("#edit_upload input[type=file]").set_input_files(str(image))
    page.locator("#keep_mask_upload input[type=file]").set_input_files(str(keep))
    page.locator("#keep_mask_upload").get_by_text("keep.png").wait_for()
    page.locator("#edit_prompt textarea").fill(PROMPT)
    page.locator("#edit").click()
    page.locator("#edited img").wait_for()
    edited = _pixels(_image_bytes(page, "#edited img"))
    page.locator("#comparison img").wait_for()
    prepared, _ = load_edit_image(str(image), SIZE)
    prepared = (prepared[0].numpy() * 255.0).round().astype(np.int32)
    keep_region = np.asarray(load_edit_image(str(keep), SIZE)[0][0].numpy()) > 0.5
    assert keep_region.any() and not keep_region.all()
    np.testing.assert_array_equal(edited[keep_region], prepared[keep_region])
    assert (edited[~keep_region] != prepared[~keep_region]).any()
    (from_cli,) = run_edit(tiny_model_dir, tmp_path / "cli", image=str(image), keep_mask=str(keep), prompt=PROMPT)
    np.testing.assert_array_equal(edited, _pixels(from_cli.read_bytes()))


def test_page_shows_the_bundles_message_for_a_non_image(page, tmp_path):
    not_an_image = tmp_path / "notes.png"
    not_an_image.write_text("not an image")
    page.get_by_role("tab", name="Edit").click()
    page.locator("#edit_upload input[type=file]").set_input_files(str(not_an_image))
    page.get_by_text("is not a readable image").first.wait_for()
    page.get_by_text("use PNG, JPEG or DICOM").first.wait_for()


def _generate(client, seed: int, **changes):
    settings = {**DEFAULTS, "num_images": 1, "negative": "", **changes}
    return client.predict(
        PROMPT,
        settings["negative"],
        settings["num_images"],
        seed,
        settings["num_inference_steps"],
        settings["guidance_scale"],
        settings["scheduler_name"],
        api_name="/generate",
    )


def _call(url: str, api_name: str, data: list) -> str:
    """Gradio's plain HTTP API: post the inputs (JSON as Python writes it, NaN and Infinity included), then read
    the event stream of the answer; its text."""
    import json

    request = urllib.request.Request(
        f"{url}gradio_api/call/{api_name}",
        data=json.dumps({"data": data}).encode(),
        headers={"Content-Type": "application/json"},
    )
    with urllib.request.urlopen(request, timeout=30) as response:
        event_id = json.loads(response.read())["event_id"]
    return _get(f"{url}gradio_api/call/{api_name}/{event_id}").decode()


@pytest.mark.parametrize(
    "changes, message",
    [
        ({"num_inference_steps": 0}, "--num_inference_steps must be >= 1, got 0."),
        ({"guidance_scale": float("nan")}, "--guidance_scale must be a finite number, got nan."),
        ({"guidance_scale": float("inf")}, "--guidance_scale must be a finite number, got inf."),
        ({"num_images": 0}, "--num_samples must be >= 1, got 0."),
        ({"num_images": 9}, "number of images must be <= 8, got 9"),
        ({"scheduler_name": "euler"}, "euler is not in the list of choices"),  # Gradio's check of the dropdown
        # a distilled student's sampler refuses a second guidance branch, as on the command line
        ({"scheduler_name": "lcm", "guidance_scale": 7.0}, "does not apply to --scheduler_name lcm"),
    ],
)
def test_api_refuses_bad_settings_with_the_bundles_message(app, changes, message):
    settings = {**DEFAULTS, "num_images": 1, **changes}
    answer = _call(
        app["url"],
        "generate",
        [PROMPT, "", settings["num_images"], 0, settings["num_inference_steps"], settings["guidance_scale"],
         settings["scheduler_name"]],
    )  # fmt: skip
    assert "event: error" in answer and message in answer, answer


def _edit(client, image, keep_mask=None, strength=0.6):
    from gradio_client import handle_file

    return client.predict(
        handle_file(str(image)),
        None,
        None,
        handle_file(str(keep_mask)) if keep_mask else None,
        PROMPT,
        "",
        strength,
        DEFAULTS["seed"],
        DEFAULTS["num_inference_steps"],
        DEFAULTS["guidance_scale"],
        DEFAULTS["scheduler_name"],
        api_name="/edit",
    )


def test_api_refuses_bad_uploads_with_the_bundles_message(client, tmp_path):
    from gradio_client.exceptions import AppError

    image = write_image(tmp_path / "chest.png")
    ct = write_dx(tmp_path / "ct.dcm", np.full((48, 64), 100, dtype=np.uint16), modality="CT")
    frames = write_dx(tmp_path / "frames.dcm", np.full((48, 64), 100, dtype=np.uint16), frames=2)
    wrong_size = write_mask(tmp_path / "wrong.png", (0, 0, 10, 10), size=(50, 50))
    with pytest.raises(AppError, match="Modality"):
        _edit(client, ct)
    with pytest.raises(AppError, match="multi-frame"):
        _edit(client, frames)
    with pytest.raises(AppError, match="Keep mask .* is 50x50 but image .* is 80x96"):
        _edit(client, image, keep_mask=wrong_size)
    with pytest.raises(AppError, match=r"--strength must be in \[0, 1\]"):
        _edit(client, image, strength=1.5)
    comparison, edited, downloads, _ = _edit(client, image)  # and the app still serves
    assert [Path(path).suffix for path in downloads] == [".png", ".dcm", ".png"]


def test_eight_concurrent_clients_each_get_their_images(app):
    from gradio_client import Client

    def one_client(seed: int):
        gallery, downloads, table = _generate(Client(app["url"], verbose=False), 1000 + seed)
        return seed, gallery, table

    with concurrent.futures.ThreadPoolExecutor(max_workers=8) as pool:
        answers = list(pool.map(one_client, range(8)))
    for seed, gallery, table in answers:
        assert len(gallery) == 1 and Path(gallery[0]["image"]).is_file()
        assert [row[3] for row in table["data"]] == [str(1000 + seed)]
    assert len({Path(gallery[0]["image"]).name for _, gallery, _ in answers}) == 8
    assert _get(app["url"])  # still up


def test_downloads_are_png_and_a_synthetic_dicom(client):
    import pydicom

    gallery, downloads, table = _generate(client, 7, num_images=2)
    assert [Path(path).suffix for path in downloads] == [".png", ".dcm", ".png", ".dcm"]
    dicom = pydicom.dcmread(downloads[1])
    assert dicom.ConversionType == "SYN" and dicom.Rows == SIZE
    png = np.asarray(Image.open(downloads[0])).astype(np.int32)
    np.testing.assert_array_equal(np.round(dicom.pixel_array / 65535.0 * 255.0).astype(np.int32), png)
    assert [row[:1] + row[3:] for row in table["data"]] == [
        [Path(downloads[0]).name, "7", "3", "7.0", "unipc_karras"],
        [Path(downloads[2]).name, "8", "3", "7.0", "unipc_karras"],
    ]


def test_app_writes_only_to_its_temporary_folder(app):
    """Runs late in the module: every file the app wrote is in its one cxr-ldm-app-* folder of TMPDIR."""
    (root,) = app["tmp"].glob("cxr-ldm-app-*")
    outside = [
        str(path.relative_to(app["tmp"]))
        for path in app["tmp"].rglob("*")
        if path.is_file() and root not in path.parents and path.name not in ("app.log", "app.png")
    ]
    assert not outside, outside


def test_painted_layers_become_masks():
    from scripts.app.server import painted_mask

    layer = np.zeros((SIZE, SIZE, 4), dtype=np.uint8)
    layer[10:20, 5:15, 3] = 255
    value = {"background": None, "layers": [layer, np.zeros_like(layer)], "composite": None}
    mask = painted_mask(value, 0, SIZE)
    assert mask.sum() == 100 and mask[10:20, 5:15].all()
    assert painted_mask(value, 1, SIZE) is None  # a blank layer: no mask
    assert painted_mask(None, 0, SIZE) is None
    doubled = np.repeat(np.repeat(layer, 2, axis=0), 2, axis=1)  # a canvas twice the image's size
    np.testing.assert_array_equal(painted_mask({"layers": [doubled]}, 0, SIZE), mask)
