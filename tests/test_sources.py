"""Annotation readers: given these upstream records, expect these turns, media and keys."""
from __future__ import annotations

import json
import os
import tracemalloc

import pytest

from mmstream.config import SourceConfig
from mmstream.errors import BAD_JSON, BAD_RECORD, MEDIA_TAG_MISMATCH, ConfigError, SampleError
from mmstream.sources import detect_format, iter_source, record_key
from mmstream.types import MediaRef, Record, Turn

ROOT = "/data/media"


def write_array(path, records):
    path.write_text(json.dumps(records, indent=2), encoding="utf-8")
    return str(path)


def write_jsonl(path, records):
    path.write_text("".join(json.dumps(r) + "\n" for r in records), encoding="utf-8")
    return str(path)


def read(path, fmt="auto", name="src", limit=None):
    return list(iter_source(SourceConfig(name=name, annotations=str(path), format=fmt,
                                         media_root=ROOT, limit=limit)))


def only_record(items) -> Record:
    assert len(items) == 1
    assert isinstance(items[0], Record), items[0]
    return items[0]


def human(v):
    return {"from": "human", "value": v}


def gpt(v):
    return {"from": "gpt", "value": v}


# --- one realistic record per schema (REFERENCE section 1) -------------------------

VIDEOINSTRUCT = {
    "video_id": "v_k_ZXmr8pmrs",
    "q": "What is the man doing in the video?",
    "a": "The man is sharpening a knife on a whetstone in his kitchen.",
}


@pytest.mark.parametrize("fmt", ["videochatgpt", "auto"])
def test_videoinstruct100k_entry(tmp_path, fmt):
    path = write_array(tmp_path / "VideoInstruct100K.json", [VIDEOINSTRUCT])
    rec = only_record(read(path, fmt, name="vcg"))
    assert rec.key == "vcg-00000000"
    assert rec.index == 0 and rec.source == "vcg" and rec.id is None
    assert rec.turns == [
        Turn("user", "<video>\nWhat is the man doing in the video?"),
        Turn("assistant", "The man is sharpening a knife on a whetstone in his kitchen."),
    ]
    assert rec.media == [MediaRef("video", "v_k_ZXmr8pmrs", ROOT)]  # no extension: probed later
    assert rec.meta["probe_ext"] is True
    assert rec.meta["video_id"] == "v_k_ZXmr8pmrs"
    assert rec.meta["format"] == "videochatgpt"


LLAVA_VIDEO_178K = {
    "id": "ytb_7nRmsEw7nsE",
    "conversations": [
        human("<image>\nWhat is the main activity shown at the start of the video?"),
        gpt("A woman is kneading dough on a wooden table."),
        human("What does she add next?"),
        gpt("She sprinkles flour over the dough."),
    ],
    "data_source": "1_2_m_youtube_v0_1",
    "video": "liwei_youtube_videos/videos/youtube_video_2024/ytb_7nRmsEw7nsE.mp4",
}


@pytest.mark.parametrize("fmt", ["llava", "auto"])
def test_llava_video_178k_image_tag_becomes_video(tmp_path, fmt):
    path = write_array(tmp_path / "0_30_s_youtube_v0_1_cap_processed.json", [LLAVA_VIDEO_178K])
    rec = only_record(read(path, fmt, name="llava_video"))
    assert rec.key == "llava_video-00000000"
    assert rec.id == "ytb_7nRmsEw7nsE"
    assert rec.turns == [
        Turn("user", "<video>\nWhat is the main activity shown at the start of the video?"),
        Turn("assistant", "A woman is kneading dough on a wooden table."),
        Turn("user", "What does she add next?"),
        Turn("assistant", "She sprinkles flour over the dough."),
    ]
    assert rec.media == [MediaRef("video", LLAVA_VIDEO_178K["video"], ROOT)]
    assert rec.meta["data_source"] == "1_2_m_youtube_v0_1"
    assert "probe_ext" not in rec.meta and "synthetic" not in rec.meta


