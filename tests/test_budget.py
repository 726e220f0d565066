"""The inline length filter on T2Vid's edge cases, and text counting in both modes.

Token expectations come from the tiny tokenizer's rule (tiny_tok.pieces: one token
per word or punctuation run, one per special token), not from the code under test.
"""
from __future__ import annotations

import pickle

import numpy as np
import pytest

from mmstream.budget import Budget
from mmstream.config import FilterConfig, ModelConfig
from mmstream.errors import ConfigError, SampleError
from mmstream.models import get_model, media_shapes
from mmstream.types import Clip, MediaPlan, MediaRef, Record, Sample, Turn
from tiny_tok import QWEN_VISION_TOKENS, STRING_TEMPLATE, STRING_TEMPLATE_TOKENS, make_tokenizer, pieces

MINICPM_SPECIALS = ["<image>", "</image>", "<slice>", "</slice>", "<image_id>", "</image_id>"] + STRING_TEMPLATE_TOKENS
QWEN_SPECIALS = QWEN_VISION_TOKENS + STRING_TEMPLATE_TOKENS

QUESTION = "Summarize the paper in two sentences."
ANSWER = "It proposes X. It shows Y."


@pytest.fixture(scope="module")
def tok_dir(tmp_path_factory):
    return make_tokenizer(tmp_path_factory.mktemp("tok"), MINICPM_SPECIALS + QWEN_SPECIALS,
                          chat_template=STRING_TEMPLATE)


def synthetic(question=QUESTION, turns=None, n_media=1):
    turns = turns or [Turn("user", "<video>\n" + question), Turn("assistant", ANSWER)]
    return Record(key="la-0", source="la", turns=turns, media=[MediaRef("pages", None, text="ctx")] * n_media,
                  meta={"synthetic": True})


def pages(n, size=448):
    return MediaPlan("pages", None, size, size, list(range(n)), [float(i) for i in range(n)])


def budget(tok_dir=None, name="minicpmv-2.5", mode="t2vid", **filt):
    m = get_model(ModelConfig(name=name, tokenizer=tok_dir, token_count=mode))
    return Budget(m, FilterConfig(**filt))


def reason_of(fn, *args):
    with pytest.raises(SampleError) as e:
        fn(*args)
    return e.value.reason


# -- T2Vid rules on the annotation -----------------------------------------------------------

def test_one_video_tag_in_first_turn_passes():
    budget(one_video_in_first_turn=True).check_record(synthetic())


@pytest.mark.parametrize("turns,reason", [
    ([Turn("user", "<video>\n<video>\nQ?"), Turn("assistant", "A.")], "video_tag_count"),
    ([Turn("user", "<video>\nQ?"), Turn("assistant", "A."), Turn("user", "<video> again?"),
      Turn("assistant", "B.")], "video_tag_count"),
    ([Turn("user", "Q?"), Turn("assistant", "A.")], "video_tag_count"),
    ([Turn("user", "Q?"), Turn("assistant", "A."), Turn("user", "<video>\nR?"),
      Turn("assistant", "B.")], "video_tag_not_first_turn"),
    ([Turn("user", "Q?"), Turn("assistant", "<video> A.")], "video_tag_not_first_turn"),
])
def test_video_tag_rules(turns, reason):
    assert reason_of(budget(one_video_in_first_turn=True).check_record, synthetic(turns=turns)) == reason


def test_video_tag_rules_off_by_default():
    budget().check_record(synthetic(turns=[Turn("user", "Q?"), Turn("assistant", "A.")]))


@pytest.mark.parametrize("limit,words,dropped", [(30, 29, False), (30, 30, True), (30, 31, True),
                                                  (500, 499, False), (500, 500, True)])
def test_first_turn_word_limit(limit, words, dropped):
    question = " ".join(f"w{i}" for i in range(words))  # "<video>\nw0" is one word, split on spaces
    b = budget(max_first_turn_words=limit)
    if dropped:
        assert reason_of(b.check_record, synthetic(question)) == "first_turn_words"
    else:
        b.check_record(synthetic(question))


# -- caps from the plans ------------------------------------------------------------------------

def test_frame_cap_exactly_passes_one_over_drops():
    b = budget(max_frames=90)
    b.check_plans(synthetic(), [pages(90)])
    assert reason_of(b.check_plans, synthetic(), [pages(91)]) == "too_many_frames"
    # frames add up over the sample's media
    assert reason_of(b.check_plans, synthetic(n_media=2), [pages(45), pages(46)]) == "too_many_frames"


