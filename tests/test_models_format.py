"""Training-record formats: given a normalised record, expect this JSON exactly."""
from __future__ import annotations

import json

import pytest

from mmstream.config import ModelConfig
from mmstream.errors import SampleError
from mmstream.models import get_model
from mmstream.models.idefics3 import Idefics3
from mmstream.types import MediaPlan, MediaRef, Record, Turn


def model(name, **options):
    return get_model(ModelConfig(name=name, options=options))


def same_json(got, expected):
    """Equal as values and byte for byte as serialised JSON (key order included)."""
    assert got == expected
    assert json.dumps(got, ensure_ascii=False) == json.dumps(expected, ensure_ascii=False)


VIDEOINSTRUCT = Record(  # {"video_id": "v_k_ZXmr8pmrs", "q": ..., "a": ...}
    key="vcg-v_k_ZXmr8pmrs", source="vcg",
    turns=[Turn("user", "<video>\nWhat is the man doing in the video?"),
           Turn("assistant", "The man is juggling three balls in a park.")],
    media=[MediaRef("video", "v_k_ZXmr8pmrs", "/data/videos")], id="v_k_ZXmr8pmrs")

LLAVA_JSONL = Record(  # T2Vid's video-chatgpt.jsonl / ShareGemini: several turns
    key="sg-000017", source="sg",
    turns=[Turn("user", "<video>\n Describe this clip.  "),
           Turn("assistant", "A dog runs on a beach."),
           Turn("user", "What colour is the dog?\n"),
           Turn("assistant", "It is brown.")],
    media=[MediaRef("video", "webvid/1017.mp4", "/data/sg")], id="webvid_1017")

T2VID_SYNTHETIC = Record(  # longalpaca_chat_fake_vid.json: no id, pages
    key="la-LongAlpaca_00000", source="la",
    turns=[Turn("user", "<video>\nSummarize the paper in two sentences."),
           Turn("assistant", "It proposes X. It shows Y.")],
    media=[MediaRef("pages", "LongAlpaca_00000", "/data/pages")], meta={"synthetic": True})

LLAVA_PRETRAIN = Record(  # <image> at the end of the human turn
    key="lp-004539375", source="lp",
    turns=[Turn("user", "Render a clear and concise summary of the photo.\n<image>"),
           Turn("assistant", "a red bus on a street")],
    media=[MediaRef("image", "00453/004539375.jpg", "/data/lp")], id="004539375")


def test_minicpmv_videoinstruct():
    got = model("minicpmv-2.5").format(VIDEOINSTRUCT, [3])
    same_json(got, {
        "id": "v_k_ZXmr8pmrs",
        "image": {"<image_00>": "vcg-v_k_ZXmr8pmrs/00000.jpg",
                  "<image_01>": "vcg-v_k_ZXmr8pmrs/00001.jpg",
                  "<image_02>": "vcg-v_k_ZXmr8pmrs/00002.jpg"},
        "conversations": [
            {"role": "user", "content": "<image_00>\n<image_01>\n<image_02>\nWhat is the man doing in the video?"},
            {"role": "assistant", "content": "The man is juggling three balls in a park."}]})


def test_minicpmv_llava_jsonl_multi_turn_with_frame_names():
    names = [["frames/webvid/1017/00001.jpg", "frames/webvid/1017/00002.jpg"]]
    got = model("minicpmv-2.6").format(LLAVA_JSONL, [2], names)
    same_json(got, {
        "id": "webvid_1017",
        "image": {"<image_00>": "frames/webvid/1017/00001.jpg", "<image_01>": "frames/webvid/1017/00002.jpg"},
        "conversations": [
            {"role": "user", "content": "<image_00>\n<image_01>\nDescribe this clip."},
            {"role": "assistant", "content": "A dog runs on a beach."},
            {"role": "user", "content": "What colour is the dog?\n"},
            {"role": "assistant", "content": "It is brown."}]})


def test_minicpmv_t2vid_synthetic_has_no_id():
    got = model("minicpmv-2.5").format(T2VID_SYNTHETIC, [2])
    same_json(got, {
        "image": {"<image_00>": "la-LongAlpaca_00000/00000.jpg", "<image_01>": "la-LongAlpaca_00000/00001.jpg"},
        "conversations": [
            {"role": "user", "content": "<image_00>\n<image_01>\nSummarize the paper in two sentences."},
            {"role": "assistant", "content": "It proposes X. It shows Y."}]})


