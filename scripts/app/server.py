"""The app's page (Gradio): a Generate tab and an Edit tab over ``scripts.app.service.AppService``.

``configs/app.json`` builds the page from the inference config's components (``build_app``) and serves it
(``serve``) on 127.0.0.1 unless told otherwise; any other host needs a login (``scripts.app.access``).
Requests wait in Gradio's queue, which tells each visitor how many requests are ahead of theirs, up to
``max_queue`` waiting requests (beyond, the page answers that the app is busy): generations and edits share
one slot (``DEVICE_SLOT``), so the device runs one at a time. A request the bundle refuses (a bad setting or
upload) shows the bundle's one-line message in the page, with files named as the visitor named them (never
a path of the server), and the app keeps serving. Uploads above ``max_upload_mb`` are refused before they are
sent. SIGTERM and SIGINT stop the app cleanly, and ``/health`` tells a supervisor it is up
(``scripts.app.lifecycle``).

Where files go: without ``output_dir`` each browser session gets its own temporary folder, removed when
the session ends and when the app stops; with ``output_dir`` images go there as on the command line
(``output_dir`` for generations, ``output_dir/edits`` for edits, each with its ``manifest.csv``).
"""

from __future__ import annotations

import contextlib
import os
import re
import shutil
import tempfile

import gradio as gr
import numpy as np
from PIL import Image

from scripts.app.access import as_bool, check_access
from scripts.app.lifecycle import ServiceState, health_route, serve_until_stopped, stop_signals
from scripts.app.service import EDITS_DIR, AppService, save_mask
from scripts.common.errors import CxrLdmError
from scripts.editing.inputs import load_edit_image
from scripts.networks.schedulers import SCHEDULERS
from scripts.sampling.settings import SettingsError, as_int

#: Gradio concurrency id shared by generating and editing: one request at a time on the device
DEVICE_SLOT = "device"
#: layers of the Edit tab's painting canvas, in order
MASK_LAYERS = ("edit mask", "keep mask")
SETTINGS_COLUMNS = ("file", "prompt", "negative_prompt", "seed", "num_inference_steps", "guidance_scale", "scheduler")
#: a quoted absolute path in a message (the bundle quotes the files it names)
QUOTED_PATH = re.compile(r"'(/[^']*)'")


class SessionFolders:
    """Where the app writes: one temporary folder for the app (Gradio's uploads and cache, and each browser
    session's outputs), or the user's ``output_dir`` for the outputs."""

    def __init__(self, output_dir: str | None = None) -> None:
        self.output_dir = os.path.abspath(os.fspath(output_dir)) if output_dir else None
        self._temporary_root: str | None = None

    @property
    def temporary_root(self) -> str:
        """The app's temporary folder (created on first use, removed by ``close``)."""
        if self._temporary_root is None:
            self._temporary_root = tempfile.mkdtemp(prefix="cxr-ldm-app-")
        return self._temporary_root

    @property
    def gradio_cache(self) -> str:
        """Gradio's folder of uploads and of the files it serves."""
        return os.path.join(self.temporary_root, "gradio")

    def allowed_paths(self) -> list[str]:
        """Folders whose files the page may offer."""
        return [self.temporary_root] + ([self.output_dir] if self.output_dir else [])

    def folder(self, session: str | None, task: str) -> str:
        """Output folder of a ``task`` ("generate" or "edit") of ``session``."""
        if self.output_dir is not None:
            return self.output_dir if task == "generate" else os.path.join(self.output_dir, EDITS_DIR)
        return os.path.join(self.temporary_root, "sessions", _safe_name(session), task)

    def downloads(self, session: str | None) -> str:
        """Temporary folder of ``session``'s renamed downloads (also when outputs go to ``output_dir``)."""
        return os.path.join(self.temporary_root, "sessions", _safe_name(session), "downloads")

    def close_session(self, session: str | None) -> None:
        """Remove a finished session's temporary files (its outputs in ``output_dir`` stay)."""
        if self._temporary_root is not None:
            shutil.rmtree(os.path.join(self._temporary_root, "sessions", _safe_name(session)), ignore_errors=True)

    def close(self) -> None:
        """Remove the app's temporary folder (``output_dir`` is left alone)."""
        if self._temporary_root is not None:
            shutil.rmtree(self._temporary_root, ignore_errors=True)
            self._temporary_root = None


