"""Both folder layouts load; broken folders fail with errors naming the file and the problem."""
import json
import shutil

import pytest

from specops.runtime.decoder import Decoder
from specops.runtime.model_folder import ModelFolderError, read_model_folder


def test_builder_layout_reads_genai_config(target_folder):
    spec = read_model_folder(target_folder)
    assert spec.layout == "builder" and spec.share_past_present
    assert spec.vocab_size == 32064 and {32000, 32001, 32007} <= set(spec.eos_ids)
    assert spec.model_file.name.endswith(".onnx") and spec.model_file.with_suffix(".onnx.data").exists()


def test_optimum_layout_reads_config_json(draft_folder):
    spec = read_model_folder(draft_folder)
    assert spec.layout == "optimum" and not spec.share_past_present
    assert spec.vocab_size == 32000 and spec.eos_ids == (2,)


def test_io_names_come_from_the_session(target_folder, draft_folder):
    assert not Decoder(read_model_folder(target_folder)).has_position_ids  # GQA: positions from the mask
    assert Decoder(read_model_folder(draft_folder)).has_position_ids


@pytest.fixture
def folder_copy(tmp_path, target_folder):
    dst = tmp_path / "target"
    shutil.copytree(target_folder, dst)
    return dst


def test_missing_model_file(folder_copy):
    spec = read_model_folder(folder_copy, verify=False)
    spec.model_file.unlink()
    with pytest.raises(ModelFolderError, match=rf"{spec.model_file.name}: file is missing"):
        read_model_folder(folder_copy)


def test_checksum_mismatch_names_the_file(folder_copy):
    cfg = folder_copy / "tokenizer_config.json"
    cfg.write_text(cfg.read_text() + " ")
    with pytest.raises(ModelFolderError, match="tokenizer_config.json: checksum mismatch"):
        read_model_folder(folder_copy)


def test_invalid_config_json(folder_copy):
    (folder_copy / "genai_config.json").write_text("{not json")
    with pytest.raises(ModelFolderError, match="genai_config.json: not valid JSON"):
        read_model_folder(folder_copy, verify=False)


def test_config_missing_a_field(folder_copy):
    cfg = json.loads((folder_copy / "genai_config.json").read_text())
    del cfg["model"]["decoder"]["num_hidden_layers"]
    (folder_copy / "genai_config.json").write_text(json.dumps(cfg))
    with pytest.raises(ModelFolderError, match="genai_config.json: missing or invalid field 'num_hidden_layers'"):
        read_model_folder(folder_copy, verify=False)


def test_truncated_weights_fail_at_load(folder_copy):
    spec = read_model_folder(folder_copy, verify=False)
    data = spec.model_file.with_suffix(".onnx.data")
    data.write_bytes(data.read_bytes()[:1000])
    with pytest.raises(ModelFolderError, match="checksum mismatch"):
        read_model_folder(folder_copy)
    with pytest.raises(ModelFolderError, match="onnxruntime cannot load it"):
        Decoder(read_model_folder(folder_copy, verify=False))


def test_unsupported_inputs(folder_copy):
    cfg = json.loads((folder_copy / "genai_config.json").read_text())
    cfg["model"]["decoder"]["inputs"]["past_key_names"] = "cache.%d.k"
    (folder_copy / "genai_config.json").write_text(json.dumps(cfg))
    with pytest.raises(ModelFolderError, match="unsupported model"):
        Decoder(read_model_folder(folder_copy, verify=False))


def test_not_a_model_folder(tmp_path):
    with pytest.raises(ModelFolderError, match="neither genai_config.json"):
        read_model_folder(tmp_path)
    with pytest.raises(ModelFolderError, match="does not exist"):
        read_model_folder(tmp_path / "nope")
