"""Idefics3 batches a real model accepts: the live stream (2 workers, collator in the
workers) and the cache shards, through a tiny random-init Idefics3ForConditionalGeneration,
forward and backward on every batch, split and unsplit images."""
from __future__ import annotations

import json

import pytest
import torch
from PIL import Image
from torch.utils.data import DataLoader
from torchdata.stateful_dataloader import StatefulDataLoader

from mmstream import StreamingDataset
from mmstream.sinks import run_cache
from mmstream.synth import draw_counter, encode_counter_video, make_frame_folder
from mmstream.types import Drop
from tiny_idefics3 import make_model, make_processor, make_tokenizer
from training_adapters.idefics3 import Idefics3Collator, Idefics3Dataset

SPLIT_EDGE = 728  # split: frames become 2 x 2 tiles + the global image (5 x 169 tokens), cheap yet split
KEPT = {"mm-00000000", "mm-00000001", "mm-00000002", "mm-00000003", "pages-00000000"}
FRAMES = 2 + 2 + 2 + 1 + 2 + 1  # a video, two videos, an image, a frame folder, a page (2 frames a video)


def sharegpt(question, answer, **media):
    return {"conversations": [{"from": "human", "value": question}, {"from": "gpt", "value": answer}], **media}


@pytest.fixture(scope="module")
def data(tmp_path_factory):
    root = tmp_path_factory.mktemp("idefics3_mix")
    (root / "videos").mkdir()
    encode_counter_video(root / "videos" / "a.mp4", num_frames=75, fps=25, size=(64, 48))  # 3 s
    encode_counter_video(root / "videos" / "b.mp4", num_frames=50, fps=25, size=(48, 64))  # portrait
    (root / "images").mkdir()
    Image.fromarray(draw_counter(7, (80, 60))).save(root / "images" / "p.png")
    make_frame_folder(root / "frames" / "f", num_frames=4, fps="2.0", size=(64, 48))
    records = [
        sharegpt("<video>\nwhat happens ?", "a video .", videos=["videos/a.mp4"]),
        sharegpt("<video>\n<video>\nwhat is it ?", "the video .", videos=["videos/a.mp4", "videos/b.mp4"]),
        sharegpt("<image>\ndescribe this picture .", "it shows a number .", images=["images/p.png"]),
        sharegpt("<video>\nwhich number ?", "a number .", videos=["frames/f.mp4"]),  # the frame folder
    ]
    (root / "mm.json").write_text(json.dumps(records))
    pages = [{"context": " ".join(["word"] * 100), "question": "what is it ?", "answer": "words ."},
             {"context": " ".join(["word"] * 115 * 30), "question": "and this ?", "answer": "words ."}]  # 30 pages
    (root / "pages.jsonl").write_text("".join(json.dumps(p) + "\n" for p in pages))
    return root, make_tokenizer(root / "tok")


def config(root, tok, splitting):
    return {
        "sources": [
            {"name": "mm", "format": "sharegpt", "annotations": str(root / "mm.json"), "media_root": str(root)},
            {"name": "pages", "format": "t2vid_raw", "annotations": str(root / "pages.jsonl"),
             "sampling": {"strategy": "none", "max_frames": None},
             # the long record (30 pages) is over the budget: a counted drop of the stream
             "filter": {"max_frames": 65, "max_tokens": 4000, "one_video_in_first_turn": True}},
        ],
        "sampling": {"fps": 1.0, "max_frames": 2, "strategy": "t2vid"},
        "model": {"name": "idefics3", "tokenizer": tok, "token_count": "chat_template",
                  "options": {"image_splitting": splitting, "longest_edge": SPLIT_EDGE}},
        "loader": {"shuffle": False},
        "output": {"format": "idefics3", "layout": "wds", "maxcount": 2},
    }


def train_on(model, batches):
    """Forward and backward on every batch; returns each row's length, the drops seen, and
    the (frames-or-tiles) count of real images in the pixel values."""
    lengths, drops, tiles = [], [], 0
    image_id = model.config.image_token_id
    for batch in batches:
        drops += batch.pop("dropped", [])
        if "input_ids" not in batch:  # every item of this batch was a drop
            continue
        model.zero_grad(set_to_none=True)
        out = model(**batch)  # the model's own check: image features vs <image> tokens
        assert torch.isfinite(out.loss)
        out.loss.backward()
        grads = [p.grad for p in model.parameters() if p.grad is not None]
        assert grads and all(torch.isfinite(g).all() for g in grads)
        patch_grad = model.model.vision_model.embeddings.patch_embedding.weight.grad
        assert patch_grad is not None and patch_grad.abs().sum() > 0  # the pixels reached the loss
        real = int((batch["pixel_values"].flatten(2) != 0).any(-1).sum())  # padding images are all zero
        assert int((batch["input_ids"] == image_id).sum()) == real * 169
        assert float(batch["pixel_values"].abs().max()) <= 1.0 + 1e-4  # normalised to [-1, 1]
        tiles += real
        lengths += batch["attention_mask"].sum(1).tolist()
    return lengths, drops, tiles


@pytest.mark.parametrize("splitting", [False, True], ids=["unsplit", "split"])
def test_live_stream_batches_train_a_real_idefics3(data, splitting):
    root, tok = data
    cfg = config(root, tok, splitting)
    counts = {s.key: s.tokens["total"] for s in StreamingDataset(cfg) if not isinstance(s, Drop)}
    assert set(counts) == KEPT
    processor = make_processor(tok, splitting=splitting, longest_edge=SPLIT_EDGE)
    collate = Idefics3Collator(processor, emit_drops=True)
    loader = StatefulDataLoader(StreamingDataset(cfg, emit_drops=True), batch_size=2, num_workers=2,
                                collate_fn=collate)  # the processor runs in the workers
    lengths, drops, tiles = train_on(make_model(processor.tokenizer), loader)
    assert [(d.key, d.reason) for d in drops] == [("pages-00000001", "too_many_tokens")]
    assert tiles == FRAMES * (5 if splitting else 1)  # split: 2 x 2 tiles + the global image per frame
    # every sample's batch row is exactly as long as the stream counted it
    assert sorted(lengths) == sorted(counts.values())
    assert collate.stats == {}  # the collator ran in the workers, not here


def test_cached_shards_train_a_real_idefics3_split_and_unsplit(data, tmp_path):
    root, tok = data
    summary = run_cache(config(root, tok, False), str(tmp_path / "cache"), workers=0, progress=False)
    assert summary["kept"] == len(KEPT)
    dataset = Idefics3Dataset(str(tmp_path / "cache"))
    assert sum(len(dataset[i]["images"]) for i in range(len(dataset))) == FRAMES
    for splitting in (False, True):
        processor = make_processor(tok, splitting=splitting, longest_edge=SPLIT_EDGE)
        loader = DataLoader(dataset, batch_size=2, collate_fn=Idefics3Collator(processor))
        lengths, drops, tiles = train_on(make_model(processor.tokenizer), loader)
        assert len(lengths) == len(KEPT) and drops == [] and tiles == FRAMES * (5 if splitting else 1)