def test_t2vid_video_chatgpt_jsonl_with_video_tag(tmp_path):
    line = {"id": "v_Z0eBz6QsI-c_2", "video": "videochatgpt/v_Z0eBz6QsI-c.mp4",
            "conversations": [human("<video>\nWhere does the video take place?"),
                              gpt("It takes place on a snowy mountain slope.")]}
    rec = only_record(read(write_jsonl(tmp_path / "video-chatgpt.jsonl", [line])))
    assert rec.turns[0] == Turn("user", "<video>\nWhere does the video take place?")
    assert rec.media == [MediaRef("video", "videochatgpt/v_Z0eBz6QsI-c.mp4", ROOT)]
    assert rec.id == "v_Z0eBz6QsI-c_2"
    assert rec.meta["format"] == "llava"


LLAVA_PRETRAIN = {
    "id": "004539375",
    "image": "00453/004539375.jpg",
    "conversations": [
        human("Render a clear and concise summary of the photo.\n<image>"),
        gpt("select luxury furniture 3 - inch gel memory foam mattress topper"),
    ],
}


@pytest.mark.parametrize("fmt", ["llava_pretrain", "llava", "auto"])
def test_llava_pretrain_tag_at_end(tmp_path, fmt):
    path = write_array(tmp_path / "blip_laion_cc_sbu_558k.json", [LLAVA_PRETRAIN])
    rec = only_record(read(path, fmt, name="pretrain"))
    assert rec.id == "004539375"  # kept as a string, leading zeros intact
    assert rec.turns == [
        Turn("user", "Render a clear and concise summary of the photo.\n<image>"),
        Turn("assistant", "select luxury furniture 3 - inch gel memory foam mattress topper"),
    ]
    assert rec.media == [MediaRef("image", "00453/004539375.jpg", ROOT)]


def test_llava_pretrain_requires_image(tmp_path):
    rec = dict(LLAVA_PRETRAIN)
    del rec["image"]
    rec["conversations"] = [human("Describe it."), gpt("A cat.")]
    (err,) = read(write_array(tmp_path / "p.json", [rec]), "llava_pretrain")
    assert isinstance(err, SampleError) and err.reason == BAD_RECORD


SHAREGPT = {
    "conversations": [
        {"from": "system", "value": "You are a helpful assistant."},
        human("<image>This is the kitchen before. <video>Here is the clip. What changed?"),
        gpt("The counter was cleared."),
        human("And compared with this one? <image>"),
        gpt("This one shows the counter cluttered again."),
    ],
    "images": ["kitchen/before.jpg", "kitchen/after.jpg"],
    "videos": ["clips/cleanup.mp4"],
}


@pytest.mark.parametrize("fmt", ["sharegpt", "auto"])
def test_sharegpt_two_images_one_video_interleaved(tmp_path, fmt):
    rec = only_record(read(write_jsonl(tmp_path / "pai_train.json", [SHAREGPT]), fmt))
    assert [t.role for t in rec.turns] == ["system", "user", "assistant", "user", "assistant"]
    assert rec.turns[1].content == "<image>This is the kitchen before. <video>Here is the clip. What changed?"
    assert rec.media == [
        MediaRef("image", "kitchen/before.jpg", ROOT),
        MediaRef("video", "clips/cleanup.mp4", ROOT),
        MediaRef("image", "kitchen/after.jpg", ROOT),
    ]
    assert rec.id is None


def test_sharegpt_messages_role_content_and_system_field(tmp_path):
    obj = {"messages": [{"role": "user", "content": "<video>Summarise."},
                        {"role": "assistant", "content": "A dog runs."}],
           "videos": ["dog.mp4"], "system": "Be brief."}
    rec = only_record(read(write_jsonl(tmp_path / "x.jsonl", [obj]), "sharegpt"))
    assert rec.turns == [Turn("system", "Be brief."), Turn("user", "<video>Summarise."),
                         Turn("assistant", "A dog runs.")]
    assert rec.media == [MediaRef("video", "dog.mp4", ROOT)]


