"""Behaviour snapshot: hashes of everything the bundle's workflows produce on tiny networks.

A refactor that claims to change no behaviour proves it by taking a snapshot before and after and comparing
them. From the bundle root::

    python -m tests.snapshot --output_json before.json
    python -m tests.snapshot --output_json after.json --parts inference,evaluation
    python -m tests.snapshot --compare before.json after.json

The bundle's version is part of every image's identity (its file name) and of the evaluation summary: across
a version bump, take the second snapshot with ``--model_version <the first one's version>``. When a change
renames images on purpose (what an image's identity covers), take both snapshots with ``--names_without_hash``:
the settings hash of every image name (``..._seed7_<hash>.png``) is then replaced by ``<hash>`` in entry names
and in every text and JSON output, so the pixels and outputs are still compared name for name.

Each part runs through the command-line config path, with the tests' tiny overlays (``tests/configs``) and
helpers (``tests/helpers``), on CPU, with fixed seeds:

- ``inference``: ``inference.json`` with two schedulers (``unipc_karras`` to PNG, ``ddim`` to DICOM);
- ``editing``: ``edit.json`` on a non-square radiograph with an edit mask and a keep mask;
- ``training``: both stages for 2 epochs (``train_autoencoder.json``, then ``train_diffusion.json`` on the
  autoencoder the first stage wrote), each in its own ``python -m monai.bundle run`` process;
- ``evaluation``: ``evaluate.json`` at test sizes (random-weight classifier and extractors), then the
  reconstruction-only overlay ``evaluate_reconstruction.json``.

Recorded, as SHA-256 digests: the decoded pixels of every image written (PNG/JPEG/DICOM pixel data or the
``.pt`` tensor, never file bytes: DICOM files carry dates and UIDs), every tensor of every checkpoint (sorted
keys), and the evaluation's ``summary.json`` / ``reconstruction.json`` / CSV / HTML outputs with the run's
folder replaced by ``<work>``. The JSON documents are also kept whole, so ``--compare`` can name the keys
that differ. ``--compare`` prints ``equal`` or ``different`` per entry and exits 1 on any difference.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import re
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

PARTS = ("inference", "editing", "training", "evaluation")
IMAGE_SUFFIXES = (".png", ".jpg", ".pt", ".dcm")
#: where the run's folder appears in a text output, it is replaced by this
WORK_PLACEHOLDER = "<work>"
#: the settings hash of an image name (``scripts.sampling.jobs.image_name``)
NAME_HASH = re.compile(r"(_seed-?\d+)_[0-9a-f]{8}\b")
#: whether image names are recorded without their settings hash (``--names_without_hash``)
NAMES_WITHOUT_HASH = {"enabled": False}


def normalised_text(text: str, work_dir: Path) -> str:
    """``text`` with the run's folder replaced by ``WORK_PLACEHOLDER`` (and name hashes by ``<hash>``, when asked)."""
    text = text.replace(str(work_dir), WORK_PLACEHOLDER)
    return NAME_HASH.sub(r"\1_<hash>", text) if NAMES_WITHOUT_HASH["enabled"] else text


def array_digest(array: np.ndarray) -> str:
    """SHA-256 of an array's dtype, shape and bytes (C order)."""
    array = np.ascontiguousarray(array)
    digest = hashlib.sha256(f"{array.dtype.str}{array.shape}".encode())
    digest.update(array.tobytes())
    return digest.hexdigest()


def tensor_digest(tensor: torch.Tensor) -> str:
    """SHA-256 of a tensor's dtype, shape and bytes (any dtype, bfloat16 included)."""
    tensor = tensor.detach().cpu().contiguous()
    digest = hashlib.sha256(f"{tensor.dtype}{tuple(tensor.shape)}".encode())
    digest.update(tensor.reshape(-1).view(torch.uint8).numpy().tobytes())
    return digest.hexdigest()


def image_digest(path: Path) -> str:
    """Digest of the pixels of an image file: decoded PNG/JPEG/DICOM pixel data, or the saved ``.pt`` tensor."""
    if path.suffix == ".dcm":
        import pydicom

        return array_digest(pydicom.dcmread(path).pixel_array)
    if path.suffix == ".pt":
        return tensor_digest(torch.load(path, map_location="cpu", weights_only=True))
    from PIL import Image

    with Image.open(path) as picture:
        return array_digest(np.asarray(picture))