def test_images_do_not_count_as_frames():
    rec = Record(key="k", source="s", turns=[Turn("user", "<image>\nQ?"), Turn("assistant", "A.")],
                 media=[MediaRef("image", "a.jpg")])
    budget(max_frames=1).check_plans(rec, [MediaPlan("image", "a.jpg", 640, 480, [0], [0.0])])


def t2vid_text(record, bos=True):
    return pieces("\n".join(t.content for t in record.turns)) + (1 if bos else 0)


def test_token_cap_boundary_t2vid_minicpmv(tok_dir):
    rec = synthetic()
    text = t2vid_text(rec)  # "<video>" is 3 pieces: the raw tag stays in the text
    limit = text + 96 * 20
    tokens = budget(tok_dir, max_tokens=limit).check_plans(rec, [pages(20)])
    assert tokens == {"text": text, "visual": 96 * 20, "total": limit}
    assert reason_of(budget(tok_dir, max_tokens=limit - 1).check_plans, rec, [pages(20)]) == "too_many_tokens"


def test_token_cap_boundary_t2vid_idefics3(tok_dir):
    rec = synthetic()
    limit = t2vid_text(rec) + 169 * 10
    budget(tok_dir, "idefics3", max_tokens=limit).check_plans(rec, [pages(10)])
    assert reason_of(budget(tok_dir, "idefics3", max_tokens=limit - 1).check_plans, rec, [pages(10)]) \
        == "too_many_tokens"


def test_t2vid_text_without_bos(tmp_path):
    path = make_tokenizer(tmp_path / "nobos", bos=None)
    m = get_model(ModelConfig(name="minicpmv-2.5", tokenizer=path))
    rec = synthetic()
    assert m.text_tokens(rec, m.format(rec, [1])) == t2vid_text(rec, bos=False)


def test_t2vid_counts_every_turn(tok_dir):
    rec = synthetic(turns=[Turn("user", "<video>\nwhat is the video ?"), Turn("assistant", "a video"),
                           Turn("user", "is it ?"), Turn("assistant", "the video")])
    m = get_model(ModelConfig(name="minicpmv-2.5", tokenizer=tok_dir))
    # <s> < video > what is the video ? a video is it ? the video
    assert m.text_tokens(rec, m.format(rec, [1])) == 16


# -- chat_template counting -----------------------------------------------------------------------

def test_chat_template_minicpmv25(tok_dir):
    rec = synthetic()
    tokens = budget(tok_dir, mode="chat_template").check_plans(rec, [pages(2)])
    # <s> <|user|> [<image> 96x<unk> </image>] x2 question <|end|> <|assistant|> answer <|end|>
    per_image = 1 + 96 + 1
    total = 1 + 1 + 2 * per_image + pieces(QUESTION) + 1 + 1 + pieces(ANSWER) + 1
    assert tokens == {"text": total - 192, "visual": 192, "total": total}


def test_chat_template_minicpmv26_slices_and_image_ids(tok_dir):
    rec = synthetic()
    plan = MediaPlan("video", "v.mp4", 1280, 720, [0], [0.0])  # (3,2) slices
    tokens = budget(tok_dir, "minicpmv-2.6", "chat_template").check_plans(rec, [plan])
    # <image_id> 0 </image_id> <image> 64 </image> \n [<slice> 64 </slice>] x 6 (newlines are dropped)
    image = 3 + (1 + 64 + 1) + 6 * (1 + 64 + 1)
    total = 1 + 1 + image + pieces(QUESTION) + 1 + 1 + pieces(ANSWER) + 1
    assert tokens == {"text": total - 448, "visual": 448, "total": total}


def test_chat_template_qwen_video(tok_dir):
    rec = Record(key="k", source="s", turns=[Turn("user", "<video>\n" + QUESTION), Turn("assistant", ANSWER)],
                 media=[MediaRef("video", "v.mp4")])
    plan = MediaPlan("video", "v.mp4", 640, 360, list(range(8)), [i / 2 for i in range(8)], fps=2.0)
    tokens = budget(tok_dir, "qwen2-vl", "chat_template").check_plans(rec, [plan])
    # <s> <|user|> <|vision_start|> 1196 x <|video_pad|> <|vision_end|> question <|end|> <|assistant|> ...
    total = 1 + 1 + (1 + 1196 + 1) + pieces(QUESTION) + 1 + 1 + pieces(ANSWER) + 1
    assert tokens == {"text": total - 1196, "visual": 1196, "total": total}


