"""Packing: samples into sequences of at most max_tokens, from exact token counts; no sample
lost or doubled over an epoch, resumable exactly, no pack over its limit."""
import pytest
from torch.utils.data import DataLoader
from torchdata.stateful_dataloader import StatefulDataLoader

from conftest import write_jsonl
from mmstream import StreamingDataset
from mmstream.cli.common import identity
from mmstream.errors import ConfigError
from mmstream.pack import Pack, first_fit
from mmstream.synth import encode_counter_video
from mmstream.types import Drop
from tiny_tok import make_tokenizer

MAX = 600


def test_first_fit_decreasing_by_hand():
    assert first_fit([700, 300, 512, 90], 1024) == [[0, 1], [2, 3]]
    assert first_fit([5, 5, 5], 10) == [[0, 1], [2]]
    assert first_fit([20, 3], 10) == [[0], [1]]  # too long: alone
    packs = first_fit([9, 8, 7, 6, 5, 4, 3, 2, 1], 12)
    assert sorted(i for p in packs for i in p) == list(range(9))
    assert all(sum([9, 8, 7, 6, 5, 4, 3, 2, 1][i] for i in p) <= 12 for p in packs)


@pytest.fixture(scope="module")
def data(tmp_path_factory):
    root = tmp_path_factory.mktemp("pack")
    for v in range(4):
        encode_counter_video(root / f"v{v}.mp4", num_frames=12, fps="6", size=(64, 48))
    recs = []
    for i in range(30):
        words = " ".join(["what is the video"] * (1 + (i * 7) % 23))
        recs.append({"id": f"r{i}", "video": f"v{i % 4}.mp4",
                     "conversations": [{"from": "human", "value": "<video>\n" + words}, {"from": "gpt", "value": "a"}]})
    recs.append({"id": "huge", "video": "v0.mp4", "conversations": [
        {"from": "human", "value": "<video>\n" + "what " * 2000}, {"from": "gpt", "value": "a"}]})
    ann = write_jsonl(root / "a.jsonl", recs)
    tok = make_tokenizer(root / "tok")
    return {"sources": [{"name": "s", "format": "llava", "annotations": ann}],
            "sampling": {"fps": 2, "max_frames": 2}, "model": {"name": "minicpmv-2.5", "tokenizer": tok},
            "loader": {"pack": {"max_tokens": MAX, "buffer": 7}, "mix_buffer": 4}}


def keys_of(items):
    return [k for it in items if isinstance(it, Pack) for k in it.keys]


@pytest.mark.parametrize("workers", [0, 2])
def test_every_sample_once_in_packs_within_the_limit(data, workers):
    items = list(DataLoader(StreamingDataset(data, emit_drops=True), batch_size=None, num_workers=workers,
                            collate_fn=identity))
    packs = [i for i in items if isinstance(i, Pack)]
    keys = keys_of(items)
    assert len(keys) == len(set(keys)) == 30
    assert [d.reason for d in items if isinstance(d, Drop)] == ["too_many_tokens"]  # longer than a pack
    for p in packs:
        assert p.total == sum(s.tokens["total"] for s in p.samples) <= MAX
        assert p.offsets == [sum(p.lengths[:i]) for i in range(len(p.lengths))]
    assert len(packs) < 30  # they do pack


@pytest.mark.parametrize("workers", [0, 2])
def test_resume_mid_epoch_packs_exactly_the_rest(data, workers):
    def loader():
        return StatefulDataLoader(StreamingDataset(data), batch_size=None, num_workers=workers, collate_fn=identity)

    whole = [tuple(p.keys) for p in loader()]
    first_loader = loader()
    it = iter(first_loader)
    head = [tuple(next(it).keys) for _ in range(len(whole) // 2)]
    state = first_loader.state_dict()
    del it, first_loader
    resumed = loader()
    resumed.load_state_dict(state)
    tail = [tuple(p.keys) for p in resumed]
    assert head + tail == whole  # the same packs in the same order


def test_packing_needs_token_counts(data):
    cfg = dict(data, model={"name": "minicpmv-2.5"})
    with pytest.raises(ConfigError, match="loader.pack"):
        StreamingDataset(cfg)


def test_energon_packs_cached_shards_from_their_token_counts(tmp_path, data):
    from megatron.energon import WorkerConfig, get_loader, get_train_dataset
    from megatron.energon.errors import reraise_exception

    from mmstream.sinks import run_cache
    from training_adapters.megatron import ChatMLPack, ChatMLPackingTaskEncoder, ChatMLRawSample

    cfg = dict(data, model=dict(data["model"], name="qwen2-vl"), output={"format": "megatron", "maxcount": 8},
               loader={"shuffle": False}, filter={"max_tokens": MAX})
    out = tmp_path / "meg"
    s = run_cache(cfg, str(out), workers=0, progress=False)
    assert s["kept"] == 30 and s["finalized"]

    chosen_from = []

    class Recording(ChatMLPackingTaskEncoder):
        def select_samples_to_pack(self, samples):
            chosen_from.append([type(x) for x in samples])
            return super().select_samples_to_pack(samples)

    wc = WorkerConfig(rank=0, world_size=1, num_workers=0, global_error_handler=reraise_exception)
    ds = get_train_dataset(str(out), worker_config=wc, batch_size=None, shuffle_buffer_size=None,
                           max_samples_per_sequence=None, packing_buffer_size=10,
                           task_encoder=Recording(max_tokens=MAX), repeat=False)
    packs = list(get_loader(ds))
    assert all(isinstance(p, ChatMLPack) for p in packs)
    keys = [x.__key__ for p in packs for x in p.samples]
    assert len(keys) == len(set(keys)) == 30
    assert all(p.total == sum(p.lengths) <= MAX for p in packs) and len(packs) < 30
    assert chosen_from and all(t is ChatMLRawSample for ts in chosen_from for t in ts)  # chosen before decoding
    assert all(x.videos[0].shape[0] % 2 == 0 for p in packs for x in p.samples)  # decoded afterwards
