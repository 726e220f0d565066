"""Bad input as a new user meets it: broken JSON elements lose no other record, every config
error is one ConfigError before any worker starts, and honest reasons for odd paths."""
import dataclasses
import json
import os
import subprocess
import sys
import threading

import pytest

from conftest import text_records, write_jsonl
from mmstream import StreamingDataset
from mmstream.cli import main as cli_main
from mmstream.config import Config, SourceConfig, load_config
from mmstream.errors import ConfigError
from mmstream.synth import encode_counter_video, make_frame_folder
from mmstream.types import Drop, Sample

GOOD = [json.dumps(r) for r in text_records(6)]


# -- a JSON array with broken elements ------------------------------------------------------

@pytest.mark.parametrize("where", ["start", "middle", "end", "twice"])
def test_json_array_with_bad_elements_keeps_every_good_record(tmp_path, where):
    bad = '{"id": "x", "conversations": [{"from": "human", "value": "cut here}'
    bad2 = '{"id": "y", "conversations": ,}'
    elements = {"start": [bad] + GOOD, "middle": GOOD[:3] + [bad] + GOOD[3:], "end": GOOD + [bad2],
                "twice": GOOD[:2] + [bad, bad2] + GOOD[2:4] + [bad] + GOOD[4:]}[where]
    path = tmp_path / "a.json"
    path.write_text("[\n" + ",\n".join(elements) + "\n]\n")
    items = list(StreamingDataset({"sources": [{"name": "s", "format": "llava", "annotations": str(path)}],
                                   "loader": {"shuffle": False}}, emit_drops=True))
    kept = [i for i in items if isinstance(i, Sample)]
    dropped = [i for i in items if isinstance(i, Drop)]
    assert sorted(s.record.id for s in kept) == sorted(f"q{i}" for i in range(6))
    assert len(kept) + len(dropped) == len(elements)
    assert {d.reason for d in dropped} == {"bad_json"}
    assert all("byte" in d.message for d in dropped)


def test_array_unreadable_to_its_end_counts_each_lost_element(tmp_path):
    path = tmp_path / "cut.json"
    text = "[" + ",".join(GOOD) + "]"
    cut = text.index(GOOD[4]) + 10  # inside the fifth element: it and the sixth are lost
    path.write_text(text[:cut])
    items = list(StreamingDataset({"sources": [{"name": "s", "format": "llava", "annotations": str(path)}]},
                                  emit_drops=True))
    assert sum(isinstance(i, Sample) for i in items) == 4
    lost = [i for i in items if isinstance(i, Drop)]
    assert [d.reason for d in lost] == ["unreadable_tail"]  # the file ends inside it: one position
    assert f"byte {text.index(GOOD[4])}" in lost[0].message


def test_inspect_summary_states_records_read_per_source(tmp_path, capsys):
    a = write_jsonl(tmp_path / "a.jsonl", text_records(3))
    b = tmp_path / "b.json"
    b.write_text("[" + ",".join(GOOD[:2] + ["{bad}"] + GOOD[2:4]) + "]")
    cfg = tmp_path / "c.yaml"
    cfg.write_text(json.dumps({"sources": [{"name": "a", "annotations": str(a)},
                                           {"name": "b", "annotations": str(b)}]}))
    assert cli_main(["inspect", str(cfg), "--jsonl"]) == 0
    summary = json.loads(capsys.readouterr().out.strip().splitlines()[-1])["summary"]
    assert summary["read"] == {"a": 3, "b": 5}
    assert summary["kept"] + sum(summary["dropped"].values()) == 8


# -- every config knob with a wrong type and a wrong range ------------------------------------

