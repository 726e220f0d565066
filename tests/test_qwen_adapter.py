"""Qwen2-VL / Qwen2.5-VL batches proven by the real models.

A mixed stream (one video, two videos in one record, an image, a frame folder, T2Vid
text pages, a text-only record, and a record the length filter drops) goes through the
adapter in 2 DataLoader workers; tiny random-initialised Qwen2VLForConditionalGeneration
and Qwen2_5_VLForConditionalGeneration (real vision towers, 2 layers) run forward and
backward on every batch, padded and packed. The models' own checks (features vs
placeholder tokens) run in every forward. Packing is proven by each sample's loss inside
a pack being its loss alone.
"""
import pytest
import torch
import torch.nn.functional as F
from PIL import Image

from conftest import write_jsonl
from mmstream import StreamingDataset
from mmstream.pack import Pack
from mmstream.synth import encode_counter_video, make_frame_folder
from training_adapters.qwen2vl import COUNT_MISMATCH, IGNORE_INDEX, Qwen2VLCollator, make_processor, model_inputs
from training_adapters.qwen2vl.encode import answer_markers, answer_spans
from training_adapters.qwen2vl.tiny import CHATML_TEMPLATE, tiny_model, tiny_tokenizer, words_of

FAMILIES = ["qwen2-vl", "qwen2.5-vl"]
SMALL = 56 * 56 * 4  # at most 112x112 pixels: 16 tokens an image, 16 per temporal patch of a video
LONG_ANSWER = " ".join(["the video is what it is"] * 60)  # 360 words: over the 300-token budget

RECORDS = [
    {"conversations": [{"from": "human", "value": "<video>\nwhat is the video?"},
                       {"from": "gpt", "value": "a counter video."}], "videos": ["a.mp4"]},
    {"conversations": [{"from": "human", "value": "<video>\n<video>\nwhat is in the two videos?"},
                       {"from": "gpt", "value": "two counters."},
                       {"from": "human", "value": "which is taller?"},
                       {"from": "gpt", "value": "the second one."}], "videos": ["a.mp4", "b.mp4"]},
    {"conversations": [{"from": "human", "value": "<image>\nwhat is in the picture?"},
                       {"from": "gpt", "value": "green."}], "images": ["img.jpg"]},
    {"conversations": [{"from": "human", "value": "<video>\nwhich number is last?"},
                       {"from": "gpt", "value": "five."}], "videos": ["frames/clip.mp4"]},
    {"conversations": [{"from": "human", "value": "what is a video?"},
                       {"from": "gpt", "value": "moving pictures."}]},
    {"conversations": [{"from": "human", "value": "<video>\ndescribe the video at length."},
                       {"from": "gpt", "value": LONG_ANSWER}], "videos": ["b.mp4"]},
]
PAGES = [{"context": "The keeper climbed the stairs and wrote the weather into a book.",
          "question": "what does the keeper write?", "answer": "the weather."}]
KEPT = {f"mm-{i:08d}" for i in range(5)} | {"pages-00000000"}