def _flat_tensors(value, prefix: str = "") -> dict[str, torch.Tensor]:
    """Tensors of a nested checkpoint (dicts and lists), keyed by their path ``a/b/0/c``."""
    if isinstance(value, torch.Tensor):
        return {prefix: value}
    children = value.items() if isinstance(value, dict) else enumerate(value) if isinstance(value, list) else ()
    found = {}
    for key, child in children:
        found.update(_flat_tensors(child, f"{prefix}/{key}" if prefix else str(key)))
    return found


def checkpoint_digest(path: Path) -> str:
    """Digest of the sorted (key, tensor digest) pairs of every tensor of a checkpoint file."""
    tensors = _flat_tensors(torch.load(path, map_location="cpu", weights_only=True))
    lines = "".join(f"{key}\t{tensor_digest(tensors[key])}\n" for key in sorted(tensors))
    return hashlib.sha256(lines.encode()).hexdigest()


def text_digest(path: Path, work_dir: Path) -> str:
    """Digest of a text output, ``normalised_text``."""
    return hashlib.sha256(normalised_text(path.read_text(encoding="utf-8"), work_dir).encode()).hexdigest()


def normalised_document(path: Path, work_dir: Path):
    """A JSON output, ``normalised_text`` in every string."""
    return json.loads(normalised_text(path.read_text(encoding="utf-8"), work_dir))


def image_entries(folder: Path, work_dir: Path) -> dict[str, str]:
    """Pixel digests of every image below ``folder``, keyed by their path relative to ``work_dir``."""
    return {
        normalised_text(str(path.relative_to(work_dir)), work_dir): image_digest(path)
        for path in sorted(folder.rglob("*"))
        if path.suffix in IMAGE_SUFFIXES and path.is_file()
    }


class Snapshot:
    """What one run of the tool records: digests per entry, whole JSON documents, and the time of each part."""

    def __init__(self, work_dir: Path) -> None:
        self.work_dir = work_dir
        self.entries: dict[str, str] = {}
        self.documents: dict[str, object] = {}
        self.seconds: dict[str, float] = {}

    def add_images(self, folder: Path) -> None:
        self.entries.update(image_entries(folder, self.work_dir))

    def add_checkpoints(self, folder: Path) -> None:
        for path in sorted(folder.glob("*.pt")):
            self.entries[str(path.relative_to(self.work_dir))] = checkpoint_digest(path)

    def add_text(self, path: Path) -> None:
        self.entries[str(path.relative_to(self.work_dir))] = text_digest(path, self.work_dir)

    def add_document(self, path: Path) -> None:
        name = str(path.relative_to(self.work_dir))
        document = normalised_document(path, self.work_dir)
        self.documents[name] = document
        self.entries[name] = hashlib.sha256(json.dumps(document, sort_keys=True).encode()).hexdigest()

    def as_json(self) -> dict:
        return {"entries": self.entries, "documents": self.documents, "seconds": self.seconds}


#: overrides of every sampling, editing and evaluation run (``--model_version``)
RUN_OVERRIDES: dict[str, str] = {}


def _seeded_run(run, *args, **kwargs):
    """Call a workflow with the global RNGs seeded: random-weight networks built inside draw from them."""
    torch.manual_seed(0)
    np.random.seed(0)
    return run(*args, **{**RUN_OVERRIDES, **kwargs})


def run_inference_part(snapshot: Snapshot, model_dir: Path) -> None:
    """Text-to-image with two schedulers and two output formats (2 images each, batch 2)."""
    from tests.helpers.bundle import run_inference

    for scheduler, output_format in (("unipc_karras", "png"), ("ddim", "dcm")):
        output_dir = snapshot.work_dir / "inference" / f"{scheduler}_{output_format}"
        _seeded_run(run_inference, model_dir, output_dir, scheduler_name=scheduler, output_format=output_format,
                    num_samples=2, batch_size=2, seed=7)  # fmt: skip
        snapshot.add_images(output_dir)


def run_editing_part(snapshot: Snapshot, model_dir: Path) -> None:
    """One edit of a non-square radiograph inside an edit mask, with a keep mask on its left third."""
    from tests.helpers.editing import run_edit, write_image, write_mask

    inputs_dir = snapshot.work_dir / "editing_inputs"
    inputs_dir.mkdir(parents=True)
    image = write_image(inputs_dir / "chest.png")
    edit_mask = write_mask(inputs_dir / "edit.png", (40, 50, 72, 82))
    keep_mask = write_mask(inputs_dir / "keep.png", (0, 0, 28, 96))
    output_dir = snapshot.work_dir / "editing"
    _seeded_run(run_edit, model_dir, output_dir, image=str(image), edit_mask=str(edit_mask), keep_mask=str(keep_mask),
                strength=0.8, seed=3)  # fmt: skip
    snapshot.add_images(output_dir)


