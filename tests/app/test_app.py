"""The interactive app (configs/app.json), started by its command on tiny networks and driven like a user would:
in headless Chromium (Playwright on the system's Chromium), and through Gradio's HTTP API.

One app serves the whole module. Its images must equal the command line's for the same settings; an edit's
keep region must be the input's; bad settings and bad or hostile uploads must show the bundle's message, naming
files as the visitor named them, while the app keeps serving; uploads over ``max_upload_mb`` are refused; every
download has its own name; the mask canvas shows the prepared radiograph losslessly; ``/health`` answers; eight
concurrent clients must each get their images; Ctrl-C (SIGINT) stops it cleanly. ``CXR_LDM_UPDATE_SCREENSHOT=1``
copies the page's screenshot to docs/images/app.png (the README's picture).
"""

from __future__ import annotations

import concurrent.futures
import io
import os
import signal
import subprocess
import urllib.request
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from helpers.app import WAIT_S, start_app
from helpers.bundle import BUNDLE_ROOT, run_inference
from helpers.data import dciodvfy_findings, write_dx
from helpers.editing import run_edit, write_image, write_mask
from scripts.editing.inputs import load_edit_image

SCREENSHOT = BUNDLE_ROOT / "docs" / "images" / "app.png"
SIZE = 64  # the tiny overlay's image_size
#: the module app's upload limit (megabytes): above the hostile test files, below ``_big_file``
MAX_UPLOAD_MB = 4
PROMPT = "Small left pleural effusion"
#: the page's defaults (the tiny overlay's steps; inference.json's guidance, scheduler and seed)
DEFAULTS = {"seed": 42, "num_inference_steps": 3, "guidance_scale": 7.0, "scheduler_name": "unipc_karras"}


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
    process, url, log = start_app(tiny_model_dir, temporary, max_upload_mb=MAX_UPLOAD_MB)
    try:
        yield {"url": url, "tmp": temporary}
    finally:
        process.send_signal(signal.SIGINT)  # Ctrl-C: the app stops and removes its temporary folder
        try:
            returncode = process.wait(timeout=60)
        except subprocess.TimeoutExpired:
            process.kill()
            raise
    log_text = log.read_text()
    assert returncode == 0, log_text[-4000:]
    assert not list(temporary.glob("cxr-ldm-app-*")), "the app left its temporary folder behind"
    assert "SIGINT: stopping" in log_text and "Stopped; temporary files removed." in log_text, log_text[-4000:]


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
    """Also: the canvas shows the radiograph as the edit uses it, to the grey level (a lossless PNG), and the
    three downloads have three names."""
    image = write_image(tmp_path / "chest.png")
    keep = write_mask(tmp_path / "keep.png", (0, 0, 28, 96))
    page.get_by_role("tab", name="Edit").click()
    with page.expect_response(lambda response: "/gradio_api/file=" in response.url) as canvas_background:
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
    shown = _pixels(page.request.get(canvas_background.value.url).body())  # the file the canvas loaded
    np.testing.assert_array_equal(shown[..., :3], np.repeat(prepared[..., None], 3, axis=-1))
    names = [link.get_attribute("download") for link in page.locator("#edit_downloads a").all()]
    stem = Path(from_cli.name).stem
    assert sorted(names) == sorted([f"{stem}.png", f"{stem}.dcm", f"{stem}_comparison.png"]), names


def test_page_shows_the_bundles_message_for_a_non_image(page, tmp_path):
    not_an_image = tmp_path / "notes.png"
    not_an_image.write_text("not an image")
    page.get_by_role("tab", name="Edit").click()
    page.locator("#edit_upload input[type=file]").set_input_files(str(not_an_image))
    page.get_by_text("is not a readable image").first.wait_for()
    page.get_by_text("use PNG, JPEG or DICOM").first.wait_for()


