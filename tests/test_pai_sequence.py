"""Pai-Megatron-Patch's Qwen2-VL sequence (``model.options.sequence: pai``).

Pai's ChatML task encoder splits each user turn at its media tags and strips the text
around every tag before the chat template (``"<video>\\nQ"`` loses the newline); it
makes the system turn explicit. The expected sequences below are written out by hand
from that rule; the tokenizer keeps every newline and space as its own token, so a
stripped character shows.
"""
import json

import pytest
import torch

from megatron.energon import WorkerConfig, get_loader, get_train_dataset
from megatron.energon.errors import reraise_exception

from mmstream import StreamingDataset
from mmstream.config import ModelConfig, load_config
from mmstream.errors import ConfigError, SampleError
from mmstream.models import get_model
from mmstream.models.base import MediaShape
from mmstream.models.qwen2vl import pai_content
from mmstream.pack import Pack
from mmstream.sinks import run_cache
from mmstream.synth import encode_counter_video, make_frame_folder
from mmstream.types import MediaRef, Record, Turn
from tiny_tok import (QWEN_VISION_TOKENS, STRING_TEMPLATE, STRING_TEMPLATE_TOKENS, make_qwen_tokenizer, make_tokenizer,
                      qwen_pieces)
from training_adapters.megatron import ChatMLPackingTaskEncoder, PaiChatMLTaskEncoder

PAI_LIMITS = {"video_min_pixels": 3136, "video_max_pixels": 1003520}  # configs/qwen2vl_megatron.yaml
SYS = "<|im_start|>system\nYou are a helpful assistant.<|im_end|>\n"
# 4 frames of 56x56: grid (2, 4, 4) -> 8 tokens; a 56x56 image: grid (1, 4, 4) -> 4 tokens
VIDEO = MediaShape("video", 4, 56, 56)
IMAGE = MediaShape("image", 1, 56, 56)
V = "<|vision_start|>" + "<|video_pad|>" * 8 + "<|vision_end|>"
I = "<|vision_start|>" + "<|image_pad|>" * 4 + "<|vision_end|>"
WORDS = ["What is in the video? A cat. Look at and tell me what it is. Describe this: Compare them. Be brief.",
         "Why? Because. And then? Done. Which number is shown first? It is zero. Colour? Red. Two"]


def user(text):
    return f"<|im_start|>user\n{text}<|im_end|>\n"


def answer(text):
    return f"<|im_start|>assistant\n{text}<|im_end|>\n"


@pytest.fixture(scope="module")
def tok_dir(tmp_path_factory):
    return make_qwen_tokenizer(tmp_path_factory.mktemp("qwen_tok"), WORDS)


def qwen(tok_dir, sequence):
    return get_model(ModelConfig(name="qwen2-vl", tokenizer=tok_dir, token_count="chat_template",
                                 options={"sequence": sequence, **PAI_LIMITS}))


def record(turns, kinds):
    return Record(key="k", source="s", turns=[Turn(r, c) for r, c in turns],
                  media=[MediaRef(kind, f"m{i}") for i, kind in enumerate(kinds)])


SHAPE = {"video": VIDEO, "image": IMAGE}

