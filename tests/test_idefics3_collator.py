"""The Idefics3 collator: T2Vid records in, the processor's batch with T2Vid's labels out (no hub).

The oracle below is T2Vid's Idefics3 collator rule as REFERENCE 6 documents it, written
with string operations (no chat template, no processor): tags removed and every turn
stripped, the images first in the first user turn, Idefics3's turn layout, the rendered
text stripped, each ``<image>`` expanded as the processor does unsplit, then the
tokenizer. The collator must give exactly those ids, that padding, and those labels.
"""
from __future__ import annotations

import json
import re

import numpy as np
import pytest
import torch
from PIL import Image
from tokenizers import AddedToken

from mmstream.config import ModelConfig
from mmstream.models import get_model
from mmstream.models.base import MediaShape
from mmstream.types import Drop, MediaRef, Record, Turn
from tiny_idefics3 import BOS, IMAGE_SEQ_LEN, make_processor, make_tokenizer
from training_adapters.idefics3 import (IGNORE_INDEX, IMAGE_TRUNCATED, PROCESSOR_ERROR, Idefics3Collator,
                                        Idefics3Dataset, to_messages)

FAKE, GLOBAL, IMAGE, EOU = "<fake_token_around_image>", "<global-img>", "<image>", "<end_of_utterance>"


def t2vid_sequence(tokenizer, conversations, num_images, strip_text=True):
    """Oracle: the token ids T2Vid's collator feeds the model for one record (unsplit images)."""
    text = BOS
    for i, turn in enumerate(conversations):
        body = re.sub(r"<image_\d+>", "", turn["content"]).strip()
        images = num_images if i == 0 else 0
        text += turn["role"].capitalize() + (":" if images else ": ") + IMAGE * images + body + EOU + "\n"
    if strip_text:
        text = text.strip()
    text = text.replace(IMAGE, FAKE + GLOBAL + IMAGE * IMAGE_SEQ_LEN + FAKE)
    return tokenizer(text)["input_ids"]  # the tokenizer adds its BOS, as the processor's call does


def t2vid_labels(ids, tokenizer):
    return [IGNORE_INDEX if i in (tokenizer.pad_token_id, tokenizer.convert_tokens_to_ids(IMAGE)) else i for i in ids]


@pytest.fixture(scope="module")
def tok_dir(tmp_path_factory):
    return make_tokenizer(tmp_path_factory.mktemp("idefics3_tok"))


@pytest.fixture(scope="module")
def processor(tok_dir):
    return make_processor(tok_dir)


def img(value=200, size=(60, 40)):
    return Image.fromarray(np.full((size[1], size[0], 3), value, np.uint8))


# Records as mmstream writes them (tags in front, one per frame) and one T2Vid-shaped
# record with stray whitespace in later turns (T2Vid strips every turn).
RECORDS = [
    [{"role": "user", "content": "<image_00>\n<image_01>\nwhat happens ?"},
     {"role": "assistant", "content": "a cat jumps ."}],
    [{"role": "user", "content": "<image_00>\nwhat ?"}, {"role": "assistant", "content": "a ."},
     {"role": "user", "content": "  what happens ?\n"}, {"role": "assistant", "content": "a cat .\n"}],
]


def examples():
    return [{"images": {"<image_00>": img(), "<image_01>": img(100)}, "conversations": RECORDS[0]},
            {"images": {"<image_00>": img()}, "conversations": RECORDS[1]}]


def rows(batch):
    """Each row's unpadded ids and labels, and its padding's ids and labels."""
    out = []
    for ids, mask, labels in zip(batch["input_ids"], batch["attention_mask"], batch["labels"]):
        keep = mask == 1
        out.append((ids[keep].tolist(), labels[keep].tolist(), ids[~keep].tolist(), labels[~keep].tolist()))
    return out


