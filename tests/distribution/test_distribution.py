"""Large-file download (hash, resume, manual instructions) and the model-zoo release zip, over loopback HTTP."""

from __future__ import annotations

import hashlib
import http.server
import os
import shutil
import subprocess
import sys
import threading
import zipfile
from pathlib import Path

import numpy as np
import pytest
import yaml
from monai.apps.utils import HashCheckError
from monai.bundle import download as monai_download
from monai.bundle import download_large_files

from helpers.bundle import BUNDLE_ROOT, read_png, run_inference
from scripts.distribution import download, pack


class _RangeHandler(http.server.SimpleHTTPRequestHandler):
    """Static files with HTTP Range support; records the Range headers it saw."""

    ranges: list = []

    def log_message(self, *args):
        pass

    def do_GET(self):
        path = self.translate_path(self.path)
        if not os.path.isfile(path):
            self.send_error(404)
            return
        data = Path(path).read_bytes()
        header = self.headers.get("Range")
        type(self).ranges.append(header)
        if header:
            start = int(header.split("=")[1].split("-")[0])
            self.send_response(206)
            self.send_header("Content-Range", f"bytes {start}-{len(data) - 1}/{len(data)}")
            data = data[start:]
        else:
            self.send_response(200)
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)


@pytest.fixture
def http_root(tmp_path):
    """(folder served, base URL) of a loopback HTTP server."""
    root = tmp_path / "served"
    root.mkdir()
    handler = type("Handler", (_RangeHandler,), {"ranges": []})
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), lambda *a, **k: handler(*a, directory=str(root), **k))
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield root, f"http://127.0.0.1:{server.server_address[1]}", handler
    server.shutdown()
    server.server_close()


def _python(args: list[str], cwd) -> subprocess.CompletedProcess:
    """``python <args>`` in ``cwd``, offline, with nothing of this checkout on PYTHONPATH (as a user would)."""
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "PYTHONPATH": ""}
    return subprocess.run([sys.executable, *args], cwd=cwd, env=env, capture_output=True, text=True, timeout=300)


def _entry(path, url, data: bytes) -> dict:
    return {"path": path, "url": url, "hash_type": "md5", "hash_val": hashlib.md5(data).hexdigest()}


def test_download_verifies_resumes_and_skips(http_root, tmp_path):
    root, base, handler = http_root
    data = os.urandom(3 * download.CHUNK + 123)
    (root / "model.pt").write_bytes(data)
    bundle = tmp_path / "bundle"
    entry = _entry("models/model.pt", f"{base}/model.pt", data)
    # An interrupted earlier download left the first part: it is continued, not restarted.
    (bundle / "models").mkdir(parents=True)
    (bundle / "models" / "model.pt.part").write_bytes(data[:1000])
    path = download.download_entry(entry, str(bundle), progress=False)
    assert Path(path).read_bytes() == data and not Path(path + ".part").exists()
    assert handler.ranges == ["bytes=1000-"]
    # Present with the right hash: skipped without a request.
    download.download_entry(entry, str(bundle), progress=False)
    assert len(handler.ranges) == 1


def test_download_rejects_bad_hash_and_explains_manual_placement(http_root, tmp_path, capsys):
    root, base, _ = http_root
    (root / "model.pt").write_bytes(b"corrupted download")
    good = {"path": "models/model.pt", "url": f"{base}/model.pt", "hash_type": "md5", "hash_val": "0" * 32}
    with pytest.raises(download.DownloadError, match="wrong md5 hash") as info:
        download.download_entry(good, str(tmp_path), retries=1, progress=False)
    assert "save it as" in str(info.value) and not (tmp_path / "models" / "model.pt").exists()
    assert not (tmp_path / "models" / "model.pt.part").exists()
    # Unreachable source (and mirror): non-zero exit with where to put the file by hand.
    large_files = tmp_path / "large_files.yml"
    unreachable = {**good, "url": "http://127.0.0.1:9/model.pt", "mirrors": [f"{base}/missing.pt"]}
    large_files.write_text(yaml.safe_dump({"large_files": [unreachable]}))
    with pytest.raises(SystemExit) as exit_info:
        download.main("models/model.pt", bundle_dir=str(tmp_path), large_files=str(large_files), retries=1)
    assert exit_info.value.code == 1
    message = capsys.readouterr().err
    assert "Download it by hand" in message and "127.0.0.1:9/model.pt" in message and "missing.pt" in message
    assert str(tmp_path / "models" / "model.pt") in message


def test_text_encoder_target_converts_openclip_checkpoint(http_root, tmp_path):
    from safetensors.torch import save_file

    from helpers.networks import openclip_state_dict

    root, base, _ = http_root
    save_file(openclip_state_dict(width=64, layers=2), str(root / "open_clip_model.safetensors"))
    entry = {
        "path": "models/openclip.safetensors",
        "url": f"{base}/open_clip_model.safetensors",
        "converts_to": "models/text_encoder",
    }
    large_files = tmp_path / "large_files.yml"
    large_files.write_text(yaml.safe_dump({"large_files": [entry]}))
    download.main("text_encoder", bundle_dir=str(tmp_path), large_files=str(large_files))
    from scripts.networks.text import load_text_encoder

    model = load_text_encoder(str(tmp_path / "models" / "text_encoder"))
    assert model.config.num_hidden_layers == 1 and model.config.hidden_size == 64