def test_minicpmv_image_tag_at_the_end():
    got = model("minicpmv-2.5").format(LLAVA_PRETRAIN, [1])
    same_json(got, {
        "id": "004539375",
        "image": {"<image_00>": "lp-004539375/00000.jpg"},
        "conversations": [
            {"role": "user", "content": "<image_00>\nRender a clear and concise summary of the photo."},
            {"role": "assistant", "content": "a red bus on a street"}]})


def test_minicpmv_frames_numbered_over_the_sample():
    rec = Record(key="k", source="s",
                 turns=[Turn("user", "<image>\n<video>\nCompare."), Turn("assistant", "Same.")],
                 media=[MediaRef("image", "a.jpg"), MediaRef("video", "b.mp4")], id="x")
    got = model("idefics3").format(rec, [1, 2])
    same_json(got, {"id": "x",
                    "image": {"<image_00>": "k/00000.jpg", "<image_01>": "k/00001.jpg", "<image_02>": "k/00002.jpg"},
                    "conversations": [{"role": "user", "content": "<image_00>\n<image_01>\n<image_02>\nCompare."},
                                      {"role": "assistant", "content": "Same."}]})


def test_idefics3_record_and_collator_view():
    m = model("idefics3")
    rec = m.format(LLAVA_JSONL, [2])
    assert rec == model("minicpmv-2.5").format(LLAVA_JSONL, [2])  # the same JSON as MiniCPM-V
    view = Idefics3.collator_view(rec)
    same_json(view, {
        "messages": [
            {"role": "user", "content": [{"type": "image"}, {"type": "image"},
                                         {"type": "text", "text": "Describe this clip."}]},
            {"role": "assistant", "content": [{"type": "text", "text": "A dog runs on a beach."}]},
            {"role": "user", "content": [{"type": "text", "text": "What colour is the dog?"}]},
            {"role": "assistant", "content": [{"type": "text", "text": "It is brown."}]}],
        "images": ["sg-000017/00000.jpg", "sg-000017/00001.jpg"]})


# -- Qwen2-VL megatron ChatML -------------------------------------------------------------------

def test_megatron_video_record_pai_and_hf():
    pai = model("qwen2-vl").format(VIDEOINSTRUCT, [8], fps=[2.0])
    same_json(pai, {"conversations": [{"from": "human", "value": "<video>\nWhat is the man doing in the video?"},
                                      {"from": "gpt", "value": "The man is juggling three balls in a park."}],
                    "second_per_grid_ts": [0.5]})
    hf = model("qwen2.5-vl", second_per_grid="hf").format(VIDEOINSTRUCT, [8], fps=[2.0])
    assert hf["second_per_grid_ts"] == [1.0]
    assert hf["conversations"] == pai["conversations"]


def test_megatron_one_second_per_grid_per_video_from_plans():
    rec = Record(key="k", source="s",
                 turns=[Turn("user", "<image>\n<video>\nWhat changed?"), Turn("assistant", "The light."),
                        Turn("user", "And in <video>?"), Turn("assistant", "Nothing.")],
                 media=[MediaRef("image", "a.jpg"), MediaRef("video", "b.mp4"), MediaRef("frames", "c")])
    plans = [MediaPlan("image", "a.jpg", 640, 480, [0], [0.0]),
             MediaPlan("video", "b.mp4", 640, 360, list(range(4)), [0, .25, .5, .75], fps=4.0),
             MediaPlan("frames", "c", 640, 360, list(range(6)), [0, 1, 2, 3, 4, 5], fps=None)]
    got = model("qwen2-vl").format_plans(rec, plans)
    same_json(got, {"conversations": [{"from": "human", "value": "<image>\n<video>\nWhat changed?"},
                                      {"from": "gpt", "value": "The light."},
                                      {"from": "human", "value": "And in <video>?"},
                                      {"from": "gpt", "value": "Nothing."}],
                    "second_per_grid_ts": [0.25, 0.5]})  # 1/4; frame folder without fps: Pai's 2.0
    assert model("qwen2-vl", second_per_grid="hf").format_plans(rec, plans)["second_per_grid_ts"] == [0.5, 1.0]


def test_megatron_rewrites_a_video_written_as_image_tag():
    rec = Record(key="k", source="s", turns=[Turn("user", "<image>\nWhat happens?"), Turn("assistant", "Rain.")],
                 media=[MediaRef("video", "v.mp4")])  # LLaVA-Video-178K writes the video tag as <image>
    got = model("qwen2-vl").format(rec, [4], fps=[1.0])
    assert got["conversations"][0]["value"] == "<video>\nWhat happens?"
    assert got["second_per_grid_ts"] == [1.0]


