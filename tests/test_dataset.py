"""Exactly-once delivery, deterministic shuffling and mid-epoch resume."""
import pytest
from torch.utils.data import DataLoader
from torchdata.stateful_dataloader import StatefulDataLoader

from mmstream import StreamingDataset
from mmstream.cli.common import identity
from mmstream.errors import ConfigError

ALL_KEYS = {f"a-{i:08d}" for i in range(13)} | {f"b-{i:08d}" for i in range(8)}


def keys_of(ds, workers):
    loader = DataLoader(ds, batch_size=None, num_workers=workers, collate_fn=identity)
    return [s.key for s in loader]


@pytest.mark.parametrize("world", [1, 2, 3])
@pytest.mark.parametrize("workers", [0, 1, 2, 4])
def test_every_record_exactly_once(text_config, world, workers):
    got = []
    for rank in range(world):
        got += keys_of(StreamingDataset(text_config, rank=rank, world_size=world), workers)
    assert len(got) == len(ALL_KEYS), "duplicates or gaps"
    assert set(got) == ALL_KEYS


def test_more_workers_than_records(tmp_path):
    from conftest import text_records, write_jsonl

    ann = write_jsonl(tmp_path / "x.jsonl", text_records(3))
    cfg = {"sources": [{"name": "x", "format": "llava", "annotations": ann}]}
    got = []
    for rank in range(2):
        got += keys_of(StreamingDataset(cfg, rank=rank, world_size=2), 4)  # 8 workers, 3 records
    assert sorted(got) == [f"x-{i:08d}" for i in range(3)]


def test_shuffle_is_deterministic_per_epoch(text_config):
    ds = StreamingDataset(text_config)
    e0 = [s.key for s in ds]
    assert [s.key for s in StreamingDataset(text_config)] == e0
    ds.set_epoch(1)
    e1 = [s.key for s in ds]
    assert set(e1) == set(e0) and e1 != e0
    unshuffled = sorted(ALL_KEYS)
    assert e0 != unshuffled
    # the global order does not depend on how the work is split
    split = [None] * 21
    for rank in range(3):
        for s in StreamingDataset(text_config, rank=rank, world_size=3):
            split[s.record.index] = s.key
    assert sorted(e0) == sorted(split)


@pytest.mark.parametrize("workers", [0, 2])
def test_stateful_resume_mid_epoch_gives_exactly_the_rest(text_config, workers):
    ds = StreamingDataset(text_config)
    loader = StatefulDataLoader(ds, batch_size=None, num_workers=workers, collate_fn=identity)
    first = []
    it = iter(loader)
    for _ in range(8):
        first.append(next(it).key)
    state = loader.state_dict()
    del it, loader

    ds2 = StreamingDataset(text_config)
    loader2 = StatefulDataLoader(ds2, batch_size=None, num_workers=workers, collate_fn=identity)
    loader2.load_state_dict(state)
    rest = [s.key for s in loader2]
    assert len(first) + len(rest) == len(ALL_KEYS)
    assert set(first) | set(rest) == ALL_KEYS


def test_resume_respects_epoch(text_config):
    ds = StreamingDataset(text_config)
    ds.set_epoch(5)
    it = iter(ds)
    head = [next(it).key for _ in range(4)]
    state = ds.state_dict()
    assert state["epoch"] == 5 and state["groups_done"] >= 4
    ds2 = StreamingDataset(text_config)
    ds2.load_state_dict(state)
    tail = [s.key for s in ds2]
    full = StreamingDataset(text_config)
    full.set_epoch(5)
    assert head + tail == [s.key for s in full]


def test_rank_and_world_validation(text_config):
    with pytest.raises(ConfigError):
        StreamingDataset(text_config, rank=2, world_size=2)
    with pytest.raises(ValueError):
        StreamingDataset(text_config, rank=0)
    with pytest.raises(ConfigError):
        StreamingDataset({"sources": [{"name": "a.b", "annotations": "x.json"}]})


def test_an_old_shuffle_buffer_key_says_what_replaced_it(text_config):
    with pytest.raises(ConfigError, match="mix_buffer"):
        StreamingDataset(dict(text_config, loader={"shuffle_buffer": 100}))


@pytest.mark.parametrize("context", ["fork", "spawn"])
def test_set_epoch_reaches_persistent_workers(text_config, context):
    """Persistent workers keep their copy of the dataset between epochs: set_epoch in the
    training process must still pick each epoch's order there."""
    def epochs(persistent):
        ds = StreamingDataset(text_config)
        loader = StatefulDataLoader(ds, batch_size=None, num_workers=2, collate_fn=identity,
                                    persistent_workers=persistent, multiprocessing_context=context)
        out = []
        for epoch in range(3):
            ds.set_epoch(epoch)
            out.append([s.key for s in loader])
        return out

    fresh, kept = epochs(False), epochs(True)
    assert kept == fresh
    assert all(set(e) == ALL_KEYS and len(e) == len(ALL_KEYS) for e in kept)
    assert kept[0] != kept[1] != kept[2]


def test_a_pickled_copy_carries_the_epoch_as_a_number(text_config):
    import pickle

    ds = StreamingDataset(text_config)
    ds.set_epoch(4)
    copy = pickle.loads(pickle.dumps(ds))  # outside a DataLoader's start: no shared memory
    assert copy.epoch == 4 and copy._shared_epoch is None
    ds.set_epoch(5)  # the copy is on its own now
    ref = StreamingDataset(text_config)
    ref.set_epoch(4)
    assert copy.epoch == 4 and [s.key for s in copy] == [s.key for s in ref]
