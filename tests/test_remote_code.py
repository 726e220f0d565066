"""A tokenizer folder laid out like MiniCPM-V's: an auto_map to a tokenizer class of its own."""
import json

import pytest

from conftest import write_jsonl
from mmstream import StreamingDataset
from mmstream.errors import ConfigError
from tiny_tok import make_tokenizer

CUSTOM_CODE = '''
from transformers import PreTrainedTokenizerFast


class TinyCustomTokenizer(PreTrainedTokenizerFast):
    """A custom class, as MiniCPM-V's tokenization_minicpmv_fast.py is."""

    def custom_marker(self):
        return "custom"
'''


@pytest.fixture
def remote_code_folder(tmp_path):
    folder = tmp_path / "minicpm_like"
    make_tokenizer(folder)
    (folder / "tokenization_tiny.py").write_text(CUSTOM_CODE)
    cfg_path = folder / "tokenizer_config.json"
    cfg = json.loads(cfg_path.read_text())
    cfg["tokenizer_class"] = "TinyCustomTokenizer"
    cfg["auto_map"] = {"AutoTokenizer": [None, "tokenization_tiny.TinyCustomTokenizer"]}
    cfg_path.write_text(json.dumps(cfg))
    return folder


def config(tmp_path, folder, trust):
    ann = write_jsonl(tmp_path / "a.jsonl", [{"id": "x", "conversations": [
        {"from": "human", "value": "what is the video"}, {"from": "gpt", "value": "a video"}]}])
    return {"sources": [{"name": "s", "format": "llava", "annotations": ann}],
            "model": {"name": "minicpmv-2.5", "tokenizer": str(folder), "trust_remote_code": trust}}


def test_remote_code_tokenizer_loads_with_trust_and_counts(tmp_path, remote_code_folder):
    ds = StreamingDataset(config(tmp_path, remote_code_folder, True))
    assert type(ds.model.tokenizer).__name__ == "TinyCustomTokenizer"
    assert ds.model.tokenizer.custom_marker() == "custom"
    sample = next(iter(ds))
    assert sample.tokens["text"] > 0


def test_without_trust_the_error_names_the_option(tmp_path, remote_code_folder):
    with pytest.raises(ConfigError, match="model.trust_remote_code"):
        StreamingDataset(config(tmp_path, remote_code_folder, False))


def test_the_minicpmv_recipe_trusts_its_tokenizer_code():
    import os

    from mmstream.config import load_config

    cfg = load_config(os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "configs",
                                   "t2vid_minicpmv.yaml"))
    assert cfg.model.trust_remote_code is True