def test_megatron_untagged_media_go_in_front():
    rec = Record(key="k", source="s", turns=[Turn("user", "What happens?"), Turn("assistant", "Rain.")],
                 media=[MediaRef("image", "a.jpg"), MediaRef("pages", None, text="...")])
    got = model("qwen2-vl").format(rec, [1, 2])
    assert got["conversations"][0]["value"] == "<image>\n<video>\nWhat happens?"
    assert got["second_per_grid_ts"] == [0.5]


def test_megatron_even_frames():
    m = model("qwen2-vl")
    with pytest.raises(SampleError) as e:
        m.format(VIDEOINSTRUCT, [7], fps=[2.0])
    assert e.value.reason == "odd_frames"
    assert model("qwen2-vl", even_frames="off").format(VIDEOINSTRUCT, [7], fps=[2.0])["second_per_grid_ts"] == [0.5]
    # what the media stage does with the rule: every video ends up even
    for n in range(1, 40):
        assert m.frame_count_rule(n) % 2 == 0
        m.format(VIDEOINSTRUCT, [m.frame_count_rule(n)], fps=[2.0])


def test_megatron_zero_fps_is_a_drop_not_a_crash():
    with pytest.raises(SampleError) as e:
        model("qwen2-vl").format(VIDEOINSTRUCT, [8], fps=[0.0])
    assert e.value.reason == "bad_fps"


# -- records a format cannot take ---------------------------------------------------------------

BAD = [
    ("no_answer", [Turn("user", "<video>\nHello?")]),
    ("bad_turn_order", [Turn("assistant", "Hi."), Turn("user", "<video>\nHello?")]),
    ("bad_turn_order", [Turn("user", "<video>\nA?"), Turn("user", "B?"), Turn("assistant", "C.")]),
    ("bad_turn_order", [Turn("user", "<video>\nA?"), Turn("assistant", "B."), Turn("user", "C?")]),
    ("empty_answer", [Turn("user", "<video>\nA?"), Turn("assistant", "  \n")]),
    ("media_tag_mismatch", [Turn("user", "<video>\nA <video>?"), Turn("assistant", "B.")]),
]


@pytest.mark.parametrize("name", ["minicpmv-2.5", "idefics3", "qwen2-vl"])
@pytest.mark.parametrize("reason,turns", BAD)
def test_unusable_records_raise_their_reason(name, reason, turns):
    rec = Record(key="k", source="s", turns=turns, media=[MediaRef("video", "v.mp4")])
    with pytest.raises(SampleError) as e:
        model(name).format(rec, [4], fps=[2.0])
    assert e.value.reason == reason


def test_fewer_tags_than_media_is_a_mismatch():
    rec = Record(key="k", source="s", turns=[Turn("user", "<image>\nA?"), Turn("assistant", "B.")],
                 media=[MediaRef("image", "a.jpg"), MediaRef("image", "b.jpg")])
    with pytest.raises(SampleError) as e:
        model("minicpmv-2.5").format(rec, [1, 1])
    assert e.value.reason == "media_tag_mismatch"


def test_system_turn_is_kept():
    rec = Record(key="k", source="s", turns=[Turn("system", "Be brief."), Turn("user", "<video>\nA?"),
                                             Turn("assistant", "B.")], media=[MediaRef("video", "v.mp4")])
    assert model("qwen2-vl").format(rec, [2])["conversations"][0] == {"from": "system", "value": "Be brief."}
    conv = model("minicpmv-2.5").format(rec, [1])["conversations"]
    assert [c["role"] for c in conv] == ["system", "user", "assistant"]
    assert conv[1]["content"] == "<image_00>\nA?"


def test_pai_frame_folder_taken_as_it_is_follows_its_sidecar_fps(tmp_path):
    import json as _json

    from mmstream import StreamingDataset
    from mmstream.synth import make_frame_folder

    make_frame_folder(tmp_path / "clip", num_frames=6, size=(64, 48))
    (tmp_path / "clip.json").write_text(_json.dumps({"fps": "1.0"}))
    ann = tmp_path / "a.json"
    ann.write_text(_json.dumps([{"conversations": [{"from": "human", "value": "<video>\nQ"},
                                                   {"from": "gpt", "value": "A"}], "videos": ["clip.mp4"]}]))
    cfg = {"sources": [{"name": "s", "format": "sharegpt", "annotations": str(ann)}],
           "sampling": {"fps": None, "max_frames": None}, "model": {"name": "qwen2-vl"}}
    sample = next(iter(StreamingDataset(cfg)))
    assert sample.clips[0].num_frames == 6 and sample.clips[0].fps == 1.0
    assert sample.model_record["second_per_grid_ts"] == [1.0]  # Pai stores 1 / fps: the sidecar's, not 1 / 2.0
