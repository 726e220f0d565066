"""The Idefics3 collator: T2Vid records in, input_ids / pixel_values / labels out (no hub)."""
from __future__ import annotations

import importlib.util
import json

import numpy as np
import pytest
import torch
from PIL import Image
from tokenizers import Tokenizer, models, pre_tokenizers
from transformers import Idefics3Processor, PreTrainedTokenizerFast

from training_adapters.idefics3 import IGNORE_INDEX, Idefics3Collator, Idefics3Dataset, to_messages

IMAGE_SEQ_LEN = 4  # <image> tokens per image (the real model: 169)
SPECIALS = ["<unk>", "<pad>", "<image>", "<fake_token_around_image>", "<global-img>", "<end_of_utterance>"] + [
    f"<row_{i}_col_{j}>" for i in range(1, 7) for j in range(1, 7)]
WORDS = ["User", "Assistant", ":", "what", "happens", "?", "a", "cat", "jumps", "."]
# Idefics3's turn layout ("User:<image>... text<end_of_utterance>\n"), written for this test.
TEMPLATE = ("{% for m in messages %}{{ m['role'] | capitalize }}:{% for c in m['content'] %}"
            "{% if c['type'] == 'image' %}<image>{% else %} {{ c['text'] }}{% endif %}{% endfor %}"
            "<end_of_utterance>\n{% endfor %}{% if add_generation_prompt %}Assistant:{% endif %}")


def image_processor():
    kwargs = dict(do_image_splitting=False, size={"longest_edge": 56}, max_image_size={"longest_edge": 28})
    if importlib.util.find_spec("torchvision") is not None:
        from transformers import Idefics3ImageProcessor
        return Idefics3ImageProcessor(**kwargs)
    from transformers import Idefics3ImageProcessorPil  # the same processor without torchvision
    return Idefics3ImageProcessorPil(**kwargs)


@pytest.fixture(scope="module")
def processor():
    tok = Tokenizer(models.WordLevel({t: i for i, t in enumerate(SPECIALS + WORDS)}, unk_token="<unk>"))
    tok.pre_tokenizer = pre_tokenizers.Whitespace()
    tok.add_special_tokens(SPECIALS)
    fast = PreTrainedTokenizerFast(tokenizer_object=tok, unk_token="<unk>", pad_token="<pad>")
    return Idefics3Processor(image_processor=image_processor(), tokenizer=fast, image_seq_len=IMAGE_SEQ_LEN,
                             chat_template=TEMPLATE)


def img(value=200):
    return Image.fromarray(np.full((40, 60, 3), value, np.uint8))


def examples():
    return [
        {"images": {"<image_00>": img(), "<image_01>": img(100)},
         "conversations": [{"role": "user", "content": "<image_00>\n<image_01>\nwhat happens ?"},
                           {"role": "assistant", "content": "a cat jumps ."}]},
        {"images": {"<image_00>": img()},
         "conversations": [{"role": "user", "content": "<image_00>\nwhat ?"}, {"role": "assistant", "content": "a ."},
                           {"role": "user", "content": "what happens ?"}, {"role": "assistant", "content": "a cat ."}]},
    ]


def test_tags_stripped_and_images_first_in_the_first_user_turn():
    msgs = to_messages(examples()[1]["conversations"], 1)
    assert msgs[0] == {"role": "user", "content": [{"type": "image"}, {"type": "text", "text": "what ?"}]}
    assert msgs[2] == {"role": "user", "content": [{"type": "text", "text": "what happens ?"}]}
    assert msgs[1]["role"] == "assistant"


def test_collator_returns_inputs_pixels_and_masked_labels(processor):
    batch = Idefics3Collator(processor)(examples())
    ids, labels, mask = batch["input_ids"], batch["labels"], batch["attention_mask"]
    assert ids.shape == labels.shape == mask.shape and ids.shape[0] == 2
    assert batch["pixel_values"].shape[:2] == (2, 2)  # 2 samples, up to 2 images each (padded)
    image_id = processor.tokenizer.convert_tokens_to_ids("<image>")
    assert int((ids[0] == image_id).sum()) == 2 * IMAGE_SEQ_LEN and int((ids[1] == image_id).sum()) == IMAGE_SEQ_LEN
    # image tokens and padding are -100, every other label equals its input id
    ignored = (ids == image_id) | (mask == 0)
    assert (mask == 0).any()  # the shorter sample is padded
    assert torch.equal(labels == IGNORE_INDEX, ignored)
    assert torch.equal(labels[~ignored], ids[~ignored])
    text = processor.tokenizer.decode(ids[0][mask[0] == 1])
    assert "<image_00>" not in text and text.startswith("User : <fake_token_around_image>")
    assert text.rstrip().endswith("Assistant : a cat jumps . <end_of_utterance>")


def test_optionally_masks_the_tokens_around_images(processor):
    batch = Idefics3Collator(processor, mask_image_wrappers=True)(examples())
    tok = processor.tokenizer
    for name in ("<fake_token_around_image>", "<global-img>"):
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
    data = [{"id": "k", "image": {"<image_00>": paths[0], "<image_01>": paths[1]},
             "conversations": [{"role": "user", "content": "<image_00>\n<image_01>\nwhat ?"},
                               {"role": "assistant", "content": "a cat ."}]}]
    (tmp_path / "data.json").write_text(json.dumps(data))
    ds = Idefics3Dataset(str(tmp_path / "data.json"))
    ex = ds[0]
    assert len(ds) == 1 and len(ex["images"]) == 2 and ex["images"][0].mode == "RGB"
    assert ex["messages"][0]["content"][:2] == [{"type": "image"}, {"type": "image"}]
    batch = Idefics3Collator(processor)([ex])
    assert set(batch) >= {"input_ids", "attention_mask", "pixel_values", "labels"}