def test_packed_bundle_downloads_and_runs(http_root, tmp_path, tiny_model_dir):
    """Pack → serve → `monai.bundle download --url` into an empty folder → fetch weights → run inference."""
    root, base, _ = http_root
    zip_path = Path(pack.pack(str(BUNDLE_ROOT), str(tmp_path / "dist")))
    names = zipfile.ZipFile(zip_path).namelist()
    assert "cxr_ldm/configs/inference.json" in names and "cxr_ldm/tokenizer/vocab.json" in names
    assert not [n for n in names if n.endswith(".pt") or "__pycache__" in n or n.startswith("cxr_ldm/tests")]
    shutil.copy(zip_path, root / zip_path.name)
    names = ("autoencoder.pt", "model.pt")
    for name in names:
        shutil.copy(tiny_model_dir / name, root / name)

    target = tmp_path / "empty"
    target.mkdir()
    monai_download(name="cxr_ldm", url=f"{base}/{zip_path.name}", bundle_dir=str(target))
    bundle = target / "cxr_ldm"
    assert (bundle / "configs" / "metadata.json").is_file() and (bundle / "large_files.yml").is_file()

    # The large files come from the download command (here with the tiny weights served on loopback).
    entries = [_entry(f"models/{n}", f"{base}/{n}", (root / n).read_bytes()) for n in names]
    (tmp_path / "large_files.yml").write_text(yaml.safe_dump({"large_files": entries}))
    large_files = str(tmp_path / "large_files.yml")
    download.main("models/autoencoder.pt", "models/model.pt", bundle_dir=str(bundle), large_files=large_files)
    assert [(bundle / e["path"]).read_bytes() for e in entries] == [(root / n).read_bytes() for n in names]
    shutil.copytree(tiny_model_dir / "text_encoder", bundle / "models" / "text_encoder")
    shutil.copy(BUNDLE_ROOT / "configs" / "tiny" / "inference.json", bundle / "tiny_inference.json")

    chain = "['configs/inference.json','tiny_inference.json']"
    ran = _python(["-m", "monai.bundle", "run", "--config_file", chain,
                   "--load_old", "False"], cwd=bundle)  # fmt: skip
    assert ran.returncode == 0, ran.stderr[-3000:]
    images = sorted((bundle / "output").glob("*.png"))
    # the same image as this checkout makes in-process from the same weights (its name and its pixels, to the one
    # grey level that another thread count may round differently)
    (reference,) = run_inference(tiny_model_dir, tmp_path / "reference", load_old=False)
    assert [image.name for image in images] == [reference.name]
    difference = np.abs(read_png(images[0]).astype(int) - read_png(reference).astype(int))
    assert difference.max() <= 1 and difference.mean() < 0.01


def test_github_release_route_finds_the_packed_zip_by_name(http_root, tmp_path, monkeypatch):
    """`--source github --repo owner/repo/tag --name cxr_ldm --version V` asks for `cxr_ldm_vV.zip`."""
    import monai.bundle.scripts as bundle_scripts

    root, base, _ = http_root
    zip_path = Path(pack.pack(str(BUNDLE_ROOT), str(root)))
    asked = []

    def release_url(repo_owner, repo_name, tag_name, filename):
        asked.append((repo_owner, repo_name, tag_name, filename))
        return f"{base}/{filename}"

    monkeypatch.setattr(bundle_scripts, "_get_git_release_url", release_url)
    version = zip_path.stem.split("_v")[-1]
    bundle_scripts.download(
        name="cxr_ldm",
        version=version,
        source="github",
        repo="owner/cxr-ldm/v" + version,
        bundle_dir=str(tmp_path / "b"),
    )
    assert asked == [("owner", "cxr-ldm", "v" + version, zip_path.name)]
    assert (tmp_path / "b" / "cxr_ldm" / "configs" / "inference.json").is_file()


def test_large_files_yml_holds_full_hashes():
    entries = download.read_large_files(str(BUNDLE_ROOT / "large_files.yml"))
    for entry in entries:
        download.check_entry_hash(entry)  # raises for a prefix such as torchvision's 8-digit file-name tag
    with pytest.raises(download.DownloadError, match="not a full sha256 digest"):
        download.check_entry_hash({"path": "x.pth", "hash_type": "sha256", "hash_val": "b8a52dc0"})


def test_monai_download_large_files_reads_our_file_over_loopback(http_root, tmp_path):
    """`python -m monai.bundle download_large_files` on large_files.yml as it is, its URLs pointed at loopback
    and its hashes at the files served there: MONAI fetches every entry and checks every full hash."""
    root, base, _ = http_root
    entries = yaml.safe_load((BUNDLE_ROOT / "large_files.yml").read_text())["large_files"]
    for index, entry in enumerate(entries):
        data = os.urandom(1000 + index)
        (root / f"file{index}").write_bytes(data)
        entry["url"] = f"{base}/file{index}"
        for mirror_index in range(len(entry.get("mirrors", []))):
            entry["mirrors"][mirror_index] = f"{base}/unused{mirror_index}"
        if entry.get("hash_val"):
            entry["hash_val"] = hashlib.new(entry["hash_type"], data).hexdigest()
    bundle = tmp_path / "bundle"
    bundle.mkdir()
    (bundle / "large_files.yml").write_text(yaml.safe_dump({"large_files": entries}, sort_keys=False))
    download_large_files(bundle_path=str(bundle))
    for index, entry in enumerate(entries):
        assert (bundle / entry["path"]).read_bytes() == (root / f"file{index}").read_bytes()

    # A wrong full hash is caught by MONAI, so the hashes it checks are really ours.
    entries[0]["hash_val"] = "0" * len(entries[0]["hash_val"])
    (bundle / entries[0]["path"]).unlink()
    (bundle / "large_files.yml").write_text(yaml.safe_dump({"large_files": entries}, sort_keys=False))
    with pytest.raises(HashCheckError, match="md5 hash check of downloaded file failed"):
        download_large_files(bundle_path=str(bundle))
    assert not (bundle / entries[0]["path"]).exists()