def _safe_name(session: str | None) -> str:
    name = "".join(c for c in str(session or "") if c.isalnum() or c in "-_")
    return name or "anonymous"


def page_message(error: BaseException, names: dict[str, str] | None = None) -> str:
    """The bundle's one-line message of ``error``, as the page shows it: each file of ``names`` (server path ->
    the name its visitor knows) under that name, and any other quoted absolute path under its file name."""
    text = " ".join(str(error).split()) or type(error).__name__
    for path, name in sorted((names or {}).items(), key=lambda item: -len(item[0])):
        text = text.replace(f"'{path}'", f"'{name}'")
    return QUOTED_PATH.sub(lambda match: f"'{os.path.basename(match.group(1))}'", text)


@contextlib.contextmanager
def page_request(state: ServiceState, names: dict[str, str] | None = None):
    """One request of the page under ``state`` (refused, or stopped at its next step, when the app stops); a
    bundle error (bad setting, bad upload, stop) is shown in the page as its one-line message (``page_message``
    with ``names``)."""
    try:
        with state.request():
            yield
    except CxrLdmError as error:
        raise gr.Error(page_message(error, names), print_exception=False) from None


def upload_names(*uploads: str | None) -> dict[str, str]:
    """Server path -> file name of each Gradio upload (Gradio keeps the visitor's file name as the last part)."""
    return {upload: os.path.basename(upload) for upload in uploads if upload}


def named_copy(path: str, folder: str, name: str) -> str:
    """``path`` under the file name ``name`` in ``folder`` (a hard link, or a copy across file systems)."""
    os.makedirs(folder, exist_ok=True)
    target = os.path.join(folder, name)
    if not os.path.exists(target):
        try:
            os.link(path, target)
        except OSError:
            shutil.copyfile(path, target)
    return target


def painted_mask(editor_value, layer: int, image_size: int) -> np.ndarray | None:
    """The mask (image_size, image_size) of bools painted on ``layer`` of the Edit tab's canvas, None if blank.

    ``editor_value``: the ``gr.ImageEditor`` value with numpy RGBA layers; painted pixels are opaque.
    """
    layers = (editor_value or {}).get("layers") or []
    if layer >= len(layers) or layers[layer] is None:
        return None
    pixels = np.asarray(layers[layer])
    alpha = pixels[..., 3] if pixels.ndim == 3 and pixels.shape[-1] == 4 else pixels.reshape(pixels.shape[:2])
    mask = alpha > 0
    if not mask.any():
        return None
    if mask.shape != (image_size, image_size):  # a canvas of another size: scale the painting onto the image
        picture = Image.fromarray(mask.astype(np.uint8) * 255).resize((image_size, image_size), Image.NEAREST)
        mask = np.asarray(picture) > 127
    return mask


def settings_table(results: list[dict]) -> list[list]:
    """Rows of the page's settings table (``SETTINGS_COLUMNS`` of each image's manifest row)."""
    return [[result["row"].get(column, "") for column in SETTINGS_COLUMNS] for result in results]


def sampling_inputs(defaults: dict, prefix: str = "") -> tuple[gr.Number, gr.Number, gr.Dropdown, gr.Number]:
    """One row of a tab's sampler settings, set to the config's ``defaults``: steps (element id ``<prefix>steps``),
    guidance, scheduler, seed."""
    with gr.Row():
        steps = gr.Number(value=defaults["num_inference_steps"], precision=0, label="steps", elem_id=f"{prefix}steps")
        guidance = gr.Number(value=defaults["guidance_scale"], label="guidance")
        scheduler = gr.Dropdown(sorted(SCHEDULERS), value=defaults["scheduler_name"], label="scheduler")
        seed = gr.Number(value=defaults["seed"], precision=0, label="seed")
    return steps, guidance, scheduler, seed


