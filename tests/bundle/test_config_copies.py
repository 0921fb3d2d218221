"""The definitions that the standalone configs copy from one another stay equal.

``configs/inference.json``, ``configs/train_autoencoder.json`` and ``configs/train_diffusion.json`` each run alone,
so each holds its own copy of what it shares with the others (networks, weights, text encoder, noise schedule,
data loading, training plumbing), ``configs/evaluate.json`` copies the data loading, and the data-set configs
(``configs/dataset.json``, ``configs/dataset_utility.json``) copy it and the evaluation's feature extractors. Every
key that two of them define is either a copy, held equal here after parsing, or on a named list of keys that differ
on purpose.
The tiny overlays are held to the same rule.
"""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest
from monai.bundle import ConfigParser

from helpers.bundle import CONFIGS

#: files that copy definitions from one another, by group
GROUPS = {
    "standalone": (
        "inference.json",
        "train_autoencoder.json",
        "train_diffusion.json",
        "evaluate.json",
        "dataset.json",
        "dataset_utility.json",
    ),
    "tiny": (
        "tiny/inference.json",
        "tiny/train_autoencoder.json",
        "tiny/train_diffusion.json",
        "tiny/distill.json",
        "tiny/dataset_utility.json",
    ),
}
#: sections whose entries (and handler lists, entry by entry) are compared one by one
SECTIONS = ("train", "validate")

#: copies: equal wherever they appear in a group
SHARED = {
    "model": (
        "bundle_root model_dir device distributed join_process_group load_old diffusion_path image_size latent_shape "
        "scale_factor use_flash_attention autoencoder_def network_def network"
    ),
    "text and noise": (
        "tokenizer_path text_encoder_source text_encoder_subfolder null_prompt tokenizer text_encoder noise_schedule"
    ),
    "sampler": "scheduler_name guidance_scale scheduler batched_guidance guidance_interval cache_interval sampler",
    "data": (
        "datalist_file load_image_transforms affine_rotate_degrees affine_translate_pixels affine_scale "
        "affine_augmentation msssim_weights"
    ),
    "training plumbing": (
        "log_dir is_main_process seed use_mlflow mlflow_tracking_uri num_workers amp amp_dtype amp_kwargs "
        "checkpoint_interval checkpoints_kept resume tensorboard_writer map_location best_model_saver set_determinism "
        "train_model initialize init_load_old train#datalist train#dataset train#sampler train#dataloader "
        "train#handlers#0 train#handlers#1 train#handlers#2 train#handlers#3 train#handlers#4 validate#batch_size "
        "validate#datalist validate#dataset validate#sampler validate#dataloader validate#handlers#0 "
        "validate#handlers#1 validate#handlers#2 validate#handlers#3"
    ),
    "evaluation and data sets": (
        "chexpert_labels_file inception_weights memorisation_extractor memorisation_training_images raddino_source "
        "real_transform training_section test_section xrv_weights"
    ),
    "data sets": "classifier_def classifier_image_size synthetic_dir",
    "tiny sizes": (
        "image_size latent_shape autoencoder_def#channels autoencoder_def#norm_num_groups network_def#channels "
        "network_def#num_head_channels network_def#cross_attention_dim train#batch_size num_workers val_interval "
        "use_mlflow ema_decay ema_warmup_iterations sample_interval sample_prompts sample_latents"
    ),
}
SHARED_KEYS = {key for keys in SHARED.values() for key in keys.split()}

#: keys several files define with values of their own, and why
DIFFERENT = {
    "imports": "each config imports what it uses",
    "+imports": "each overlay adds the imports of its own steps",
    "prompt_rows": "a data set's prompts are the rows of its plan",
    "writer": "a data set keeps (and rejects) images with non-finite pixels, which inference refuses to write",
    "run": "each workflow runs its own steps",
    "finalize": "training closes its TensorBoard writer",
    "autoencoder": "stage 1 trains it from init_autoencoder_path; stage 2 and inference load trained weights",
    "autoencoder_path": "stage 2 reads stage 1's output; inference the released weights",
    "dataset_dir": "inference's data are its prompts (the bundle root); training and evaluation read prepared data",
    "output_dir": "each workflow writes its own folder",
    "prompts_file": "evaluation writes the prompts of its sample sets",
    "batch_size": "evaluation samples 8 images per UNet call",
    "num_inference_steps": "stage 2's sample images use 50 steps; inference 20; tiny runs 2 or 3",
    "precision": "inference resolves autocast_dtype; stage 2's sample images run in float32",
    "decoder_precision": "inference resolves decode_dtype; stage 2's sample images decode in float32",
    "channels_last": "a speed switch of inference; training samples plainly",
    "compiled": "inference compiles by compile auto; a training network's weights change, so it never compiles",
    "progress": "inference shows progress bars; training and tiny runs do not",
    "train_dir": "each stage writes its own folder",
    "mlflow_experiment_name": "one experiment per stage",
    "mlflow_run_name": "one run name per stage",
    "max_epochs": "each stage's recipe (and tiny run) has its own length",
    "val_interval": "validation is cheap for the autoencoder (every epoch) and costly for the UNet (every 5)",
    "best_model_weights": "each stage saves its own network",
    "best_model_filename": "each stage saves its own network",
    "key_metric_lower_is_better": "MS-SSIM is higher-better, the diffusion loss lower-better",
    "checkpoint_objects": "each stage checkpoints its own networks and optimisers",
    "checkpoint_engine_attributes": "each stage's trainer has its own loss scalers",
    "train#batch_size": "each stage's recipe has its own batch",
    "train#preprocessing": "each stage augments and adds text its own way",
    "train#inferer": "each stage's forward pass",
    "train#loss_tag": "each stage logs its own loss terms",
    "train#loss_output": "each stage logs its own loss terms",
    "train#trainer": "each stage's trainer",
    "validate#preprocessing": "each stage validates on its own inputs",
    "validate#inferer": "each stage's forward pass",
    "validate#key_metric": "MS-SSIM for the autoencoder, the loss for the UNet",
    "validate#evaluator": "each stage's evaluator",
    "lr": "distillation trains faster than stage 2 in tiny runs",
    "lr_warmup_iterations": "tiny runs warm up in two steps either way",
}