def test_tags_removed_every_turn_stripped_and_images_first():
    msgs = to_messages(RECORDS[1], 1)
    assert msgs[0] == {"role": "user", "content": [{"type": "image"}, {"type": "text", "text": "what ?"}]}
    assert msgs[2] == {"role": "user", "content": [{"type": "text", "text": "what happens ?"}]}
    assert msgs[3] == {"role": "assistant", "content": [{"type": "text", "text": "a cat ."}]}


@pytest.mark.parametrize("strip_text", [True, False])
def test_ids_mask_and_labels_equal_t2vids_collator(processor, strip_text):
    batch = Idefics3Collator(processor, strip_text=strip_text)(examples())
    tok = processor.tokenizer
    assert tok.padding_side == "right"
    for (ids, labels, pad_ids, pad_labels), conv, n in zip(rows(batch), RECORDS, (2, 1)):
        expected = t2vid_sequence(tok, conv, n, strip_text)
        assert ids == expected
        assert labels == t2vid_labels(expected, tok)
        assert set(pad_ids) <= {tok.pad_token_id} and set(pad_labels) <= {IGNORE_INDEX}
        assert ids[:2] == [tok.bos_token_id] * 2  # the template's BOS and the tokenizer's
        # T2Vid's sequence ends at <end_of_utterance>; the option keeps (and trains) the newline
        tail = [tok.convert_tokens_to_ids(EOU)] + ([] if strip_text else [tok.convert_tokens_to_ids("\n")])
        assert ids[-len(tail):] == tail and labels[-len(tail):] == tail
    assert (batch["attention_mask"][1] == 0).any()  # the shorter row is padded
    assert batch["pixel_values"].shape == (2, 2, 3, 364, 364)  # 2 samples, up to 2 images each
    assert batch["pixel_attention_mask"].shape == (2, 2, 364, 364)


@pytest.mark.parametrize("strip_text", [True, False])
def test_mmstream_chat_template_count_is_the_sequence_length(tok_dir, processor, strip_text):
    """mmstream's record -> its token count, and the same record -> the collator: equal."""
    model = get_model(ModelConfig(name="idefics3", tokenizer=tok_dir, token_count="chat_template",
                                  options={"strip_text": strip_text}))
    rec = Record(key="k", source="s", media=[MediaRef("video", "v.mp4")],
                 turns=[Turn("user", "<video>\nwhat happens ?"), Turn("assistant", "a cat jumps ."),
                        Turn("user", "what is it ?"), Turn("assistant", "a video .")])
    model_record = model.format(rec, [3])
    counts = model.count_tokens(rec, model_record, [MediaShape("video", 3, 60, 40)])
    item = {"images": [img(50 * i) for i in range(3)], "conversations": model_record["conversations"]}
    batch = Idefics3Collator(processor, strip_text=strip_text)([item])
    assert counts["total"] == batch["input_ids"].shape[1] == len(t2vid_sequence(
        processor.tokenizer, model_record["conversations"], 3, strip_text))
    assert counts["visual"] == int((batch["input_ids"] == processor.tokenizer.convert_tokens_to_ids(IMAGE)).sum())


def test_truncation_at_max_length_cuts_the_text_as_t2vid_does(processor):
    tok = processor.tokenizer
    full = t2vid_sequence(tok, RECORDS[1], 1)
    max_length = len(full) - 3  # inside the last answer, after the image
    collate = Idefics3Collator(processor, max_length=max_length)
    batch = collate([examples()[1]])
    assert batch["input_ids"][0].tolist() == full[:max_length]
    assert batch["labels"][0].tolist() == t2vid_labels(full[:max_length], tok)
    assert collate.stats == {"kept": 1}


def test_a_sample_truncation_would_cut_into_images_is_dropped_not_the_batch(processor):
    tok = processor.tokenizer
    short = t2vid_sequence(tok, RECORDS[1], 1)
    collate = Idefics3Collator(processor, max_length=len(short), emit_drops=True)
    batch = collate(examples())  # the first has two images: its second ends past max_length
    assert batch["input_ids"][0].tolist() == short
    assert [(d.reason, d.key) for d in batch["dropped"]] == [(IMAGE_TRUNCATED, "#0")]
    assert collate.stats == {"kept": 1, IMAGE_TRUNCATED: 1}