@pytest.fixture(scope="module", autouse=True)
def one_thread():
    """The tiny models gain nothing from threads; two of them beside two DataLoader workers on two
    cores spin-wait (a step took 60x longer)."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.fixture(scope="module")
def data(tmp_path_factory):
    root = tmp_path_factory.mktemp("qa")
    encode_counter_video(root / "a.mp4", num_frames=12, fps="6", size=(160, 120))
    encode_counter_video(root / "b.mp4", num_frames=8, fps="4", size=(120, 160))
    Image.new("RGB", (100, 80), (10, 200, 30)).save(root / "img.jpg")
    make_frame_folder(root / "frames" / "clip", num_frames=6, fps="2.0", size=(160, 120))
    mm = write_jsonl(root / "mm.jsonl", RECORDS)
    pages = write_jsonl(root / "pages.jsonl", PAGES)
    tok = tiny_tokenizer(root / "tok", words_of(RECORDS + PAGES))
    return root, mm, pages, tok


def config(data, family, pack=None, **options):
    root, mm, pages, tok = data
    opts = {"min_pixels": 56 * 56, "max_pixels": SMALL, "video_min_pixels": 56 * 56, "video_max_pixels": SMALL,
            "second_per_grid": "hf" if family == "qwen2-vl" else "pai", **options}
    return {"sources": [{"name": "mm", "format": "sharegpt", "annotations": mm, "media_root": str(root)},
                        {"name": "pages", "format": "t2vid_raw", "annotations": pages,
                         "sampling": {"strategy": "none", "max_frames": None}}],
            "sampling": {"fps": 2, "max_frames": 4, "strategy": "uniform"},
            "filter": {"max_tokens": 300},
            "model": {"name": family, "tokenizer": tok, "token_count": "chat_template", "options": opts},
            "loader": {"shuffle": False, "mix_buffer": 0, "pack": pack}}


@pytest.fixture(scope="module")
def setup(data):
    from transformers import AutoTokenizer

    tok = AutoTokenizer.from_pretrained(data[3])
    out = {}
    for family in FAMILIES:
        model = tiny_model(family, tok)
        ds = StreamingDataset(config(data, family))
        out[family] = (ds, model, Qwen2VLCollator(make_processor(family, tok), ds.model, model.config))
    return tok, out


def token_losses(logits, labels):
    """Per-position loss of predicting labels[t + 1] from position t (the model's shift)."""
    lab = labels[1:]
    return F.cross_entropy(logits[:-1], lab.clamp(min=0), reduction="none"), lab != IGNORE_INDEX


def forward_backward(model, batch):
    model.zero_grad()
    out = model(**model_inputs(batch))
    out.loss.backward()
    assert torch.isfinite(out.loss), batch["keys"]
    grads = [p.grad for p in model.parameters() if p.grad is not None]
    assert grads and all(torch.isfinite(g).all() for g in grads)
    return out


@pytest.mark.parametrize("family", FAMILIES)
def test_padded_batches_train_the_real_model_in_two_workers(setup, family):
    from torchdata.stateful_dataloader import StatefulDataLoader

    tok, fam = setup
    ds, model, collate = fam[family]
    model.train()
    loader = StatefulDataLoader(ds, batch_size=3, num_workers=2, collate_fn=collate)
    keys, vision_grads, padded = [], 0, 0
    for batch in loader:
        assert batch["dropped"] == []
        assert batch["input_ids"].shape == batch["labels"].shape == batch["attention_mask"].shape
        assert batch["position_ids"].shape == (3, *batch["input_ids"].shape)
        assert (batch["labels"][batch["attention_mask"] == 0] == IGNORE_INDEX).all()  # padding is masked
        mask = batch["attention_mask"]
        assert torch.equal(mask, mask.cummin(dim=1).values)  # right padding: each row's ones come first
        assert (batch["input_ids"][mask == 0] == tok.pad_token_id).all()
        padded += int((mask == 0).any())
        forward_backward(model, batch)
        vision_grads += sum(int(p.grad.abs().sum() > 0) for p in model.model.visual.parameters() if p.grad is not None)
        if family == "qwen2.5-vl" and "video_grid_thw" in batch:
            assert len(batch["second_per_grid_ts"]) == len(batch["video_grid_thw"])
        keys += batch["keys"]
    assert sorted(keys) == sorted(KEPT)  # the long record was dropped by the length filter, the rest kept
    assert vision_grads > 0  # gradients reach the vision tower through the placeholder tokens
    assert padded  # some batch mixed lengths


@pytest.mark.parametrize("family", FAMILIES)
def test_each_sample_in_a_pack_has_its_loss_alone(setup, data, family):
    from torchdata.stateful_dataloader import StatefulDataLoader

    _, fam = setup
    _, model, collate = fam[family]
    ds = StreamingDataset(config(data, family, pack={"max_tokens": 600, "buffer": 8}))
    model.eval()
    packs = list(ds)
    assert all(isinstance(p, Pack) for p in packs) and sum(len(p.samples) for p in packs) == len(KEPT)
    multi = 0
    for pack in packs:
        batch = collate(pack)
        assert batch["input_ids"].shape == (1, pack.total) and "attention_mask" not in batch
        assert batch["position_ids"].shape == (4, 1, pack.total)
        with torch.no_grad():
            logits = model(**model_inputs(batch)).logits[0]
        losses, keep = token_losses(logits, batch["labels"][0])
        cu = batch["cu_seqlens"].tolist()
        assert cu == [*pack.offsets, pack.total]
        for i, sample in enumerate(pack.samples):
            alone = collate([sample])
            with torch.no_grad():
                la, ka = token_losses(model(**model_inputs(alone)).logits[0], alone["labels"][0])
            seg = slice(cu[i], cu[i + 1] - 1)
            assert keep[seg].sum() == ka.sum() > 0
            assert abs(losses[seg][keep[seg]].mean().item() - la[ka].mean().item()) < 1e-4, sample.key
            assert torch.equal(batch["position_ids"][1:, :, cu[i]:cu[i + 1]], alone["position_ids"])
        multi += len(pack.samples) > 1
    assert multi  # at least one pack held several samples
    model.train()
    loader = StatefulDataLoader(ds, batch_size=None, num_workers=2, collate_fn=collate)
    n = 0
    for batch in loader:  # packs made in the workers: forward and backward on every one
        forward_backward(model, batch)
        n += len(batch["keys"])
    assert n == len(KEPT)


@pytest.mark.parametrize("family", FAMILIES)
def test_padding_does_not_change_a_samples_loss(setup, family):
    _, fam = setup
    ds, model, collate = fam[family]
    model.eval()
    samples = list(ds)[:4]
    batch = collate(samples)
    assert len(set(batch["attention_mask"].sum(1).tolist())) > 1  # rows of different lengths
    with torch.no_grad():
        logits = model(**model_inputs(batch)).logits
        for i, sample in enumerate(samples):
            alone = collate([sample])
            la, ka = token_losses(model(**model_inputs(alone)).logits[0], alone["labels"][0])
            lp, kp = token_losses(logits[i], batch["labels"][i])
            assert kp.sum() == ka.sum() > 0
            assert abs(lp[kp].mean().item() - la[ka].mean().item()) < 1e-4, sample.key
    model.train()


@pytest.mark.parametrize("attn", ["eager", "sdpa"])
def test_packed_attention_is_block_diagonal_in_both_cpu_kernels(setup, data, attn):
    """The same pack under eager and sdpa attention: the second sample's logits equal its
    logits alone (a leak across the boundary would change them from the first token)."""
    tok, fam = setup
    _, _, collate = fam["qwen2-vl"]
    model = tiny_model("qwen2-vl", tok, attn_implementation=attn).eval()
    ds = StreamingDataset(config(data, "qwen2-vl", pack={"max_tokens": 600, "buffer": 8}))
    pack = next(p for p in ds if len(p.samples) > 1)
    batch = collate(pack)
    cu = batch["cu_seqlens"].tolist()
    with torch.no_grad():
        packed = model(**model_inputs(batch)).logits[0]
        alone = model(**model_inputs(collate([pack.samples[1]]))).logits[0]
        leaky = model(**dict(model_inputs(batch), use_cache=True)).logits[0]  # a KV cache turns packing off
    assert torch.allclose(packed[cu[1]:cu[2]], alone, atol=1e-5)
    assert not torch.allclose(leaky[cu[1]:cu[2]], alone, atol=1e-3)


def test_labels_are_the_answers_and_their_end_of_turn(setup):
    tok, fam = setup
    ds, _, collate = fam["qwen2-vl"]
    sample = next(s for s in ds if s.key == "mm-00000001")  # two turns
    batch = collate([sample])
    ids, labels = batch["input_ids"][0], batch["labels"][0]
    kept = ids[labels != IGNORE_INDEX].tolist()
    end = tok.convert_tokens_to_ids("<|im_end|>")
    answers = [tok.encode(a, add_special_tokens=False) + [end] for a in ("two counters.", "the second one.")]
    assert kept == answers[0] + answers[1]
    assert (labels[batch["mm_token_type_ids"][0] != 0] == IGNORE_INDEX).all()
    header, eot = answer_markers(lambda m, g: tok.apply_chat_template(m, tokenize=False, add_generation_prompt=g))
    assert (header, eot) == ("<|im_start|>assistant\n", "<|im_end|>\n")
    assert answer_spans("x" + header + "ab" + eot + header + "c" + eot, header, eot) == [
        (1 + len(header), 3 + len(header) + len(eot)), (3 + 2 * len(header) + len(eot), len(
            "x" + header + "ab" + eot + header + "c" + eot))]


def test_counts_and_resize_follow_the_mmstream_config(setup):
    tok, fam = setup
    ds, _, collate = fam["qwen2.5-vl"]
    for sample in ds:
        enc = collate.encoder(sample)
        assert len(enc["input_ids"]) == sample.tokens["total"]
        grids = [g.tolist() for k in ("image_grid_thw", "video_grid_thw") for g in enc.get(k, [])]
        mine = [list(ds.model.grid_thw(c.kind, c.num_frames, *c.size)) for c in sample.clips]
        assert sorted(grids) == sorted(mine)
        assert all(g[1] * g[2] * 14 * 14 <= SMALL for g in grids)  # resized with the config's max_pixels
        if "second_per_grid_ts" in enc:  # the processor's 2/fps; the record has Pai's 1/fps
            assert enc["second_per_grid_ts"].tolist() == pytest.approx(
                [2 * x for x in sample.model_record["second_per_grid_ts"]])


def test_a_sample_the_processor_disagrees_with_is_a_counted_drop(data, setup, tmp_path):
    """qwen-vl-utils' smart_resize lets a shrunk side reach 0 (a 2000x20 image: 0 tokens),
    transformers' keeps 28 (40 tokens): the counts differ, the sample is dropped with its
    reason and the rest of the batch trains."""
    tok, fam = setup
    root = data[0]
    Image.new("RGB", (2000, 20), (200, 10, 30)).save(root / "strip.jpg")
    ann = write_jsonl(tmp_path / "strip.jsonl", [
        RECORDS[2], {"conversations": [{"from": "human", "value": "<image>\nwhat is?"},
                                       {"from": "gpt", "value": "a strip."}], "images": ["strip.jpg"]}])
    cfg = config(data, "qwen2-vl", rules="qwen-vl-utils")
    cfg["sources"] = [{"name": "s", "format": "sharegpt", "annotations": ann, "media_root": str(root)}]
    ds = StreamingDataset(cfg)
    _, model, _ = fam["qwen2-vl"]
    collate = Qwen2VLCollator(make_processor("qwen2-vl", tok), ds.model, model.config)
    batch = collate(list(ds))
    assert batch["keys"] == ["s-00000000"]
    assert [d.key for d in batch["dropped"]] == ["s-00000001"]
    assert batch["dropped"][0].reason == COUNT_MISMATCH and collate.stats == {"kept": 1, COUNT_MISMATCH: 1}
    forward_backward(model, batch)
    alone = collate([s for s in ds if s.key == "s-00000001"])  # a batch of only dropped samples: empty
    assert alone["keys"] == [] and alone["input_ids"].numel() == 0 and len(alone["dropped"]) == 1
    strict = Qwen2VLCollator(make_processor("qwen2-vl", tok), ds.model, model.config, strict=True)
    with pytest.raises(Exception, match="s-00000001"):
        strict(list(ds))


def test_the_collator_pickles_casts_pixels_and_refuses_a_foreign_tokenizer(setup, data, tmp_path):
    import pickle

    from transformers import AutoTokenizer

    tok, fam = setup
    ds, model, collate = fam["qwen2.5-vl"]
    again = pickle.loads(pickle.dumps(collate))  # a spawned worker gets it pickled
    sample = next(iter(ds))
    assert torch.equal(again([sample])["position_ids"], collate([sample])["position_ids"])
    half = Qwen2VLCollator(make_processor("qwen2.5-vl", tok), ds.model, model.config, pixel_dtype=torch.bfloat16)
    video = next(s for s in ds if s.key == "mm-00000000")
    a, b = half([video])["pixel_values_videos"], collate([video])["pixel_values_videos"]
    assert a.dtype == torch.bfloat16 and b.dtype == torch.float32 and torch.equal(a, b.to(torch.bfloat16))
    other = AutoTokenizer.from_pretrained(tiny_tokenizer(tmp_path / "other", ["a different vocabulary"]))
    with pytest.raises(ValueError, match="not the stream's"):
        Qwen2VLCollator(make_processor("qwen2.5-vl", other), ds.model, model.config)


def test_the_template_is_chatml(data):
    from transformers import AutoTokenizer

    tok = AutoTokenizer.from_pretrained(data[3])
    assert tok.chat_template == CHATML_TEMPLATE
    text = tok.apply_chat_template([{"role": "user", "content": [{"type": "video"}, {"type": "text", "text": "q"}]},
                                    {"role": "assistant", "content": "a"}], tokenize=False)
    assert text == ("<|im_start|>system\nYou are a helpful assistant.<|im_end|>\n<|im_start|>user\n"
                    "<|vision_start|><|video_pad|><|vision_end|>q<|im_end|>\n<|im_start|>assistant\na<|im_end|>\n")


@pytest.mark.parametrize("family", FAMILIES)
def test_frames_decoded_at_the_models_size_count_the_same_and_train(setup, data, family):
    """sampling.resize.to_model: every frame comes out of the decoder at the size the
    processor would resize it to (smart_resize), so the processor keeps it as it is; the
    counts are those of full-size frames, and the model takes the batch."""
    tok, fam = setup
    _, model, _ = fam[family]
    full = {s.key: s for s in StreamingDataset(config(data, family))}
    cfg = config(data, family)
    cfg["sampling"]["resize"] = {"to_model": True}
    ds = StreamingDataset(cfg)
    small = {s.key: s for s in ds}
    assert set(small) == set(full) == KEPT
    resized = 0
    for key, s in small.items():
        assert s.tokens == full[key].tokens, key
        for clip, big in zip(s.clips, full[key].clips):
            if clip.path is None:  # text pages: rendered at the configured page size
                assert clip.size == big.size
                continue
            h, w = ds.model.resized(clip.kind, clip.num_frames, *big.size)
            assert clip.size == (w, h), (key, clip.kind)
            assert clip.size[0] % 28 == 0 and clip.size[1] % 28 == 0
            resized += clip.size != big.size
    assert resized  # the fixture's frames are not at the model's size to begin with
    collate = Qwen2VLCollator(make_processor(family, tok), ds.model, model.config)
    batch = collate(list(small.values()))
    assert batch["dropped"] == [] and sorted(batch["keys"]) == sorted(KEPT)
    forward_backward(model, batch)