def run_training_part(snapshot: Snapshot, model_dir: Path, dataset_dir: Path) -> None:
    """Both training stages, 2 epochs each, through the CLI (the diffusion stage on the first stage's output)."""
    from tests.helpers.bundle import run_bundle, stage_configs

    autoencoder_dir = snapshot.work_dir / "training" / "autoencoder"
    diffusion_dir = snapshot.work_dir / "training" / "diffusion"
    common = {"dataset_dir": dataset_dir, "max_epochs": 2}
    run_bundle(stage_configs("autoencoder"), {**common, "train_dir": autoencoder_dir}, timeout=900)
    diffusion = {**common, "train_dir": diffusion_dir, "autoencoder_path": autoencoder_dir / "autoencoder.pt"}
    run_bundle(
        stage_configs("diffusion"), {**diffusion, "text_encoder_source": model_dir / "text_encoder"}, timeout=900
    )
    snapshot.add_checkpoints(autoencoder_dir)
    snapshot.add_checkpoints(diffusion_dir)


#: evaluation at the sizes of tests/evaluation/test_eval_workflow.py (64 px images need a 3-px MS-SSIM kernel)
EVALUATION_SETTINGS = {
    "msssim_kernel_size": 3,
    "num_real_images": 99,
    "num_report_images": 4,
    "num_unconditional_images": 3,
    "num_reconstruction_images": 99,
    "adherence_num_samples": 2,
    "batch_size": 4,
    "evaluate#batch_size": 4,
    "kid_subset_size": 3,
    "kid_num_subsets": 5,
    "prdc_nearest_k": 2,
    "pathology_min_images": 2,
    "memorisation_pairs": 3,
    "diversity_max_pairs": None,
    "xrv_weights": "random",
    "inception_weights": "random",
    "adherence_findings": [
        {"finding": "Pleural Effusion", "prompt": "Large right pleural effusion.", "xrv_label": "Effusion"},
        {"finding": "Support Devices", "prompt": "Endotracheal tube in place.", "xrv_label": None},
    ],
}


def run_evaluation_part(snapshot: Snapshot, model_dir: Path, dataset_dir: Path) -> None:
    """``evaluate.json`` (generation, every metric, report) and the reconstruction-only overlay."""
    from tests.helpers.bundle import CONFIGS, run_inference
    from tests.helpers.evaluation import write_chexpert_labels, write_tiny_raddino

    work = snapshot.work_dir
    evaluation_dir, reconstruction_dir = work / "evaluation", work / "evaluation_reconstruction"
    settings = {"dataset_dir": str(dataset_dir), **EVALUATION_SETTINGS}
    settings["raddino_source"] = str(write_tiny_raddino(work / "rad-dino"))
    settings["chexpert_labels_file"] = str(write_chexpert_labels(dataset_dir, work / "chexpert.csv.gz"))
    evaluate = str(CONFIGS / "evaluate.json")
    # before 1.9 the data definitions were a fragment of their own, merged before evaluate.json
    data = [str(CONFIGS / "data.json")] if (CONFIGS / "data.json").is_file() else []
    _seeded_run(run_inference, model_dir, evaluation_dir / "samples", *data, evaluate,
                evaluation_dir=str(evaluation_dir), **settings)  # fmt: skip
    snapshot.add_images(evaluation_dir)
    for name in ("summary.json",):
        snapshot.add_document(evaluation_dir / name)
    for name in ("report.html", "reconstruction.csv", "memorisation.csv", "prompts.csv"):
        snapshot.add_text(evaluation_dir / name)
    (work / "unused").mkdir()
    # evaluate.json first: the reconstruction-only config is read as an overlay of it (works for a standalone one too)
    reconstruction = str(CONFIGS / "evaluate_reconstruction.json")
    _seeded_run(run_inference, model_dir, work / "unused", *data, evaluate, reconstruction,
                evaluation_dir=str(reconstruction_dir), dataset_dir=str(dataset_dir), msssim_kernel_size=3,
                num_reconstruction_images=3, diffusion_path=str(work / "no_unet.pt"))  # fmt: skip
    snapshot.add_document(reconstruction_dir / "reconstruction.json")
    snapshot.add_text(reconstruction_dir / "reconstruction.csv")