# (user/system/assistant turns, media kinds, the sequence Pai's encoder builds, tokens the turns
#  as written have on top of it)
CASES = {
    "tag_at_start": ([("user", "<video>\nWhat is in the video?"), ("assistant", "A cat.")], ["video"],
                     SYS + user(V + "What is in the video?") + answer("A cat."), 1),
    "tag_in_the_middle": ([("user", "Look at <image> \n and tell me what it is."), ("assistant", "A cat.")],
                          ["image"], SYS + user("Look at" + I + "and tell me what it is.") + answer("A cat."), 4),
    "tag_at_the_end": ([("user", "Describe this:\n<video>"), ("assistant", "A cat.")], ["video"],
                       SYS + user("Describe this:" + V) + answer("A cat."), 1),
    "several_tags": ([("user", "<image>\n<video>\nCompare them."), ("assistant", "A cat.")], ["image", "video"],
                     SYS + user(I + V + "Compare them.") + answer("A cat."), 2),
    "text_right_after_a_tag": ([("user", "<video>What is it?"), ("assistant", "A cat.")], ["video"],
                               SYS + user(V + "What is it?") + answer("A cat."), 0),
    "untagged_record": ([("user", "What is it?"), ("assistant", "A cat.")], ["video"],  # format puts "<video>\n" first
                        SYS + user(V + "What is it?") + answer("A cat."), 1),
    "system_and_two_rounds": ([("system", "Be brief. "), ("user", "<video>\n  Why? "), ("assistant", "Because."),
                               ("user", " And then?\n"), ("assistant", "Done.")], ["video"],
                              "<|im_start|>system\nBe brief. <|im_end|>\n" + user(V + "Why?") + answer("Because.")
                              + user("And then?") + answer("Done."), 6),
}


def test_pai_content_splits_at_tags_and_strips_every_text_part():
    assert pai_content("<image>\n<video>\nCompare.") == [
        {"type": "image", "image": "0"}, {"type": "text", "text": ""}, {"type": "video", "video": "0"},
        {"type": "text", "text": "Compare."}]
    assert pai_content("A <video> b <video>") == [
        {"type": "text", "text": "A"}, {"type": "video", "video": "0"}, {"type": "text", "text": "b"},
        {"type": "video", "video": "1"}]
    assert pai_content(" no tags \n") == [{"type": "text", "text": "no tags"}]
    assert pai_content("") == []


@pytest.mark.parametrize("name", sorted(CASES))
def test_count_is_the_sequence_pai_builds(tok_dir, name):
    turns, kinds, expected, extra = CASES[name]
    rec = record(turns, kinds)
    shapes = [SHAPE[k] for k in kinds]
    pai, hf = qwen(tok_dir, "pai"), qwen(tok_dir, "transformers")
    model_record = pai.format(rec, [s.num_frames for s in shapes], fps=[2.0] * len(kinds))
    ids = pai.template_ids(model_record, shapes)
    assert pai.tokenizer.convert_ids_to_tokens(ids) == qwen_pieces(expected)
    assert "<unk>" not in pai.tokenizer.convert_ids_to_tokens(ids)  # every piece was in the vocabulary
    tokens = pai.count_tokens(rec, model_record, shapes)
    assert tokens == {"text": len(ids) - tokens["visual"], "visual": sum(8 if s is VIDEO else 4 for s in shapes),
                      "total": len(ids)}
    # the turns as written (a Hugging Face processor's input) keep the characters Pai strips
    assert hf.count_tokens(rec, model_record, shapes)["total"] == len(ids) + extra


def test_transformers_sequence_is_the_turns_as_written(tok_dir):
    hf = qwen(tok_dir, "transformers")
    rec = record([("user", "<video>\nWhat is in the video?"), ("assistant", "A cat.")], ["video"])
    model_record = hf.format(rec, [4], fps=[2.0])
    ids = hf.template_ids(model_record, [VIDEO])
    assert hf.tokenizer.convert_ids_to_tokens(ids) == qwen_pieces(SYS + user(V + "\nWhat is in the video?")
                                                                  + answer("A cat."))


def test_pai_drops_a_second_system_turn(tok_dir):
    rec = record([("system", "Be brief."), ("system", "Be brief."), ("user", "<video>\nWhy?"),
                  ("assistant", "Because.")], ["video"])
    pai = qwen(tok_dir, "pai")
    model_record = pai.format(rec, [4], fps=[2.0])
    with pytest.raises(SampleError) as e:
        pai.count_tokens(rec, model_record, [VIDEO])
    assert e.value.reason == "bad_turn_order"
    assert qwen(tok_dir, "transformers").count_tokens(rec, model_record, [VIDEO])["total"] > 0