def generate_handler(service: AppService, folders: SessionFolders, state: ServiceState, step_progress: gr.Progress):
    """The Generate button's handler: the page's settings -> (gallery of (PNG, caption), PNG and DICOM
    downloads, settings table rows) of the images ``service`` generated into the session's folder."""

    def generate(
        prompt,
        negative,
        num_images,
        seed,
        steps,
        guidance,
        scheduler,
        request: gr.Request,
        progress=step_progress,
    ):
        with page_request(state):
            output_dir = folders.folder(request.session_hash, "generate")
            results = service.generate(
                output_dir, prompt or "", negative or "", seed, num_images, steps, guidance, scheduler
            )
        gallery = [(result["image"], f"seed {result['row']['seed']}") for result in results]
        downloads = [path for result in results for path in (result["image"], result["dicom"])]
        return gallery, downloads, settings_table(results)

    return generate


def prepare_upload_handler(service: AppService, state: ServiceState):
    """The Edit tab's upload handler: the uploaded radiograph -> the mask canvas's value, the image as the
    model sees it (``service.image_size``², grey, shown losslessly) under empty mask layers (None when the
    upload is cleared)."""

    def prepare_upload(upload):
        if upload is None:
            return None
        with page_request(state, upload_names(upload)):
            image, _ = load_edit_image(upload, service.image_size, service.input_limits)
        grey = (image[0].numpy() * 255.0).round().astype(np.uint8)
        return {
            "background": np.stack([grey] * 3 + [np.full_like(grey, 255)], axis=-1),
            "layers": [],
            "composite": None,
        }

    return prepare_upload


def edit_masks(canvas, edit_upload, keep_upload, image_size: int, folder: str, names: dict) -> list[str | None]:
    """The edit and keep mask files of an edit: each the uploaded mask, else the layer painted on ``canvas``
    (saved in ``folder``, and named in ``names`` as painted), else None."""
    masks = []
    for layer, upload, what in ((0, edit_upload, "edit"), (1, keep_upload, "keep")):
        painted = painted_mask(canvas, layer, image_size)
        if upload or painted is None:
            masks.append(upload or None)
            continue
        masks.append(save_mask(painted, folder, what))
        names[masks[-1]] = f"the {what} mask painted on the canvas"
    return masks


def edit_handler(service: AppService, folders: SessionFolders, state: ServiceState, step_progress: gr.Progress):
    """The Edit button's handler: the upload, masks (uploaded, else painted) and settings -> (comparison
    figure, edited PNG, PNG / DICOM / figure downloads under their own names, settings table row) of the
    edit ``service`` made."""

    def edit(
        upload,
        canvas,
        edit_upload,
        keep_upload,
        prompt,
        negative,
        strength,
        seed,
        steps,
        guidance,
        scheduler,
        request: gr.Request,
        progress=step_progress,
    ):
        names = upload_names(upload, edit_upload, keep_upload)
        with page_request(state, names):
            if upload is None:
                raise SettingsError("No radiograph: upload a PNG, JPEG or DICOM file first.")
            output_dir = folders.folder(request.session_hash, "edit")
            edit_mask, keep_mask = edit_masks(canvas, edit_upload, keep_upload, service.image_size, output_dir, names)
            result = service.edit(
                output_dir, upload, prompt or "", negative or "", edit_mask, keep_mask, strength, seed, steps,
                guidance, scheduler,
            )  # fmt: skip
        # the figure has the edited image's file name in its own folder: a download of its own name
        stem = os.path.splitext(os.path.basename(result["image"]))[0]
        figure = named_copy(result["comparison"], folders.downloads(request.session_hash), f"{stem}_comparison.png")
        downloads = [result["image"], result["dicom"], figure]
        return result["comparison"], result["image"], downloads, settings_table([result])

    return edit