def test_chat_template_token_cap_boundary(tok_dir):
    rec = synthetic()
    total = budget(tok_dir, mode="chat_template").check_plans(rec, [pages(3)])["total"]
    budget(tok_dir, mode="chat_template", max_tokens=total).check_plans(rec, [pages(3)])
    assert reason_of(budget(tok_dir, mode="chat_template", max_tokens=total - 1).check_plans,
                     rec, [pages(3)]) == "too_many_tokens"


def test_chat_template_needs_a_template(tmp_path):
    path = make_tokenizer(tmp_path / "plain", MINICPM_SPECIALS)
    with pytest.raises(ConfigError, match="chat template"):
        get_model(ModelConfig(name="minicpmv-2.5", tokenizer=path, token_count="chat_template"))
    # ... which the config can supply
    m = get_model(ModelConfig(name="minicpmv-2.5", tokenizer=path, token_count="chat_template",
                              options={"chat_template": STRING_TEMPLATE}))
    rec = synthetic()
    assert m.count_tokens(rec, m.format(rec, [1]), media_shapes([pages(1)]))["visual"] == 96


def test_chat_template_placeholders_must_be_single_tokens(tmp_path):
    path = make_tokenizer(tmp_path / "noimg", STRING_TEMPLATE_TOKENS, chat_template=STRING_TEMPLATE)
    with pytest.raises(ConfigError, match="placeholder"):
        get_model(ModelConfig(name="minicpmv-2.5", tokenizer=path, token_count="chat_template"))


# -- start-up checks, pickling, finalize -------------------------------------------------------------

def test_token_cap_needs_a_model_and_tokenizer():
    with pytest.raises(ConfigError):
        Budget(None, FilterConfig(max_tokens=100))
    with pytest.raises(ConfigError):
        Budget(get_model(ModelConfig(name="minicpmv-2.5")), FilterConfig(max_tokens=100))


def test_model_pickles_without_its_tokenizer(tok_dir):
    m = get_model(ModelConfig(name="minicpmv-2.5", tokenizer=tok_dir))
    assert m._tok is not None  # loaded at construction
    blob = pickle.dumps(Budget(m, FilterConfig(max_tokens=10_000)))
    assert b"PreTrainedTokenizer" not in blob and b"TokenizersBackend" not in blob
    b = pickle.loads(blob)
    rec = synthetic()
    assert b.check_plans(rec, [pages(2)]) == {"text": t2vid_text(rec), "visual": 192, "total": t2vid_text(rec) + 192}


def clip(n, w=448, h=448, kind="pages"):
    return Clip(kind, None, np.zeros((n, h, w, 3), np.uint8), np.arange(n, dtype=np.float64),
                np.arange(n, dtype=np.int64))


def test_finalize_sets_record_and_tokens(tok_dir):
    b = budget(tok_dir, max_tokens=8192)
    rec = synthetic()
    plans = [pages(3)]
    estimate = b.check_plans(rec, plans)
    sample = b.finalize(Sample(rec.key, rec.source, rec, [clip(3)]), plans)
    assert sample.tokens == estimate
    assert sample.model_record == get_model(ModelConfig(name="minicpmv-2.5")).format(rec, [3])
    # finalize without a preceding check_plans (another process) computes the same
    sample2 = budget(tok_dir).finalize(Sample(rec.key, rec.source, rec, [clip(3)]), plans)
    assert sample2.tokens == estimate and sample2.model_record == sample.model_record


@pytest.mark.parametrize("clips", [[clip(2)], [clip(3, w=440)], [clip(3), clip(1)]])
def test_finalize_checks_the_estimate(tok_dir, clips):
    b = budget(tok_dir)
    rec = synthetic()
    b.check_plans(rec, [pages(3)])
    assert reason_of(b.finalize, Sample(rec.key, rec.source, rec, clips), [pages(3)]) == "estimate_mismatch"


def test_unusable_conversation_drops_before_any_media():
    rec = synthetic(turns=[Turn("user", "<video>\nQ?"), Turn("assistant", " ")])
    assert reason_of(budget().check_record, rec) == "empty_answer"
    Budget(None, FilterConfig()).check_record(rec)  # no model: no format to satisfy
