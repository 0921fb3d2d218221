"""configs/metadata.json tells the truth about the configs it ships with."""

from __future__ import annotations

import importlib.metadata
import json
import re
import shutil

import pytest
from monai.bundle import ConfigParser

from helpers.bundle import BUNDLE_ROOT, INFERENCE_CONFIGS

REQUIRED = (
    "version",
    "changelog",
    "monai_version",
    "pytorch_version",
    "numpy_version",
    "required_packages_version",
    "name",
    "task",
    "description",
    "authors",
    "copyright",
    "network_data_format",
)


def test_metadata_matches_the_inference_config():
    meta = json.loads((BUNDLE_ROOT / "configs" / "metadata.json").read_text())
    assert not [key for key in REQUIRED if key not in meta]
    assert meta["version"] in meta["changelog"]
    parser = ConfigParser()
    parser.read_config(list(INFERENCE_CONFIGS))
    formats = meta["network_data_format"]
    inputs, outputs, images = formats["inputs"], formats["outputs"], formats["post_processed_outputs"]
    latent_channels, *latent_size = parser["latent_shape"]
    # "image" and "pred": the names MONAI's verify_net_in_out reads the network's input and output shapes from
    assert inputs["image"]["num_channels"] == latent_channels == parser["network_def"]["in_channels"]
    assert inputs["image"]["spatial_shape"] == latent_size == outputs["pred"]["spatial_shape"]
    assert outputs["pred"]["num_channels"] == parser["network_def"]["out_channels"]
    assert inputs["context"]["num_channels"] == 77
    assert inputs["context"]["spatial_shape"] == [parser["network_def"]["cross_attention_dim"]]
    assert images["image"]["spatial_shape"] == [parser["image_size"]] * 2
    assert images["image"]["value_range"] == [0, 1] and images["image"]["num_channels"] == 1
    # 8x downsampling of the autoencoder (three halvings for four channel levels)
    assert parser["image_size"] // 2 ** (len(parser["autoencoder_def"]["channels"]) - 1) == latent_size[0]
    import monai
    import torch

    assert meta["monai_version"] == monai.__version__
    assert meta["pytorch_version"] == torch.__version__.split("+")[0]


SCHEMA = BUNDLE_ROOT / "tests" / "schemas" / "meta_schema_20240725.json"
METADATA = BUNDLE_ROOT / "configs" / "metadata.json"


def test_metadata_validates_against_the_model_zoo_schema(tmp_path):
    """MONAI's own check (``verify_metadata``), offline: the schema is the vendored copy of the one it names."""
    import jsonschema
    from monai.bundle import verify_metadata

    meta = json.loads(METADATA.read_text())
    assert meta["schema"].endswith("/" + SCHEMA.name)
    schema = json.loads(SCHEMA.read_text())
    jsonschema.validate(meta, schema)  # raises on the first violation
    shutil.copy(SCHEMA, tmp_path / SCHEMA.name)  # verify_metadata skips downloading a schema file that exists
    verify_metadata(meta_file=str(METADATA), filepath=str(tmp_path / SCHEMA.name))
    for section in ("network_data_format", "autoencoder_data_format"):
        for role in ("inputs", "outputs"):
            for name, tensor in meta[section][role].items():
                missing = [
                    k
                    for k in ("type", "format", "num_channels", "spatial_shape", "dtype", "value_range")
                    if k not in tensor
                ]
                assert not missing, f"{section}.{role}.{name} lacks {missing}"


def test_schema_check_rejects_an_input_without_format():
    import jsonschema

    meta = json.loads(METADATA.read_text())
    del meta["network_data_format"]["inputs"]["timesteps"]["format"]
    with pytest.raises(jsonschema.ValidationError, match="'format' is a required property"):
        jsonschema.validate(meta, json.loads(SCHEMA.read_text()))


def _pins() -> dict[str, str]:
    pins = {}
    for line in (BUNDLE_ROOT / "requirements.txt").read_text().splitlines():
        match = re.match(r"^([A-Za-z0-9_.-]+)==([^\s;#]+)", line)
        if match:
            pins[match.group(1).lower()] = match.group(2)
    return pins


def test_recorded_versions_are_the_pinned_and_installed_ones():
    meta = json.loads(METADATA.read_text())
    recorded = {
        **meta["required_packages_version"],
        "monai": meta["monai_version"],
        "torch": meta["pytorch_version"],
        "numpy": meta["numpy_version"],
    }
    pins = _pins()
    for package, version in recorded.items():
        assert pins.get(package.lower()) == version, (
            f"requirements.txt pins {package} to {pins.get(package.lower())}, metadata says {version}"
        )
        installed = importlib.metadata.version(package).split("+")[0]
        assert installed == version, f"{package} {installed} is installed, metadata says {version}"


def test_model_card_follows_the_model_zoo_template():
    card = (BUNDLE_ROOT / "docs" / "README.md").read_text(encoding="utf-8")
    headings = [line.strip() for line in card.splitlines() if line.startswith("#")]
    for heading in (
        "# Model Overview",
        "## Data",
        "## Training configuration",
        "### Input",
        "### Output",
        "## Performance",
        "## MONAI Bundle Commands",
        "## Export",
        "# References",
        "# License",
    ):
        assert heading in headings, f"docs/README.md lacks '{heading}'"
    assert "**Authors**" in card and "**Tags**" in card
    assert "not supported" in card.split("## Export", 1)[1].split("\n#", 1)[0]
    terms = (BUNDLE_ROOT / "docs" / "data_license.txt").read_text(encoding="utf-8")
    assert "PhysioNet Credentialed Health Data License" in terms and "data use agreement" in terms


def test_readme_names_the_bundles_own_version():
    """The download commands of README.md name the version in configs/metadata.json (read, not written here)."""
    version = json.loads((BUNDLE_ROOT / "configs" / "metadata.json").read_text(encoding="utf-8"))["version"]
    readme = (BUNDLE_ROOT / "README.md").read_text(encoding="utf-8")
    named = re.findall(r"--version (\d+\.\d+\.\d+)", readme) + re.findall(r"cxr_ldm_v(\d+\.\d+\.\d+)\.zip", readme)
    assert named, "README.md names no bundle version: did the download example move?"
    assert set(named) == {version}, f"README.md names version(s) {sorted(set(named))}, configs/metadata.json {version}"