def test_sequence_is_checked_at_start_up(tmp_path, tok_dir):
    with pytest.raises(ConfigError, match="sequence"):
        qwen(tok_dir, "megatron")
    plain = make_tokenizer(tmp_path / "plain", QWEN_VISION_TOKENS + STRING_TEMPLATE_TOKENS, chat_template=STRING_TEMPLATE)
    with pytest.raises(ConfigError, match="content parts"):
        qwen(plain, "pai")
    assert qwen(plain, "transformers").options["sequence"] == "transformers"


def test_the_pai_recipe_counts_pais_sequence():
    cfg = load_config("configs/qwen2vl_megatron.yaml")
    assert cfg.model.token_count == "chat_template" and cfg.model.options["sequence"] == "pai"
    assert get_model(cfg.model, load=False).options["sequence"] == "pai"


# -- the stream: length filter, packing, shards, and the energon encoder -------------------

def write_set(root):
    """A ShareGPT set: a video (10 fps, 1 s: 2 frames at 2 fps), an image, a frame folder of
    4 frames; every frame 64x48 (resized 56x56 by Pai's limits: 4 tokens per 2 frames)."""
    encode_counter_video(root / "clip.mp4", num_frames=10, fps=10, size=(64, 48))
    make_frame_folder(root / "folder", num_frames=4, fps="2.0", size=(64, 48))
    from PIL import Image
    Image.new("RGB", (64, 48), (200, 30, 30)).save(root / "red.jpg")
    records = [
        {"id": "vid", "conversations": [{"from": "human", "value": "<video>\nWhich number is shown first?"},
                                        {"from": "gpt", "value": "It is zero."}], "videos": ["clip.mp4"]},
        {"id": "img", "conversations": [{"from": "human", "value": "Colour?\n<image>"},
                                        {"from": "gpt", "value": "Red."},
                                        {"from": "human", "value": "Two <video> \nWhat is it?"},
                                        {"from": "gpt", "value": "A cat."}],
         "images": ["red.jpg"], "videos": ["folder.mp4"]},
    ]
    (root / "a.json").write_text(json.dumps(records))
    # by hand: clip.mp4 -> 2 frames (4 tokens); folder -> 4 frames (8 tokens); red.jpg -> 4 tokens
    v2 = "<|vision_start|>" + "<|video_pad|>" * 4 + "<|vision_end|>"
    v4 = "<|vision_start|>" + "<|video_pad|>" * 8 + "<|vision_end|>"
    return {"vid": (SYS, user(v2 + "Which number is shown first?"), answer("It is zero.")),
            "img": (SYS, user("Colour?" + I), answer("Red."), user("Two" + v4 + "What is it?"), answer("A cat."))}


def stream_config(root, tok_dir, sequence="pai", **extra):
    cfg = load_config("configs/qwen2vl_megatron.yaml").to_dict()
    cfg.pop("base_dir")
    cfg["sources"] = [{"name": "s", "format": "sharegpt", "annotations": str(root / "a.json"),
                       "media_root": str(root)}]
    cfg["model"]["tokenizer"] = tok_dir
    cfg["model"]["options"]["sequence"] = sequence
    cfg["sampling"]["decode_timeout"] = None
    cfg["loader"]["shuffle"] = False
    cfg.update(extra)
    return cfg


@pytest.fixture(scope="module")
def media(tmp_path_factory):
    root = tmp_path_factory.mktemp("pai_set")
    return root, write_set(root)


def lengths(expected):
    return {k: len(qwen_pieces("".join(parts))) for k, parts in expected.items()}


def test_length_filter_uses_pais_sequence(media, tok_dir):
    root, expected = media
    n = lengths(expected)["vid"]

    def kept(sequence, max_tokens):
        cfg = stream_config(root, tok_dir, sequence, filter={"max_tokens": max_tokens})
        return {s.record.id: s.tokens["total"] for s in StreamingDataset(cfg) if s.record.id == "vid"}

    assert kept("pai", n) == {"vid": n}          # exactly the cap passes
    assert kept("pai", n - 1) == {}              # one over: dropped
    assert kept("transformers", n) == {}         # the turn as written is one token (the newline) longer


