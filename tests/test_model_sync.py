"""Model source resolution (no network): local folders in place, hub ids recognised."""
from __future__ import annotations

import pytest

from specops.config import Settings
from specops.runtime.model_folder import ModelFolderError
from specops.model_source import is_hub_id, resolve_source


@pytest.mark.parametrize("source,expected", [
    ("microsoft/Phi-3-mini-4k-instruct-onnx", True), ("TinyLlama/TinyLlama-1.1B-Chat-v1.0", True),
    ("/models/target", False), ("./target", False), ("owner/name/extra", False), ("name", False)])
def test_is_hub_id(source, expected):
    assert is_hub_id(source) is expected


def test_local_folder_is_used_in_place(tmp_path):
    (tmp_path / "cpu").mkdir()
    settings = Settings()
    assert resolve_source(str(tmp_path), "", settings) == tmp_path
    assert resolve_source(str(tmp_path), "cpu", settings) == tmp_path / "cpu"


def test_existing_relative_folder_is_not_a_hub_id(tmp_path, monkeypatch):
    (tmp_path / "models" / "target").mkdir(parents=True)
    monkeypatch.chdir(tmp_path)
    assert not is_hub_id("models/target")
    assert resolve_source("models/target", "", Settings()).resolve() == tmp_path / "models" / "target"


def test_missing_local_folder_is_reported(tmp_path):
    with pytest.raises(ModelFolderError, match="does not exist"):
        resolve_source(str(tmp_path / "absent"), "", Settings())