T2VID_SYNTHETIC = {
    "video": "LongAlpaca_00000",
    "conversations": [
        human("<video>\nSummarize the main contribution of the paper in two sentences."),
        gpt("The paper proposes shifted sparse attention for long-context finetuning."),
    ],
}


@pytest.mark.parametrize("fmt", ["t2vid_synthetic", "auto"])
def test_t2vid_synthetic_without_id(tmp_path, fmt):
    rec = only_record(read(write_array(tmp_path / "longalpaca_chat_fake_vid.json", [T2VID_SYNTHETIC]),
                           fmt, name="longalpaca"))
    assert rec.key == "longalpaca-00000000"
    assert rec.id is None
    assert rec.media == [MediaRef("pages", "LongAlpaca_00000", ROOT)]
    assert rec.turns[0] == Turn("user", "<video>\nSummarize the main contribution of the paper in two sentences.")
    assert rec.meta["synthetic"] is True
    assert rec.meta["format"] == "t2vid_synthetic"


@pytest.mark.parametrize("fmt", ["t2vid_raw", "auto"])
def test_t2vid_raw_renders_from_context(tmp_path, fmt):
    context = "Once upon a time " * 300
    obj = {"context": context, "question": "Who is the story about?", "answer": "A fox."}
    rec = only_record(read(write_jsonl(tmp_path / "LongAlpaca-12k.json", [obj]), fmt))
    assert rec.turns == [Turn("user", "<video>\nWho is the story about?"), Turn("assistant", "A fox.")]
    assert rec.media == [MediaRef("pages", None, ROOT, text=context)]
    assert rec.meta["synthetic"] is True
    assert "context" not in rec.meta  # the long text lives in the MediaRef only


MINICPMV_DICT = {
    "id": "v_k_ZXmr8pmrs_0",
    "image": {"<image_00>": "frames/v_k/00001.jpg", "<image_01>": "frames/v_k/00002.jpg",
              "<image_02>": "frames/v_k/00003.jpg"},
    "conversations": [
        {"role": "user", "content": "<image_00>\n<image_01>\n<image_02>\nWhat is the man doing?"},
        {"role": "assistant", "content": "Sharpening a knife."},
    ],
}


@pytest.mark.parametrize("fmt", ["minicpmv", "auto"])
def test_minicpmv_multi_image_dict(tmp_path, fmt):
    rec = only_record(read(write_array(tmp_path / "train.json", [MINICPMV_DICT]), fmt))
    assert rec.turns == [Turn("user", "<image>\n<image>\n<image>\nWhat is the man doing?"),
                         Turn("assistant", "Sharpening a knife.")]
    assert [m.path for m in rec.media] == ["frames/v_k/00001.jpg", "frames/v_k/00002.jpg",
                                           "frames/v_k/00003.jpg"]
    assert {m.kind for m in rec.media} == {"image"}
    assert rec.id == "v_k_ZXmr8pmrs_0"


def test_minicpmv_two_digit_placeholders(tmp_path):
    names = [f"<image_{i}>" for i in range(12)]
    obj = {"image": {n: f"f{i}.jpg" for i, n in enumerate(names)},
           "conversations": [{"role": "user", "content": "".join(names) + "Q"},
                             {"role": "assistant", "content": "A"}]}
    rec = only_record(read(write_jsonl(tmp_path / "m.jsonl", [obj]), "minicpmv"))
    assert [m.path for m in rec.media] == [f"f{i}.jpg" for i in range(12)]
    assert rec.turns[0].content == "<image>" * 12 + "Q"