def generate_tab(defaults: dict, generate) -> None:
    """The Generate tab (inside ``gr.Blocks``): prompts, image count, sampler settings, the button wired to
    ``generate`` (API name "generate", on the device slot), gallery, downloads and settings table."""
    with gr.Tab("Generate"):
        prompt = gr.Textbox(value=defaults["prompt"], label="prompt", elem_id="prompt")
        negative = gr.Textbox(value=defaults["negative_prompt"], label="negative prompt")
        with gr.Row():
            num_images = gr.Number(value=defaults["num_samples"], precision=0, label="number of images")
        steps, guidance, scheduler, seed = sampling_inputs(defaults)
        run = gr.Button("Generate", variant="primary", elem_id="generate")
        gallery = gr.Gallery(
            label="images", columns=4, height=320, object_fit="contain", elem_id="gallery", format="png"
        )
        downloads = gr.File(label="downloads (PNG and DICOM)", file_count="multiple", elem_id="downloads")
        table = gr.Dataframe(headers=list(SETTINGS_COLUMNS), label="settings of each image", wrap=False)
        run.click(
            generate,
            [prompt, negative, num_images, seed, steps, guidance, scheduler],
            [gallery, downloads, table],
            api_name="generate",
            concurrency_limit=1,
            concurrency_id=DEVICE_SLOT,
        )


def edit_tab(defaults: dict, prepare_upload, edit) -> None:
    """The Edit tab (inside ``gr.Blocks``): radiograph and mask uploads, the mask canvas (filled by
    ``prepare_upload``), prompts, strength, sampler settings, the button wired to ``edit`` (API name "edit",
    on the device slot), and the results."""
    with gr.Tab("Edit"):
        with gr.Row():
            upload = gr.File(label="radiograph (PNG, JPEG or DICOM)", type="filepath", elem_id="edit_upload")
            edit_upload = gr.File(
                label="edit mask (optional; white = may change)", type="filepath", elem_id="edit_mask_upload"
            )
            keep_upload = gr.File(
                label="keep mask (optional; white = must not change)", type="filepath", elem_id="keep_mask_upload"
            )
        canvas = gr.ImageEditor(
            label="paint the masks: layer 'edit mask' (may change), 'keep mask' (must not)",
            type="numpy",
            image_mode="RGBA",
            sources=(),
            transforms=(),
            layers=gr.LayerOptions(allow_additional_layers=False, layers=list(MASK_LAYERS)),
            brush=gr.Brush(colors=["#ff8c00", "#00c8ff"], color_mode="fixed"),
            format="png",  # the radiograph as the edit uses it, to the grey level (WebP would shift it)
            elem_id="canvas",
        )
        edit_prompt = gr.Textbox(value=defaults["prompt"], label="prompt", elem_id="edit_prompt")
        edit_negative = gr.Textbox(value=defaults["negative_prompt"], label="negative prompt")
        strength = gr.Number(value=defaults["strength"], label="strength (0: keep the image, 1: regenerate it)")
        edit_steps, edit_guidance, edit_scheduler, edit_seed = sampling_inputs(defaults, prefix="edit_")
        edit_run = gr.Button("Edit", variant="primary", elem_id="edit")
        comparison = gr.Image(label="input | edited | difference", type="filepath", elem_id="comparison")
        edited = gr.Image(label="edited", type="filepath", format="png", elem_id="edited")
        edit_downloads = gr.File(
            label="downloads (PNG, DICOM, figure)", file_count="multiple", elem_id="edit_downloads"
        )
        edit_table = gr.Dataframe(headers=list(SETTINGS_COLUMNS), label="settings", wrap=False)
        upload.upload(prepare_upload, upload, canvas, api_name="prepare_upload")
        edit_run.click(
            edit,
            [
                upload,
                canvas,
                edit_upload,
                keep_upload,
                edit_prompt,
                edit_negative,
                strength,
                edit_seed,
                edit_steps,
                edit_guidance,
                edit_scheduler,
            ],
            [comparison, edited, edit_downloads, edit_table],
            api_name="edit",
            concurrency_limit=1,
            concurrency_id=DEVICE_SLOT,
        )


