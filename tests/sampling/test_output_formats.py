"""Output formats are one registry (``scripts.sampling.writer.OUTPUT_FORMATS``): a new format is one writer
function and one entry, and every writer of the bundle (``write_image``, ``SampleWriter``, ``existing_image``)
then knows it."""

from __future__ import annotations

import csv
from types import SimpleNamespace

import pytest
import torch

from scripts.sampling.writer import OUTPUT_FORMATS, OutputFormat, SampleWriter, existing_image, write_image


def write_text_table(image: torch.Tensor, file: str, job: dict, decimals: int = 2) -> None:
    """A toy format: the intensities of (1, H, W) ``image`` as a text table, one line per image row."""
    with open(file, "w", encoding="utf-8") as f:
        for row in image[0].tolist():
            f.write(" ".join(f"{value:.{decimals}f}" for value in row) + "\n")


def _read_text_table(path) -> torch.Tensor:
    with open(path, encoding="utf-8") as f:
        return torch.tensor([[float(value) for value in line.split()] for line in f])[None]


@pytest.fixture
def text_format(monkeypatch):
    """The toy format registered as ``txt`` (4 decimals) for one test."""
    monkeypatch.setitem(OUTPUT_FORMATS, "txt", OutputFormat(".txt", write_text_table, {"decimals": 4}))


def test_a_registered_format_is_written_by_write_image(text_format, tmp_path):
    image = torch.linspace(0.0, 1.0, 6).reshape(1, 2, 3)
    path = write_image(image * 1.5 - 0.25, str(tmp_path / "a.txt"), "txt")  # write_image clamps to [0, 1]
    written = _read_text_table(path)
    assert written.shape == (1, 2, 3)
    assert torch.allclose(written, (image * 1.5 - 0.25).clamp(0, 1), atol=1e-4)
    assert len(open(path).readline().split()[1]) == len("0.0500"), "the entry's options reach the writer"


def test_a_registered_format_is_written_by_the_sample_writer(text_format, tmp_path):
    output_dir = tmp_path / "samples"
    writer = SampleWriter(output_dir, "TXT")
    writer.started()
    images = torch.rand(2, 1, 4, 5, generator=torch.Generator().manual_seed(0))
    batch = {"name": ["00000_a", "00001_b"], "prompt": ["a", "b"], "seed": [1, 2]}
    writer(SimpleNamespace(state=SimpleNamespace(output={"pred": images}, batch=batch)))
    with open(output_dir / "manifest.csv", newline="") as f:
        assert [row["file"] for row in csv.DictReader(f)] == ["00000_a.txt", "00001_b.txt"]
    assert existing_image(str(output_dir), "00001_b") == str(output_dir / "00001_b.txt")
    assert torch.allclose(_read_text_table(output_dir / "00001_b.txt"), images[1], atol=1e-4)


def test_an_unregistered_format_is_refused_naming_the_registered_ones(tmp_path):
    registered = r"\['dcm', 'jpg', 'png', 'png16', 'pt'\]"
    with pytest.raises(ValueError, match=rf"output_format must be one of {registered}, got 'bmp'"):
        SampleWriter(tmp_path / "samples", "bmp")
    with pytest.raises(ValueError, match="output_format must be one of"):
        write_image(torch.rand(1, 4, 4), str(tmp_path / "a.bmp"), "bmp")
    assert list(tmp_path.iterdir()) == []


def test_the_settings_check_accepts_exactly_the_registered_formats(text_format):
    """The command line's check reads the registry: a registered format passes, an unregistered one is refused."""
    from scripts.sampling.settings import SettingsError, check_settings

    check_settings(output_format="txt", num_inference_steps=2, guidance_scale=1.0, batch_size=1, num_samples=1)
    with pytest.raises(SettingsError, match=r"choose one of \['png', 'png16', 'jpg', 'pt', 'dcm', 'txt'\]"):
        check_settings(output_format="bmp", num_inference_steps=2, guidance_scale=1.0, batch_size=1, num_samples=1)