@pytest.mark.parametrize("content, expected", [
    ("<image>\nWhat is in the picture?", "<image>\nWhat is in the picture?"),
    ("What is in the picture?", "<image>\nWhat is in the picture?"),  # MiniCPM-V puts it in front
])
def test_minicpmv_single_path(tmp_path, content, expected):
    obj = {"id": "0", "image": "coco/000000033471.jpg",
           "conversations": [{"role": "user", "content": content},
                             {"role": "assistant", "content": "A bus."}]}
    rec = only_record(read(write_jsonl(tmp_path / "m.jsonl", [obj])))
    assert rec.meta["format"] == "minicpmv"
    assert rec.turns[0] == Turn("user", expected)
    assert rec.media == [MediaRef("image", "coco/000000033471.jpg", ROOT)]


def test_minicpmv_placeholder_mismatches(tmp_path):
    unknown = dict(MINICPMV_DICT, conversations=[{"role": "user", "content": "<image_00><image_07>Q"},
                                                 {"role": "assistant", "content": "A"}])
    unused = dict(MINICPMV_DICT, conversations=[{"role": "user", "content": "<image_00><image_01>Q"},
                                                {"role": "assistant", "content": "A"}])
    items = read(write_jsonl(tmp_path / "m.jsonl", [unknown, unused]), "minicpmv")
    assert [getattr(i, "reason", None) for i in items] == [MEDIA_TAG_MISMATCH, MEDIA_TAG_MISMATCH]


# --- auto detection ------------------------------------------------------------------


def test_auto_detects_each_record_of_a_mixed_file(tmp_path):
    records = [VIDEOINSTRUCT, LLAVA_VIDEO_178K, LLAVA_PRETRAIN, SHAREGPT, T2VID_SYNTHETIC,
               {"context": "c", "question": "q", "answer": "a"}, MINICPMV_DICT, {"foo": 1}]
    items = read(write_jsonl(tmp_path / "mixed.jsonl", records))
    assert [i.meta["format"] for i in items[:-1]] == [
        "videochatgpt", "llava", "llava", "sharegpt", "t2vid_synthetic", "t2vid_raw", "minicpmv"]
    assert isinstance(items[-1], SampleError) and items[-1].reason == BAD_RECORD
    assert items[-1].key == "src-00000007"
    assert detect_format({"id": "x", "video": "frames/v_abc", "conversations": []}) == "llava"


# --- file layouts --------------------------------------------------------------------


def test_array_and_jsonl_sniffed_not_by_extension(tmp_path):
    records = [VIDEOINSTRUCT, LLAVA_PRETRAIN]
    array_as_jsonl = write_array(tmp_path / "looks_like.jsonl", records)
    jsonl_as_json = write_jsonl(tmp_path / "looks_like.json", records)
    a, b = read(array_as_jsonl), read(jsonl_as_json)
    assert all(isinstance(i, Record) for i in a + b)
    assert [(r.key, r.turns, r.media) for r in a] == [(r.key, r.turns, r.media) for r in b]
    assert [r.media[0].path for r in a] == ["v_k_ZXmr8pmrs", "00453/004539375.jpg"]


def test_byte_order_mark_and_leading_whitespace(tmp_path):
    for name, text in [("a.json", "\n\n  " + json.dumps([VIDEOINSTRUCT])),
                       ("b.jsonl", "\n" + json.dumps(VIDEOINSTRUCT) + "\n")]:
        path = tmp_path / name
        path.write_bytes(b"\xef\xbb\xbf" + text.encode())
        rec = only_record(read(path))
        assert rec.media == [MediaRef("video", "v_k_ZXmr8pmrs", ROOT)]


def test_floats_not_decimals_from_the_array_parser(tmp_path):
    obj = dict(LLAVA_VIDEO_178K, duration=12.5)
    rec = only_record(read(write_array(tmp_path / "a.json", [obj])))
    assert type(rec.meta["duration"]) is float and rec.meta["duration"] == 12.5