def test_page_names_a_decompression_bomb_as_its_visitor_did(page, hostile_inputs):
    """A 20000x20000 PNG (2 MB on disk): the bundle's message from the file's header, with the file's own name."""
    bomb, message = hostile_inputs["bomb.png"]
    page.get_by_role("tab", name="Edit").click()
    page.locator("#edit_upload input[type=file]").set_input_files(str(bomb))
    page.get_by_text(f"Input image 'bomb.png' {message}").first.wait_for()
    assert "/tmp" not in page.locator("body").inner_text()


def _big_file(folder: Path) -> Path:
    """A file over the module app's upload limit (random bytes named like a radiograph)."""
    path = folder / "big.png"
    path.write_bytes(np.random.default_rng(0).bytes(int((MAX_UPLOAD_MB + 1) * 1e6)))
    return path


def test_page_refuses_an_upload_over_max_upload_mb(page, tmp_path):
    page.get_by_role("tab", name="Edit").click()
    page.locator("#edit_upload input[type=file]").set_input_files(str(_big_file(tmp_path)))
    page.get_by_text('File(s) exceed the maximum allowed size of 3.8 Mb: "big.png"').first.wait_for()


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
        ({"num_inference_steps": 5000}, "--num_inference_steps must be <= 1000 (the model's noise schedule has 1000"),
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
    from gradio_client import handle_file
    from gradio_client.exceptions import AppError

    image = write_image(tmp_path / "chest.png")
    ct = write_dx(tmp_path / "ct.dcm", np.full((48, 64), 100, dtype=np.uint16), modality="CT")
    frames = write_dx(tmp_path / "frames.dcm", np.full((48, 64), 100, dtype=np.uint16), frames=2)
    wrong_size = write_mask(tmp_path / "wrong.png", (0, 0, 10, 10), size=(50, 50))
    with pytest.raises(AppError, match=r"^Input image: 'ct.dcm' is not a radiograph \(Modality CT\)\.$"):
        _edit(client, ct)
    with pytest.raises(AppError, match="^Input image: 'frames.dcm' is a multi-frame"):
        _edit(client, frames)
    # both files named as uploaded, each once
    with pytest.raises(AppError, match=r"^Keep mask 'wrong.png' is 50x50 but image 'chest.png' is 80x96: draw"):
        _edit(client, image, keep_mask=wrong_size)
    with pytest.raises(AppError, match=r"--strength must be in \[0, 1\]"):
        _edit(client, image, strength=1.5)
    comparison, edited, downloads, _ = _edit(client, image)  # and the app still serves
    assert [Path(path).suffix for path in downloads] == [".png", ".dcm", ".png"]
    # each download its own name; the figure is the comparison shown in the page
    stem = Path(edited).stem
    assert [Path(path).name for path in downloads] == [f"{stem}.png", f"{stem}.dcm", f"{stem}_comparison.png"]
    np.testing.assert_array_equal(_pixels(Path(downloads[2]).read_bytes()), _pixels(Path(comparison).read_bytes()))
    # the mask canvas gets the radiograph as the edit uses it, losslessly (PNG, not WebP)
    canvas = client.predict(handle_file(str(image)), api_name="/prepare_upload")
    prepared = (load_edit_image(str(image), SIZE)[0][0].numpy() * 255.0).round().astype(np.int32)
    assert Path(canvas["background"]).suffix == ".png"
    np.testing.assert_array_equal(_pixels(Path(canvas["background"]).read_bytes())[..., 0], prepared)