def test_packing_budget_uses_pais_sequence(media, tok_dir):
    root, expected = media
    n = lengths(expected)
    cfg = stream_config(root, tok_dir, loader={"shuffle": False, "pack": {"max_tokens": n["vid"] + n["img"],
                                                                          "buffer": 2}})
    packs = list(StreamingDataset(cfg))
    assert len(packs) == 1 and isinstance(packs[0], Pack)
    assert sorted(packs[0].lengths) == sorted(n.values()) and packs[0].total == sum(n.values())


@pytest.fixture(scope="module")
def pai_shards(media, tok_dir, tmp_path_factory):
    root, expected = media
    out = tmp_path_factory.mktemp("pai_shards")
    summary = run_cache(stream_config(root, tok_dir), str(out), workers=0, progress=False)
    assert summary["finalized"] and summary["kept"] == 2
    return out, expected


def load_encoded(path, encoder, **kwargs):
    wc = WorkerConfig(rank=0, world_size=1, num_workers=0, global_error_handler=reraise_exception)
    ds = get_train_dataset(str(path), worker_config=wc, batch_size=None, shuffle_buffer_size=None,
                           max_samples_per_sequence=None, task_encoder=encoder, repeat=False, **kwargs)
    return list(get_loader(ds))


def test_energon_encoder_builds_the_counted_sequence_from_the_shard(pai_shards, tok_dir):
    path, expected = pai_shards
    got = {s.__key__: s for s in load_encoded(path, PaiChatMLTaskEncoder(tok_dir))}
    assert sorted(got) == ["s-00000000", "s-00000001"]
    by_id = {"vid": got["s-00000000"], "img": got["s-00000001"]}
    tok = get_model(ModelConfig(name="qwen2-vl", tokenizer=tok_dir)).tokenizer
    for rid, parts in expected.items():
        s = by_id[rid]
        pieces = qwen_pieces("".join(parts))
        assert tok.convert_ids_to_tokens(s.input_ids.tolist()) == pieces
        assert s.tokens["total"] == len(pieces) == len(s.input_ids)   # stored count == Pai's sequence
        # labels: only the answers after "<|im_start|>assistant\n" (3 tokens), through their "<|im_end|>\n"
        want, pos = [], 0
        for part in parts:
            k = len(qwen_pieces(part))
            trained = part.startswith("<|im_start|>assistant\n")
            want += [-100] * k if not trained else [-100] * 3 + s.input_ids[pos + 3:pos + k].tolist()
            pos += k
        assert s.labels.tolist() == want
    vid, img = by_id["vid"], by_id["img"]
    assert vid.video_grid_thw.tolist() == [[1, 4, 4]] and vid.pixel_values is None
    assert vid.pixel_values_videos.shape == (16, 1176) and vid.second_per_grid_ts.tolist() == [0.5]
    assert img.image_grid_thw.tolist() == [[1, 4, 4]] and img.video_grid_thw.tolist() == [[2, 4, 4]]
    assert img.pixel_values.dtype == torch.float32


def test_energon_encoder_drops_a_sample_over_max_length(pai_shards, tok_dir):
    path, expected = pai_shards
    n = lengths(expected)
    with pytest.raises(Exception, match="max_length"):
        load_encoded(path, PaiChatMLTaskEncoder(tok_dir, max_length=min(n.values()) - 1))


def test_energon_packing_chooses_by_pais_sequence(pai_shards):
    path, expected = pai_shards
    n = lengths(expected)
    packs = load_encoded(path, ChatMLPackingTaskEncoder(max_tokens=n["vid"] + n["img"]), packing_buffer_size=2)
    assert len(packs) == 1 and sorted(packs[0].lengths) == sorted(n.values())