def test_malformed_jsonl_line_keeps_its_position(tmp_path):
    path = tmp_path / "vcg.jsonl"
    path.write_text(json.dumps(VIDEOINSTRUCT) + "\n"
                    + '{"video_id": "v_broken", "q": "cut off\n'  # the line is cut short
                    + "\n   \n"  # blank lines take no position
                    + json.dumps(dict(VIDEOINSTRUCT, video_id="v_after")) + "\n")
    items = read(path, name="vcg")
    assert [type(i) for i in items] == [Record, SampleError, Record]
    bad = items[1]
    assert bad.reason == BAD_JSON and bad.key == "vcg-00000001" and bad.path == str(path)
    assert "line 2" in bad.message
    assert items[2].key == "vcg-00000002" and items[2].index == 2
    assert items[2].media[0].path == "v_after"


def test_malformed_array_element_is_skipped_and_reading_goes_on(tmp_path):
    good = json.dumps(VIDEOINSTRUCT)
    path = tmp_path / "vcg.json"
    path.write_text(f"[{good},\n{good},\n{{\"video_id\": \"v_x\", \"q\": ,}},\n{good}]")
    items = read(path, "videochatgpt")
    assert [type(i) for i in items] == [Record, Record, SampleError, Record]
    bad = items[2]
    assert bad.reason == BAD_JSON and bad.key == "src-00000002" and bad.path == str(path)
    assert f"byte {2 * len(good) + 5}" in bad.message  # where the element starts
    assert items[3].key == "src-00000003"


def test_truncated_array_counts_its_tail(tmp_path):
    text = json.dumps([VIDEOINSTRUCT] * 3)
    path = tmp_path / "cut.json"
    path.write_text(text[: len(text) - 20])
    items = read(path)
    assert [type(i) for i in items] == [Record, Record, SampleError]
    assert items[2].reason == "unreadable_tail" and "byte" in items[2].message


def test_non_object_items_and_bad_fields(tmp_path):
    records = [
        ["not", "a", "record"],
        {"video": "a.mp4"},  # no conversations
        dict(LLAVA_VIDEO_178K, conversations=[human(["<image>", "q"]), gpt("a")]),  # non-string content
        dict(LLAVA_VIDEO_178K, conversations=[{"from": "narrator", "value": "<image>x"}]),
        {"video_id": "v_1", "q": "What?", "a": None},
        dict(LLAVA_VIDEO_178K, video=["a.mp4", 7]),
        LLAVA_VIDEO_178K,
    ]
    items = read(write_array(tmp_path / "a.json", records), name="s")
    assert [getattr(i, "reason", "ok") for i in items] == [BAD_RECORD] * 6 + ["ok"]
    assert [i.key for i in items] == [f"s-{i:08d}" for i in range(7)]
    assert all(i.path == str(tmp_path / "a.json") for i in items[:6])


def test_tag_media_mismatch(tmp_path):
    records = [
        # two <video> tags, one video
        dict(LLAVA_VIDEO_178K, conversations=[human("<video>\nA?"), gpt("a"), human("<video>\nB?"), gpt("b")]),
        # a video tag but the media is an image
        dict(LLAVA_PRETRAIN, conversations=[human("<video>\nDescribe."), gpt("a")]),
        # two images listed, one tag
        dict(SHAREGPT, conversations=[human("<image><video>Q"), gpt("A")]),
        # a media field but no tag at all
        dict(LLAVA_PRETRAIN, conversations=[human("Describe."), gpt("a")]),
        # a tag but no media
        {"conversations": [human("<image>\nWhat is it?"), gpt("a")]},
        # text-only: fine
        {"id": "t", "conversations": [human("Hello"), gpt("Hi")]},
    ]
    items = read(write_jsonl(tmp_path / "m.jsonl", records))
    assert [getattr(i, "reason", "ok") for i in items] == [MEDIA_TAG_MISMATCH] * 5 + ["ok"]
    assert items[-1].media == []