def test_a_sample_the_processor_rejects_is_a_counted_drop(processor):
    bad = {"key": "bad", "images": [img()],
           "conversations": [{"role": "user", "content": "<image_00>\nwhat <image> ?"},  # a literal <image>
                             {"role": "assistant", "content": "a ."}]}
    collate = Idefics3Collator(processor, emit_drops=True)
    stream_drop = Drop(key="s-1", source="s", reason="too_many_tokens")
    batch = collate([examples()[0], bad, stream_drop, examples()[1]])
    assert [row[0] for row in rows(batch)] == [t2vid_sequence(processor.tokenizer, c, n)
                                                for c, n in zip(RECORDS, (2, 1))]
    assert batch["pixel_values"].shape[:2] == (2, 2)
    assert sorted((d.key, d.reason) for d in batch["dropped"]) == [("bad", PROCESSOR_ERROR),
                                                                  ("s-1", "too_many_tokens")]
    assert collate.stats == {"kept": 2, PROCESSOR_ERROR: 1, "too_many_tokens": 1}
    quiet = Idefics3Collator(processor)
    assert quiet([bad]) is None and quiet.stats == {PROCESSOR_ERROR: 1}  # nothing left: skip the step
    assert "dropped" not in quiet(examples())


def test_processor_tokens_may_be_added_tokens(processor):
    """transformers 4.46 holds the processor's tokens as AddedToken objects (5.x: strings)."""
    saved = processor.image_token, processor.fake_image_token
    try:
        processor.image_token = AddedToken("<image>", normalized=False, special=True)
        processor.fake_image_token = AddedToken(FAKE, normalized=False, special=True)
        collate = Idefics3Collator(processor, mask_image_wrappers=True)
    finally:
        processor.image_token, processor.fake_image_token = saved
    tok = processor.tokenizer
    assert collate.image_token_id == tok.convert_tokens_to_ids("<image>")
    assert tok.convert_tokens_to_ids(FAKE) in collate.masked_ids


def test_optionally_masks_the_tokens_around_images(processor):
    batch = Idefics3Collator(processor, mask_image_wrappers=True)(examples())
    tok = processor.tokenizer
    for name in (FAKE, GLOBAL):
        tid = tok.convert_tokens_to_ids(name)
        assert (batch["input_ids"] == tid).any()
        assert (batch["labels"][batch["input_ids"] == tid] == IGNORE_INDEX).all()


def test_dataset_reads_a_files_layout_json_list(tmp_path, processor):
    paths = []
    for i in range(2):
        p = tmp_path / "images" / "k" / f"{i:05d}.jpg"
        p.parent.mkdir(parents=True, exist_ok=True)
        img(50 * (i + 1)).save(p)
        paths.append(str(p))
    data = [{"id": "k", "image": {"<image_00>": paths[0], "<image_01>": paths[1]}, "conversations": RECORDS[0]}]
    (tmp_path / "data.json").write_text(json.dumps(data))
    ds = Idefics3Dataset(str(tmp_path / "data.json"))
    ex = ds[0]
    assert len(ds) == 1 and len(ex["images"]) == 2 and ex["images"][0].mode == "RGB"
    assert ex["messages"][0]["content"][:2] == [{"type": "image"}, {"type": "image"}]
    batch = Idefics3Collator(processor)([ex])
    assert batch["input_ids"][0].tolist() == t2vid_sequence(processor.tokenizer, RECORDS[0], 2)
    assert torch.equal(batch["labels"] == IGNORE_INDEX,
                       batch["input_ids"] == processor.tokenizer.convert_tokens_to_ids(IMAGE))
