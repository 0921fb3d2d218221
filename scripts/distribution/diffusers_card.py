"""The model card (``README.md`` with YAML front matter) of an exported diffusers folder."""

from __future__ import annotations

import json

from scripts.distribution.diffusers_configs import DEFAULT_SCHEDULER, DIFFUSERS_SCHEDULERS

LICENCE_NAME = "physionet-credentialed-health-data-1.5.0"
LICENCE_LINK = "https://physionet.org/about/licenses/physionet-credentialed-health-data-license-150/"

FRONT_MATTER = f"""---
license: other
license_name: {LICENCE_NAME}
license_link: {LICENCE_LINK}
library_name: diffusers
pipeline_tag: text-to-image
inference: false
tags:
- medical-imaging
- chest-x-ray
- radiology
- latent-diffusion
- monai
- synthetic-data
- not-for-clinical-use
---
"""


def _origin_text(origin: dict) -> str:
    if origin["load_old"]:
        source = (
            "the released weights of the MONAI model-zoo model `cxr_image_synthesis_latent_diffusion_model` "
            "(Pinaya et al.), trained on MIMIC-CXR"
        )
    else:
        source = "weights trained with cxr-ldm (their training data is whatever that training run used)"
    return (
        f"Converted by cxr-ldm {origin['model_version']} (`python -m scripts.distribution.export_diffusers`) from "
        f"{source}. Weights fingerprints: autoencoder `{origin['autoencoder_weights']}`, diffusion UNet "
        f"`{origin['diffusion_weights']}`, text encoder `{origin['text_encoder']}`. The tensors are those of the "
        "MONAI networks, renamed; nothing was retrained."
    )


def _training_data_text(origin: dict) -> str:
    if origin["load_old"]:
        return "These weights were trained on MIMIC-CXR images and reports."
    return (
        "The released weights of this model were trained on MIMIC-CXR images and reports; weights trained or "
        "fine-tuned on MIMIC-CXR with cxr-ldm fall under the same terms."
    )


def _parity_text(parity: dict | None) -> str:
    if parity is None:
        return "Not measured at export (`--check_steps 0`)."
    return (
        f"Measured at export on `{parity['device']}`, float32: prompt {json.dumps(parity['prompt'])}, seed "
        f"{parity['seed']}, {parity['num_inference_steps']} steps of `{parity['scheduler']}`, guidance "
        f"{parity['guidance_scale']}: the largest difference between this pipeline's image and the bundle's is "
        f"{parity['max_abs_difference']:.2e} on [0, 1] (RMSE {parity['rmse']:.2e}; "
        f"{parity['max_grey_levels']} grey level(s) in 8 bits). One image took "
        f"{parity['bundle_seconds_per_image']:.1f} s through the bundle and "
        f"{parity['diffusers_seconds_per_image']:.1f} s through this pipeline."
    )


def _scheduler_lines() -> str:
    lines = []
    for name, (class_name, settings) in sorted(DIFFUSERS_SCHEDULERS.items()):
        arguments = ", ".join(f"{key}={value!r}" for key, value in settings.items())
        lines.append(f"| `{name}` | `{class_name}.from_config(pipe.scheduler.config, {arguments})` |")
    return "\n".join(lines)


def _null_prompt_text(origin: dict) -> str:
    if origin["null_prompt"] == "empty_prompt":
        return (
            "The unconditional branch of guidance is the empty prompt, as the pipeline encodes it by default "
            '(`negative_prompt` unset or "").'
        )
    return (
        f"This export was made with the bundle's null prompt `{origin['null_prompt']}` (BOS then 76 EOS tokens), which "
        "text cannot spell: pass its embedding, `pipe.text_encoder(torch.tensor([[49406] + [49407] * 76]))"
        ".last_hidden_state`, repeated per image, as `negative_prompt_embeds`."
    )


def model_card(origin: dict, parity: dict | None) -> str:
    """The card's Markdown: front matter, origin, intended use, licence of the training data, use, parity."""
    size = int(origin["image_size"])
    return f"""{FRONT_MATTER}
# cxr-ldm: chest X-rays from radiology text (diffusers export)

A latent diffusion model that generates {size}×{size} one-channel frontal chest radiographs from the findings /
impression text of a radiology report.

## Origin
{_origin_text(origin)}

## Intended use: research only, **not for diagnosis**
Generative-model research, data-augmentation experiments, education and benchmarking. The images are
synthetic: what they show is not a patient, and they must not be used for diagnosis or any clinical decision.
MIMIC-CXR comes from one hospital system (adult patients; PA views were used): a model trained on it reflects
that population, its devices and its reporting style, and this one has not been evaluated for fairness.

## Licence of the training data
{_training_data_text(origin)} MIMIC-CXR-JPG 2.0.0 and MIMIC-CXR 2.0.0 (PhysioNet) are distributed under
the PhysioNet Credentialed Health Data License 1.5.0 ({LICENCE_LINK}) and its data use agreement: access
only for credentialed users who signed it, scientific research only, no attempt to identify any individual,
no sharing of the data or of anything from which it can be recovered with anyone who has not signed it, and
no use of third-party services that could retain it. Whether a model trained on it may be shared is for its
owner to judge under that agreement. The full text of the terms as the bundle states them is in
`data_license.txt`. The code (including `vae/cxr_autoencoder.py`) is Apache-2.0.

## Use
```python
import torch
from diffusers import DiffusionPipeline

pipe = DiffusionPipeline.from_pretrained("path/to/this/folder", trust_remote_code=True)
seeds = [42, 43]
images = pipe(
    ["Big right-sided pleural effusion", "No acute cardiopulmonary process"],
    num_inference_steps=20,
    guidance_scale=7.0,
    generator=[torch.Generator().manual_seed(s) for s in seeds],  # one CPU generator per image
    output_type="pt",
).images  # (2, 1, {size}, {size}) in [0, 1]
```
`trust_remote_code=True` loads `vae/cxr_autoencoder.py`: diffusers' `AutoencoderKL` without the SiLU before
its output convolutions (this model's autoencoder has none) and with images in [0, 1] inside. With
`output_type="pil"` the images are 8-bit greyscale (mode `L`); with `"np"`, arrays (B, {size}, {size}, 1).
One CPU `torch.Generator` per image, seeded with the image's seed, gives the bundle's image of that seed
(the bundle's image *i* of a prompt uses seed `seed + i`). Guidance at or below 1 runs the conditional branch
only. {_null_prompt_text(origin)}

The folder's scheduler is the bundle's default (`{DEFAULT_SCHEDULER}`). The bundle's other samplers, with the
settings that make them step as the bundle does:

| bundle `scheduler_name` | diffusers scheduler |
| --- | --- |
{_scheduler_lines()}

## Parity with the bundle
{_parity_text(parity)}

## Model
- Autoencoder: MONAI `AutoencoderKL` (3 latent channels, 8× downsampling), latents scaled by
  {origin["scale_factor"]} (`vae.config.scaling_factor`).
- Diffusion UNet: `UNet2DConditionModel`; its noise schedule and prediction type are in
  `scheduler/scheduler_config.json`.
- Text encoder: the Stable Diffusion 2.x text encoder (OpenCLIP ViT-H/14 text tower, `last_hidden_state`).

Cite Pinaya et al., "Brain imaging generation with latent diffusion models" (DGM4MICCAI 2022) and MIMIC-CXR
(Johnson et al., Scientific Data 2019).
"""