def _sweep_cases():
    """(key path, a config dict with that key wrong) for every knob: one of a wrong type,
    and one out of range where the knob has a range or choices."""
    from mmstream import config as C

    cases = []

    def walk(cls, path, setter_root):
        for f in dataclasses.fields(cls):
            if f.name in ("sources", "base_dir", "name", "annotations"):
                continue
            sub = f.default_factory() if f.default_factory is not dataclasses.MISSING else None
            if dataclasses.is_dataclass(sub):
                walk(type(sub), path + [f.name], setter_root)
                continue
            m = f.metadata
            hints = __import__("typing").get_type_hints(cls)
            tp = hints[f.name]
            text = str(tp)
            if "list" in text or "dict" in text:
                wrong_type = 3.5
            elif tp is bool:
                wrong_type = "yes"
            elif "str" in text:
                wrong_type = 7
            else:
                wrong_type = "fast"
            cases.append((".".join(path + [f.name]), setter_root(path + [f.name], wrong_type), "type"))
            bad_range = None
            if "choices" in m:
                bad_range = "no-such-choice"
            elif "min" in m:
                bad_range = m["min"] - 1
            elif "gt" in m:
                bad_range = m["gt"]
            elif "max" in m:
                bad_range = m["max"] + 1
            elif "check" in m:
                bad_range = "no-such-decoder"
            if bad_range is not None:
                cases.append((".".join(path + [f.name]), setter_root(path + [f.name], bad_range), "range"))

    def top(keys, value):
        d = {}
        cur = d
        for k in keys[:-1]:
            cur = cur.setdefault(k, {})
        cur[keys[-1]] = value
        return d

    for section, cls in (("sampling", C.SamplingConfig), ("filter", C.FilterConfig), ("loader", C.LoaderConfig),
                         ("output", C.OutputConfig), ("model", C.ModelConfig)):
        walk(cls, [section], top)
    walk(C.SourceConfig, ["sources[0]"], lambda keys, v: {"source": top(keys[1:], v)})
    cases.append(("strict", {"strict": "yes"}, "type"))
    return cases


CASES = _sweep_cases()


def _config(tmp_path, case):
    ann = write_jsonl(tmp_path / "a.jsonl", text_records(4))
    cfg = {"sources": [{"name": "s", "format": "llava", "annotations": ann}]}
    for k, v in case.items():
        if k == "source":
            cfg["sources"][0].update(v)
        elif isinstance(v, dict) and isinstance(cfg.get(k), dict):
            cfg[k].update(v)
        else:
            cfg[k] = v
    return cfg


def test_the_sweep_covers_every_knob():
    keys = {k for k, _, _ in CASES}
    for must in ("sampling.fps", "sampling.resize.short_side", "sampling.pages.font_size", "filter.max_frames",
                 "loader.mix_buffer", "output.jpeg_quality", "sources[0].limit", "sources[0].format",
                 "sampling.decoder", "model.token_count"):
        assert must in keys
    assert len(CASES) > 50


@pytest.mark.parametrize("key,case,kind", CASES, ids=[f"{k}-{t}" for k, _, t in CASES])
def test_every_config_error_is_raised_at_construction_naming_its_key(tmp_path, key, case, kind):
    cfg = _config(tmp_path, case)
    with pytest.raises(ConfigError) as err:
        StreamingDataset(cfg)
    shown = key.replace("sources[0].", "sources[0].") if key.startswith("sources") else key
    assert shown.split(".")[-1] in str(err.value) and (shown.split(".")[0] in str(err.value)
                                                        or key.startswith("model")), str(err.value)


@pytest.mark.parametrize("workers", ["0", "2"])
@pytest.mark.parametrize("key,case,kind", CASES[::7], ids=[f"{k}-{t}" for k, _, t in CASES[::7]])
def test_the_cli_prints_one_line_whatever_the_worker_count(tmp_path, capsys, workers, key, case, kind):
    path = tmp_path / "c.yaml"
    path.write_text(json.dumps(_config(tmp_path, case)))
    assert cli_main(["inspect", str(path), "--workers", workers]) == 1
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("mmstream inspect: error: ") and "Traceback" not in err[0]