def test_limit_counts_positions_including_bad_ones(tmp_path):
    path = tmp_path / "vcg.jsonl"
    good = json.dumps(VIDEOINSTRUCT)
    path.write_text("\n".join([good, "{oops", good, good, good]) + "\n")
    items = read(path, limit=3)
    assert [type(i) for i in items] == [Record, SampleError, Record]
    assert read(path, limit=0) == []
    assert len(read(path, limit=100)) == 5


def test_key_has_no_dots_even_when_name_or_id_does(tmp_path):
    obj = dict(LLAVA_PRETRAIN, id="coco.train2017.000000033471.jpg")
    items = read(write_array(tmp_path / "a.json", [obj, obj]), name="laion.v1/part 2")
    assert [i.key for i in items] == ["laion_v1_part_2-00000000", "laion_v1_part_2-00000001"]
    assert "." not in items[0].key and "/" not in items[0].key
    assert items[0].id == "coco.train2017.000000033471.jpg"
    assert items[0].source == "laion.v1/part 2"
    assert record_key("vcg", 123) == "vcg-00000123"


def test_media_root_and_absolute_paths_kept_as_written(tmp_path):
    obj = dict(LLAVA_VIDEO_178K, video="/abs/videos/../x.mp4")
    rec = only_record(list(iter_source(SourceConfig(name="s", annotations=write_jsonl(tmp_path / "a", [obj]),
                                                    media_root="/elsewhere"))))
    assert rec.media == [MediaRef("video", "/abs/videos/../x.mp4", "/elsewhere")]


# --- config-level problems -----------------------------------------------------------


def test_missing_unreadable_or_non_json_file_raises_config_error(tmp_path):
    with pytest.raises(ConfigError, match="nope.json"):
        iter_source(SourceConfig(name="s", annotations=str(tmp_path / "nope.json")))
    with pytest.raises(ConfigError):
        iter_source(SourceConfig(name="s", annotations=str(tmp_path)))  # a directory
    (tmp_path / "video.mp4").write_bytes(b"\x00\x00\x00\x18ftypmp42")
    with pytest.raises(ConfigError, match="neither"):
        iter_source(SourceConfig(name="s", annotations=str(tmp_path / "video.mp4")))
    with pytest.raises(ConfigError, match="format"):
        iter_source(SourceConfig(name="s", annotations=write_jsonl(tmp_path / "a.jsonl", [VIDEOINSTRUCT]),
                                 format="webvid"))


def test_empty_file_has_no_records(tmp_path):
    (tmp_path / "empty.json").write_text("  \n")
    (tmp_path / "empty_array.json").write_text("[]")
    assert read(tmp_path / "empty.json") == []
    assert read(tmp_path / "empty_array.json") == []


# --- streaming -----------------------------------------------------------------------


def test_large_array_is_streamed_not_loaded(tmp_path):
    n = 200_000
    path = tmp_path / "VideoInstruct100K.json"
    entry = '{"video_id": "v_%07d", "q": "What is happening in the video at this moment?", "a": "Answer %d."}'
    with open(path, "w") as f:
        f.write("[\n" + ",\n".join(entry % (i, i) for i in range(n)) + "\n]\n")
    size = os.path.getsize(path)
    assert size > 20_000_000

    items = iter_source(SourceConfig(name="big", annotations=str(path), media_root=ROOT))
    tracemalloc.start()
    try:
        first = next(items)
        for _ in range(19_999):  # keep none of them: only the reader's own memory counts
            last = next(items)
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    # json.load of this file peaks at ~4x its size; streaming holds a buffer and one item
    assert peak < size // 10, f"peak {peak} bytes for a {size}-byte file"
    assert first.media[0].path == "v_0000000"
    rest = sum(1 for _ in items)
    assert 20_000 + rest == n
    assert last.key == "big-00019999" and last.turns[1].content == "Answer 19999."