def take_snapshot(parts, work_dir: Path) -> Snapshot:
    """Run ``parts`` in ``work_dir`` and record what they produce."""
    from tests.helpers.data import make_prepared_synthetic
    from tests.helpers.networks import write_tiny_weights

    torch.set_num_threads(1)  # float results then do not depend on the machine's core count
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
    snapshot = Snapshot(work_dir)
    model_dir = write_tiny_weights(work_dir / "models", seed=0)
    # 12 subjects keep training short; evaluation needs 30 for test sets above the PRDC k (as its tests)
    training_data = make_prepared_synthetic(work_dir / "training_data", 12, 64) if "training" in parts else None
    evaluation_data = make_prepared_synthetic(work_dir / "evaluation_data", 30, 64) if "evaluation" in parts else None
    for part in parts:
        start = time.perf_counter()
        if part == "inference":
            run_inference_part(snapshot, model_dir)
        elif part == "editing":
            run_editing_part(snapshot, model_dir)
        elif part == "training":
            run_training_part(snapshot, model_dir, training_data)
        else:
            run_evaluation_part(snapshot, model_dir, evaluation_data)
        snapshot.seconds[part] = round(time.perf_counter() - start, 1)
        print(f"{part}: {snapshot.seconds[part]} s", file=sys.stderr)
    return snapshot


def _document_differences(a, b, path: str = "") -> list[str]:
    """Paths of the leaves where two JSON documents differ."""
    if isinstance(a, dict) and isinstance(b, dict):
        return [
            d for key in sorted(set(a) | set(b)) for d in _document_differences(a.get(key), b.get(key), f"{path}/{key}")
        ]
    if isinstance(a, list) and isinstance(b, list) and len(a) == len(b):
        return [d for i, (x, y) in enumerate(zip(a, b)) for d in _document_differences(x, y, f"{path}/{i}")]
    return [] if a == b else [f"{path or '/'}: {a!r} != {b!r}"]


def compare(path_a: str, path_b: str) -> bool:
    """Print ``equal`` / ``different`` / ``only in A|B`` per entry of two snapshots; True when all are equal."""
    a, b = (json.loads(Path(p).read_text()) for p in (path_a, path_b))
    all_equal = True
    for name in sorted(set(a["entries"]) | set(b["entries"])):
        if name not in b["entries"] or name not in a["entries"]:
            print(f"only in {'A' if name in a['entries'] else 'B'}  {name}")
            all_equal = False
            continue
        equal = a["entries"][name] == b["entries"][name]
        all_equal &= equal
        print(f"{'equal    ' if equal else 'different'}  {name}")
        if not equal and name in a.get("documents", {}) and name in b.get("documents", {}):
            for difference in _document_differences(a["documents"][name], b["documents"][name]):
                print(f"    {difference}")
    print(f"{len(set(a['entries']) | set(b['entries']))} entries: {'all equal' if all_equal else 'DIFFERENT'}")
    return all_equal


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--output_json", help="where to write the snapshot")
    parser.add_argument("--parts", default=",".join(PARTS), help=f"comma-separated subset of {','.join(PARTS)}")
    parser.add_argument("--work_dir", help="folder for the runs' outputs (default: a temporary one, removed)")
    parser.add_argument("--compare", nargs=2, metavar=("A", "B"), help="compare two snapshot files")
    parser.add_argument("--model_version", help="the version recorded in images' identities (default: the bundle's)")
    parser.add_argument("--names_without_hash", action="store_true", help="record image names without their hash")
    args = parser.parse_args(argv)
    if args.model_version:
        RUN_OVERRIDES["model_version"] = args.model_version
    NAMES_WITHOUT_HASH["enabled"] = args.names_without_hash
    if args.compare:
        return 0 if compare(*args.compare) else 1
    if not args.output_json:
        parser.error("--output_json or --compare is needed")
    parts = [p.strip() for p in args.parts.split(",") if p.strip()]
    unknown = sorted(set(parts) - set(PARTS))
    if unknown:
        parser.error(f"unknown --parts {unknown}: choose from {list(PARTS)}")
    with tempfile.TemporaryDirectory(prefix="snapshot_") as temporary:
        work_dir = Path(args.work_dir).resolve() if args.work_dir else Path(temporary)
        work_dir.mkdir(parents=True, exist_ok=True)
        snapshot = take_snapshot(parts, work_dir)
    Path(args.output_json).parent.mkdir(parents=True, exist_ok=True)
    Path(args.output_json).write_text(json.dumps(snapshot.as_json(), indent=1, sort_keys=True) + "\n")
    print(f"{len(snapshot.entries)} entries written to {args.output_json}", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