def test_api_refuses_hostile_uploads_naming_them_as_uploaded(client, hostile_inputs, tmp_path):
    """Bombs, huge declared sizes, truncated and empty files, DICOM without pixels: the bundle's one line with the
    visitor's file name once and no server path, from the upload handler and as the edit's keep mask."""
    from gradio_client import handle_file
    from gradio_client.exceptions import AppError

    for name, (path, message) in hostile_inputs.items():
        with pytest.raises(AppError) as refused:
            client.predict(handle_file(str(path)), api_name="/prepare_upload")
        text = str(refused.value)
        assert message in text and text.count(name) == 1 and f"'{name}'" in text, text
        assert "/" not in text.replace("/health", ""), text
    path, message = hostile_inputs["truncated.dcm"]
    with pytest.raises(AppError, match=f"^Keep mask: 'truncated.dcm' {message}"):
        _edit(client, write_image(tmp_path / "chest.png"), keep_mask=path)
    with pytest.raises(ValueError, match="exceeds the maximum file size of 4000000 bytes"):  # the client checks
        client.predict(handle_file(str(_big_file(tmp_path))), api_name="/prepare_upload")


def test_server_refuses_an_upload_over_max_upload_mb(app, tmp_path):
    """Uploaded by hand (no client-side check): the server's upload route stops reading and answers 413."""
    import urllib.error

    boundary = "cxr-ldm-test-boundary"
    body = (
        (
            f'--{boundary}\r\nContent-Disposition: form-data; name="files"; filename="big.png"\r\n'
            "Content-Type: image/png\r\n\r\n"
        ).encode()
        + _big_file(tmp_path).read_bytes()
        + f"\r\n--{boundary}--\r\n".encode()
    )
    request = urllib.request.Request(
        f"{app['url']}gradio_api/upload",
        data=body,
        headers={"Content-Type": f"multipart/form-data; boundary={boundary}"},
    )
    with pytest.raises(urllib.error.HTTPError) as refused:
        urllib.request.urlopen(request, timeout=60)
    assert refused.value.code == 413
    assert "File size exceeded maximum allowed size of 4000000 bytes" in refused.value.read().decode()


def test_health_answers_a_supervisor(app):
    import json

    with urllib.request.urlopen(f"{app['url']}health", timeout=30) as response:
        assert response.status == 200
        assert json.loads(response.read()) == {"status": "ok", "running": 0, "waiting": 0}


def test_eight_concurrent_clients_each_get_their_images(app, tiny_model_dir, tmp_path):
    """Eight clients at once each get the image of their own seed: its pixels equal the command line's."""
    from gradio_client import Client

    def one_client(seed: int):
        gallery, downloads, table = _generate(Client(app["url"], verbose=False), seed)
        return seed, gallery, table

    seeds = [1000 + index for index in range(8)]
    with concurrent.futures.ThreadPoolExecutor(max_workers=8) as pool:
        answers = list(pool.map(one_client, seeds))
    prompts_file = tmp_path / "prompts.csv"
    prompts_file.write_text("prompt,seed\n" + "".join(f"{PROMPT},{seed}\n" for seed in seeds))
    settings = {key: DEFAULTS[key] for key in ("num_inference_steps", "guidance_scale", "scheduler_name")}
    references = run_inference(tiny_model_dir, tmp_path / "cli", prompts_file=str(prompts_file), **settings)
    assert len(references) == 8
    by_seed = {int(path.name.split("_seed")[1].split("_")[0]): path for path in references}
    for seed, gallery, table in answers:
        assert len(gallery) == 1 and [row[3] for row in table["data"]] == [str(seed)]
        received = _pixels(Path(gallery[0]["image"]).read_bytes())
        np.testing.assert_array_equal(received, _pixels(by_seed[seed].read_bytes()), err_msg=f"seed {seed}")
    assert len({Path(gallery[0]["image"]).name for _, gallery, _ in answers}) == 8
    assert _get(app["url"])  # still up


def test_downloads_are_png_and_a_synthetic_dicom(client):
    import pydicom

    gallery, downloads, table = _generate(client, 7, num_images=2)
    assert [Path(path).suffix for path in downloads] == [".png", ".dcm", ".png", ".dcm"]
    dicom = pydicom.dcmread(downloads[1])
    assert dicom.ConversionType == "SYN" and dicom.Rows == SIZE
    assert dciodvfy_findings(downloads[1]) == []  # the standard's validator finds no error or warning
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