def test_no_traceback_from_a_worker_for_a_missing_annotation_file(tmp_path):
    path = tmp_path / "c.yaml"
    path.write_text(json.dumps({"sources": [{"name": "s", "annotations": "nope.json"}], "filter": {"max_frames": 0}}))
    for sub in (["inspect", str(path), "--workers", "2"], ["cache", str(path), "-o", str(tmp_path / "o"),
                                                          "--workers", "2"]):
        res = subprocess.run([sys.executable, "-m", "mmstream.cli", *sub], capture_output=True, text=True, timeout=120)
        assert res.returncode == 1 and "Traceback" not in res.stderr, res.stderr
        assert len(res.stderr.strip().splitlines()) == 1
    path.write_text(json.dumps({"sources": [{"name": "s", "annotations": "nope.json"}]}))
    with pytest.raises(ConfigError, match="nope.json"):
        StreamingDataset(str(path))


def test_a_custom_decoder_that_does_not_import_fails_at_construction(tmp_path):
    cfg = _config(tmp_path, {"sampling": {"decoder": "no_such_module:Backend"}})
    with pytest.raises(ConfigError, match="no_such_module"):
        StreamingDataset(cfg)


def test_configs_built_in_code_are_checked_too(tmp_path):
    ann = write_jsonl(tmp_path / "a.jsonl", text_records(2))
    cfg = load_config({"sources": [{"name": "s", "annotations": ann}]})
    assert isinstance(cfg, Config) and isinstance(cfg.sources[0], SourceConfig)
    with pytest.raises(ConfigError, match="sampling.fps"):
        load_config({"sources": [{"name": "s", "annotations": ann}], "sampling": {"fps": "fast"}})


# -- honest reasons for paths that are not files -------------------------------------------------

def _run_with_timeout(fn, seconds=30):
    out = {}
    t = threading.Thread(target=lambda: out.setdefault("v", fn()), daemon=True)
    t.start()
    t.join(seconds)
    assert not t.is_alive(), "the stream blocked on a FIFO"
    return out["v"]


def test_fifos_are_not_a_file_and_never_block(tmp_path):
    media = tmp_path / "m"
    media.mkdir()
    encode_counter_video(media / "good.mp4", num_frames=10, fps="5", size=(64, 48))
    os.mkfifo(media / "fifo.mp4")
    os.mkfifo(media / "fifo.jpg")
    make_frame_folder(media / "frames", num_frames=4, size=(64, 48))
    os.mkfifo(media / "frames" / "00003b.jpg")  # a FIFO among the frames
    os.mkfifo(media / "frames2.json")  # a FIFO where a frame folder's fps sidecar goes
    make_frame_folder(media / "frames2", num_frames=3, size=(64, 48))
    recs = [{"id": "good", "video": "good.mp4"}, {"id": "fifo_video", "video": "fifo.mp4"},
            {"id": "fifo_image", "image": "fifo.jpg"}, {"id": "fifo_frame", "video": "frames"},
            {"id": "fifo_sidecar", "video": "frames2"}, {"id": "gone", "video": "gone.mp4"}]
    for r in recs:
        tag = "<image>" if "image" in r else "<video>"
        r["conversations"] = [{"from": "human", "value": tag + "\nQ?"}, {"from": "gpt", "value": "A"}]
    ann = write_jsonl(tmp_path / "a.jsonl", recs)
    cfg = {"sources": [{"name": "s", "format": "llava", "annotations": ann, "media_root": str(media)}],
           "sampling": {"fps": 2, "max_frames": 4}, "loader": {"shuffle": False}}
    items = _run_with_timeout(lambda: list(StreamingDataset(cfg, emit_drops=True)))
    got = {(i.record.id if isinstance(i, Sample) else i.key): (i.reason if isinstance(i, Drop) else "kept")
           for i in items}
    assert got == {"good": "kept", "s-00000001": "not_a_file", "s-00000002": "not_a_file",
                   "s-00000003": "not_a_file", "fifo_sidecar": "kept", "s-00000005": "missing_media"}