def build_app(
    service: AppService,
    defaults: dict,
    folders: SessionFolders,
    state: ServiceState | None = None,
    title: str = "cxr-ldm",
):
    """The Gradio page (``gr.Blocks``) of ``service``; ``defaults`` are the config's prompt, negative_prompt,
    seed, num_samples, num_inference_steps, guidance_scale, scheduler_name and strength; ``state`` (default a
    new one) counts its requests and stops them."""
    state = state or ServiceState()
    # the sampler's per-step progress bar (tqdm) drives the page's; Gradio recognises the parameter by this default
    step_progress = gr.Progress(track_tqdm=True)
    generate = generate_handler(service, folders, state, step_progress)
    prepare_upload = prepare_upload_handler(service, state)
    edit = edit_handler(service, folders, state, step_progress)

    with gr.Blocks(title=title, delete_cache=(3600, 3600)) as app:
        gr.Markdown(f"## {title}: chest X-rays from report text")
        generate_tab(defaults, generate)
        edit_tab(defaults, prepare_upload, edit)

        def end_session(request: gr.Request):
            folders.close_session(request.session_hash)

        app.unload(end_session)
    return app


def server_settings(host, port, share, auth, allow_unauthenticated, max_queue, max_upload_mb, stop_timeout_s) -> dict:
    """The serving settings of ``serve``, checked (one-line ``SettingsError``s) before anything starts."""
    port = as_int(port, "--port", 1)
    if port > 65535:
        raise SettingsError(f"--port must be <= 65535, got {port}.")
    stop_timeout_s = float(stop_timeout_s)
    if not stop_timeout_s >= 0:
        raise SettingsError(f"--stop_timeout_s must be >= 0, got {stop_timeout_s}.")
    upload_mb = float(max_upload_mb)
    if not upload_mb > 0:
        raise SettingsError(f"--max_upload_mb must be > 0, got {max_upload_mb}.")
    return {
        "host": str(host),
        "port": port,
        "share": as_bool(share, "--share"),
        "logins": check_access(host, share, auth, allow_unauthenticated),
        "max_queue": as_int(max_queue, "--max_queue", 1),
        "max_file_size": int(upload_mb * 1e6),
        "stop_timeout_s": stop_timeout_s,
    }


def serve(
    service: AppService,
    folders: SessionFolders,
    defaults: dict,
    host: str = "127.0.0.1",
    port: int = 7860,
    share=False,
    auth=None,
    allow_unauthenticated=False,
    max_queue: int = 16,
    max_upload_mb: float = 100,
    stop_timeout_s: float = 5,
    block: bool = True,
    state: ServiceState | None = None,
):
    """Build the page of ``service`` and serve it on ``host``:``port`` until SIGTERM or SIGINT, then stop
    cleanly (``scripts.app.lifecycle``) and remove the app's temporary files.

    ``auth``: logins (``scripts.app.access.read_auth``), needed unless ``host`` is loopback or
    ``allow_unauthenticated`` is true; a public link only with ``share``. ``max_queue`` requests may wait;
    uploads may have ``max_upload_mb`` megabytes. With ``block`` False, return the page once it serves
    (tests): ``app.close()`` and ``folders.close()`` stop it, ``state`` (created when None) is its state.
    """
    settings = server_settings(
        host, port, share, auth, allow_unauthenticated, max_queue, max_upload_mb, stop_timeout_s
    )  # fmt: skip
    state = state or ServiceState()
    # Gradio keeps uploads and the files it serves in GRADIO_TEMP_DIR, read when the page is built: inside
    # the app's temporary folder, so the app writes nowhere else
    os.environ["GRADIO_TEMP_DIR"] = folders.gradio_cache
    signals = stop_signals(state) if block else contextlib.nullcontext()
    try:
        with signals:  # from here on, SIGTERM and SIGINT stop the app cleanly
            app = build_app(service, defaults, folders, state)
            app.queue(default_concurrency_limit=1, max_size=settings["max_queue"])
            app.launch(
                server_name=settings["host"],
                server_port=settings["port"],
                share=settings["share"],
                auth=settings["logins"],
                auth_message="cxr-ldm: log in with the user name and password you were given.",
                max_file_size=settings["max_file_size"],
                allowed_paths=folders.allowed_paths(),
                prevent_thread_lock=True,
                footer_links=["api"],
                app_kwargs={"routes": [health_route(app, state)]},
            )
            if block:
                serve_until_stopped(app, folders, state, settings["stop_timeout_s"])
    finally:
        if block:
            folders.close()
    return app
