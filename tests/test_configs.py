"""The recipes in configs/ load, name every knob and carry the upstream settings (REFERENCE 2-4, 6)."""
import dataclasses
import os

import pytest

from mmstream.config import load_config
from mmstream.models import get_model

ROOT = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "configs")


def recipe(name):
    return load_config(os.path.join(ROOT, name))


@pytest.mark.parametrize("name,model,frames,tokens,out", [
    ("t2vid_minicpmv.yaml", "minicpmv-2.5", 90, 8192, "minicpmv"),
    ("t2vid_idefics3.yaml", "idefics3", 65, 10240, "idefics3"),
])
def test_t2vid_recipes(name, model, frames, tokens, out):
    cfg = recipe(name)
    assert cfg.model.name == model and cfg.model.token_count == "t2vid" and cfg.output.format == out
    by = {s.name: s for s in cfg.sources}
    assert sum(s.limit for s in cfg.sources) == 30000
    for real in ("videochatgpt", "sharegemini"):
        s = by[real].sampling
        assert (s.fps, s.max_frames, s.strategy) == (1.0, 24, "t2vid")
        assert by[real].filter.max_tokens is None
    words = {"longalpaca": 500, "longqlora": 30}
    for syn, limit in words.items():
        f = by[syn].filter
        assert (f.max_frames, f.max_tokens, f.one_video_in_first_turn, f.max_first_turn_words) == (
            frames, tokens, True, limit)
        assert by[syn].sampling.strategy == "none"
    get_model(dataclasses.replace(cfg.model, tokenizer=None, token_count="t2vid"), load=False)


def test_qwen_megatron_recipe():
    cfg = recipe("qwen2vl_megatron.yaml")
    assert cfg.sampling.fps == 2.0 and cfg.output.format == "megatron"
    opts = cfg.model.options
    assert opts["second_per_grid"] == "pai" and opts["even_frames"] == "drop_last"
    m = get_model(dataclasses.replace(cfg.model, tokenizer=None, token_count="t2vid"), load=False)
    assert m.frame_count_rule(5) == 4