def _entries(path: Path) -> dict:
    """Top-level keys of a config file after parsing, with ``train`` / ``validate`` entries and their handler lists
    spelled out (``train#handlers#0``) so that a shared piece of a section is compared alone."""
    config = ConfigParser.load_config_file(str(path))
    entries = {key: value for key, value in config.items() if not key.startswith("_")}
    for section in SECTIONS:
        for key, value in (entries.pop(section, None) or {}).items():
            if key == "handlers":
                entries.update({f"{section}#handlers#{i}": handler for i, handler in enumerate(value)})
            else:
                entries[f"{section}#{key}"] = value
    return entries


def config_copy_problems(config_dir: Path) -> list[str]:
    """Copies that differ, and keys defined in several files of a group that are on neither list."""
    problems = []
    for group, names in GROUPS.items():
        files = {name: _entries(Path(config_dir) / name) for name in names}
        keys = sorted({key for entries in files.values() for key in entries})
        for key in keys:
            having = {name: entries[key] for name, entries in files.items() if key in entries}
            if len(having) < 2 or key in DIFFERENT:
                continue
            if key not in SHARED_KEYS:
                problems.append(f"{group}: {key} is in {sorted(having)} but on neither SHARED nor DIFFERENT")
            elif any(value != next(iter(having.values())) for value in having.values()):
                problems.append(f"{group}: the copies of {key} differ between {sorted(having)}")
    return problems


def test_the_copies_of_shared_definitions_are_equal():
    assert config_copy_problems(CONFIGS) == []


def test_every_shared_definition_is_copied_and_every_difference_is_real():
    """The lists say something: each shared key has at least two copies, and each listed difference is one."""
    entries = {name: _entries(CONFIGS / name) for names in GROUPS.values() for name in names}
    for key in SHARED_KEYS:
        assert sum(key in e for e in entries.values()) >= 2, f"{key} is listed as shared but has one definition"
    for key in DIFFERENT:
        values = [repr(e[key]) for e in entries.values() if key in e]
        assert len(set(values)) >= 2, f"{key} is listed as different but its definitions are equal (or single)"


@pytest.mark.parametrize(
    "name, key, value",
    [
        ("train_diffusion.json", "network_def", "channels"),
        ("inference.json", "noise_schedule", "beta_end"),
        ("train_autoencoder.json", "load_image_transforms", None),
        ("tiny/distill.json", "network_def#channels", None),
    ],
)
def test_an_edited_copy_is_found(tmp_path, name, key, value):
    import json

    shutil.copytree(CONFIGS, tmp_path / "configs")
    path = tmp_path / "configs" / name
    config = json.loads(path.read_text(encoding="utf-8"))
    if value is None:
        config[key] = config[key][:-1]
    else:
        config[key][value] = 2 * config[key][value] if not isinstance(config[key][value], list) else [1]
    path.write_text(json.dumps(config), encoding="utf-8")
    problems = config_copy_problems(tmp_path / "configs")
    assert len(problems) == 1 and f"the copies of {key} differ" in problems[0], problems


def test_a_new_key_in_two_configs_must_be_classified(tmp_path):
    import json

    shutil.copytree(CONFIGS, tmp_path / "configs")
    for name in ("inference.json", "train_diffusion.json"):
        path = tmp_path / "configs" / name
        config = json.loads(path.read_text(encoding="utf-8"))
        path.write_text(json.dumps({**config, "new_setting": 1}), encoding="utf-8")
    assert config_copy_problems(tmp_path / "configs") == [
        "standalone: new_setting is in ['inference.json', 'train_diffusion.json'] but on neither SHARED nor DIFFERENT"
    ]
