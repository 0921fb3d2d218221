"""``python -m scripts.evaluation.compare``: FID, KID and PRDC of one image set against another per feature extractor.

For sets outside the evaluation workflow, e.g. a CheXGenBench benchmark set against a folder of real
test images::

    python -m scripts.evaluation.compare chexgenbench/synthetic_images /data/real_test \\
        --extractors xrv,raddino,inception
"""

from __future__ import annotations

import json
import os

import torch

from scripts.common.files import atomic_write_json
from scripts.evaluation import extractors as extractors_lib
from scripts.evaluation import fidelity, xrv
from scripts.evaluation.fid import items_for
from scripts.evaluation.fidelity import fidelity_scores


def main(
    generated: str,
    real: str,
    extractors: str | tuple = "xrv",
    xrv_weights: str | None = "models/xrv/densenet121-res224-all.pt",
    raddino_source: str = extractors_lib.RADDINO_HUB_ID,
    inception_weights: str | None = f"models/{extractors_lib.INCEPTION_FILE}",
    dataset_dir: str | None = None,
    limit: int | None = None,
    kid_num_subsets: int = fidelity.KID_SUBSETS,
    kid_subset_size: int = fidelity.KID_SUBSET_SIZE,
    prdc_nearest_k: int = fidelity.PRDC_NEAREST_K,
    seed: int = 0,
    cache_dir: str | None = None,
    batch_size: int = 16,
    device: str | None = None,
    output_json: str | None = None,
) -> dict:
    """FID, KID and PRDC of ``generated`` against ``real`` per extractor; prints and returns them.

    Args:
        generated, real: folders of PNG/JPEG/DICOM/.pt images, or ``datalist.json#section`` (with ``dataset_dir``).
        extractors: comma-separated names from ``xrv``, ``raddino``, ``inception``.
        xrv_weights, raddino_source, inception_weights: weights of each (``"random"``: random weights, for
            trying the command; the numbers then mean nothing).
        limit: the first ``limit`` images of each set (sorted by name).
    """
    device = torch.device(device or ("cuda" if torch.cuda.is_available() else "cpu"))
    names = [n.strip() for n in (extractors.split(",") if isinstance(extractors, str) else extractors) if n.strip()]
    xrv_model = xrv.load_densenet(xrv_weights, device=device) if "xrv" in names else None
    models = extractors_lib.load_extractors(names, xrv_model, raddino_source, inception_weights, device)
    sets = {"generated": items_for(generated, dataset_dir, limit), "real": items_for(real, dataset_dir, limit)}
    summary = {"generated": os.fspath(generated), "real": os.fspath(real), "extractors": {}}
    for name, extractor in models.items():
        features = {
            role: extractors_lib.set_features(extractor, items, role, None, cache_dir, batch_size, True)
            for role, items in sets.items()
        }
        scores = fidelity_scores(features["generated"], features["real"], kid_num_subsets, kid_subset_size,
                                 prdc_nearest_k, seed)  # fmt: skip
        summary["extractors"][name] = {**scores, "weights": extractor.weights_source}
    if output_json:
        atomic_write_json(output_json, summary)
    print(json.dumps(summary, indent=2))
    return summary


if __name__ == "__main__":
    import fire

    fire.Fire(main, serialize=lambda summary: None)
