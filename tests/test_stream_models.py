"""The whole stream with a model: records come out formatted, counted and filtered inline."""
import json
import subprocess
import sys

import pytest
import yaml

from conftest import write_jsonl
from mmstream import StreamingDataset
from mmstream.synth import encode_counter_video
from mmstream.types import Drop
from tiny_tok import make_tokenizer, pieces


@pytest.fixture
def setup(tmp_path):
    media = tmp_path / "media"
    media.mkdir()
    encode_counter_video(media / "v_clip.mp4", num_frames=125, size=(64, 48))  # 5 s at 25 fps
    vcg = tmp_path / "VideoInstruct100K.json"
    vcg.write_text(json.dumps([{"video_id": "v_clip", "q": "What is shown?", "a": "A counter."}]))
    short = " ".join(["word"] * 230)  # 2 pages
    long = " ".join(["word"] * 115 * 95)  # 95 pages: over the 90-frame cap
    raw = write_jsonl(tmp_path / "raw.jsonl", [
        {"context": short, "question": "What is it about?", "answer": "Words."},
        {"context": long, "question": "And this?", "answer": "More words."},
        {"context": short, "question": " ".join(["why"] * 40), "answer": "Too long a question."},
    ])
    tok = make_tokenizer(tmp_path / "tok")
    cfg = {
        "sources": [
            {"name": "vcg", "format": "videochatgpt", "annotations": str(vcg), "media_root": str(media)},
            {"name": "syn", "format": "t2vid_raw", "annotations": raw,
             "sampling": {"strategy": "none", "max_frames": None},
             "filter": {"max_frames": 90, "max_tokens": 8192, "one_video_in_first_turn": True,
                        "max_first_turn_words": 30}},
        ],
        "sampling": {"fps": 1.0, "max_frames": 24, "strategy": "t2vid"},
        "model": {"name": "minicpmv-2.5", "tokenizer": tok, "token_count": "t2vid"},
        "loader": {"shuffle": False},
    }
    path = tmp_path / "cfg.yaml"
    path.write_text(yaml.safe_dump(cfg))
    return str(path)


def test_samples_carry_the_minicpmv_record_and_exact_tokens(setup):
    items = list(StreamingDataset(setup, emit_drops=True))
    kept = {i.key: i for i in items if not isinstance(i, Drop)}
    drops = {i.key: i.reason for i in items if isinstance(i, Drop)}
    assert drops == {"syn-00000001": "too_many_frames", "syn-00000002": "first_turn_words"}
    video = kept["vcg-00000000"]
    assert video.model_record["conversations"][0]["content"] == "".join(
        f"<image_{i:02d}>\n" for i in range(5)) + "What is shown?"
    # t2vid counting: turns joined by newline with the raw <video> tag, BOS, plus 96 per frame
    text = pieces("<video>\nWhat is shown?\nA counter.") + 1
    assert video.tokens == {"text": text, "visual": 96 * 5, "total": text + 96 * 5}
    syn = kept["syn-00000000"]
    assert "id" not in syn.model_record and syn.clips[0].frames.shape == (2, 448, 448, 3)
    assert syn.tokens["visual"] == 2 * 96


def test_inspect_jsonl_has_tokens_record_and_drops_by_rule(setup):
    res = subprocess.run([sys.executable, "-m", "mmstream.cli", "inspect", setup, "--jsonl"],
                         capture_output=True, text=True, timeout=120)
    assert res.returncode == 0, res.stderr[-2000:]
    lines = [json.loads(l) for l in res.stdout.splitlines()]
    assert lines[-1] == {"summary": {"kept": 2, "dropped": {"first_turn_words": 1, "too_many_frames": 1},
                                     "read": {"vcg": 1, "syn": 3}}}
    for line in lines[:-1]:
        assert set(line["tokens"]) == {"text", "visual", "total"} and "conversations" in line["record"]


@pytest.mark.parametrize("model,match", [
    ({"name": "minicpmv-2.5", "tokenizer": "/no/such/tokenizer/dir"}, "does not exist"),
    ({"name": "llava-next"}, "not a known model"),
])
def test_bad_model_config_fails_at_startup_not_in_a_worker(setup, model, match):
    from mmstream.errors import ConfigError

    cfg = yaml.safe_load(open(setup))
    cfg["model"] = model
    with pytest.raises(ConfigError, match=match):
        StreamingDataset(cfg)  # constructing it is enough: no iteration, no worker
