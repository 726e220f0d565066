"""Packed Qwen2-VL / Qwen2.5-VL samples: each sample's position ids equal transformers'
get_rope_index on that sample alone, and the boundaries split the pack exactly."""
import numpy as np
import pytest
import torch

from conftest import write_jsonl
from mmstream import StreamingDataset
from mmstream.pack import Pack
from mmstream.synth import encode_counter_video
from tiny_tok import STRING_TEMPLATE, STRING_TEMPLATE_TOKENS, make_tokenizer
from training_adapters.qwen2vl import Qwen2VLPackCollator

QWEN_SPECIALS = ["<|vision_start|>", "<|vision_end|>", "<|image_pad|>", "<|video_pad|>"] + STRING_TEMPLATE_TOKENS


def real_rope_model(family, vocab, tokens_per_second):
    text = dict(hidden_size=16, num_hidden_layers=1, num_attention_heads=2, num_key_value_heads=1,
                intermediate_size=32, vocab_size=vocab, rope_scaling={"type": "mrope", "mrope_section": [2, 1, 1]})
    if family == "qwen2-vl":
        from transformers import Qwen2VLConfig
        from transformers.models.qwen2_vl.modeling_qwen2_vl import Qwen2VLModel

        return Qwen2VLModel(Qwen2VLConfig(text_config=text, vision_config=dict(depth=1, embed_dim=16, hidden_size=16,
                                                                                num_heads=2, mlp_ratio=1)))
    from transformers import Qwen2_5_VLConfig
    from transformers.models.qwen2_5_vl.modeling_qwen2_5_vl import Qwen2_5_VLModel

    return Qwen2_5_VLModel(Qwen2_5_VLConfig(text_config=text, vision_config=dict(
        depth=1, hidden_size=16, num_heads=2, intermediate_size=16, out_hidden_size=16,
        tokens_per_second=tokens_per_second)))


@pytest.fixture(scope="module")
def setup(tmp_path_factory):
    root = tmp_path_factory.mktemp("qc")
    encode_counter_video(root / "a.mp4", num_frames=20, fps="10", size=(320, 240))
    encode_counter_video(root / "b.mp4", num_frames=12, fps="6", size=(240, 320))
    from PIL import Image

    Image.new("RGB", (200, 150), (10, 200, 30)).save(root / "img.jpg")
    recs = [
        {"conversations": [{"from": "human", "value": "<video>\nwhat is the video"}, {"from": "gpt", "value": "a"}],
         "videos": ["a.mp4"]},
        {"conversations": [{"from": "human", "value": "<image> and <video> what is"}, {"from": "gpt", "value": "a"}],
         "images": ["img.jpg"], "videos": ["b.mp4"]},
        {"conversations": [{"from": "human", "value": "what is the"}, {"from": "gpt", "value": "video"}]},
        {"conversations": [{"from": "human", "value": "<video>\nthe video"}, {"from": "gpt", "value": "a"},
                           {"from": "human", "value": "<video> what"}, {"from": "gpt", "value": "is"}],
         "videos": ["b.mp4", "a.mp4"]},
    ]
    ann = write_jsonl(root / "s.jsonl", recs)
    tok = make_tokenizer(root / "tok", QWEN_SPECIALS, chat_template=STRING_TEMPLATE)
    return root, ann, tok


@pytest.mark.parametrize("family", ["qwen2-vl", "qwen2.5-vl"])
def test_packed_position_ids_equal_each_sample_alone(setup, family):
    from transformers import AutoTokenizer

    root, ann, tok_dir = setup
    cfg = {"sources": [{"name": "s", "format": "sharegpt", "annotations": ann}],
           "sampling": {"fps": 2, "max_frames": 8},
           "model": {"name": family, "tokenizer": tok_dir, "token_count": "chat_template",
                     "options": {"video_min_pixels": 56 * 56, "second_per_grid": "hf"}},
           "loader": {"shuffle": False, "pack": {"max_tokens": 100000, "buffer": 8}}}
    ds = StreamingDataset(cfg)
    packs = list(ds)
    assert len(packs) == 1 and isinstance(packs[0], Pack) and len(packs[0].samples) == 4
    tokenizer = AutoTokenizer.from_pretrained(tok_dir)
    collate = Qwen2VLPackCollator(tokenizer, ds.model)
    batch = collate(packs[0])
    rope = real_rope_model(family, len(tokenizer), 2)
    ids, pos, cu = batch["input_ids"][0], batch["position_ids"][:, 0], batch["cu_seqlens"]
    assert cu[-1] == len(ids) == packs[0].total  # the pack's exact token count is what the collator makes
    images = iter(batch["image_grid_thw"].tolist())
    videos = iter(batch["video_grid_thw"].tolist())
    for i, sample in enumerate(packs[0].samples):
        seg = ids[cu[i]:cu[i + 1]]
        assert len(seg) == sample.tokens["total"]
        types = [1 if t == collate.image_pad else 2 if t == collate.video_pad else 0 for t in seg]
        n_img, n_vid = sum(c.kind == "image" for c in sample.clips), sum(c.kind != "image" for c in sample.clips)
        img = torch.tensor([next(images) for _ in range(n_img)]) if n_img else None
        vid = torch.tensor([next(videos) for _ in range(n_vid)]) if n_vid else None
        kwargs = {}
        if family == "qwen2.5-vl" and n_vid:
            kwargs["second_per_grid_ts"] = torch.tensor(sample.model_record["second_per_grid_ts"])
        if n_img or n_vid:
            expected, _ = rope.get_rope_index(torch.tensor([seg.tolist()]), torch.tensor([types]), img, vid, **kwargs)
            expected = expected[:, 0].numpy()
        else:  # pure text: the model's own 1-D positions on all three axes
            expected = np.broadcast_to(np.arange(len(seg)), (3, len(seg)))
        assert np.array_equal(pos[:, cu[i]:cu[i + 1]], expected), f"sample {i}"
    assert pos[0, cu[1]] == 0 and pos[0, cu[2]] == 0  # each sample starts again
