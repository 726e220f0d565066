"""The decode limit: the least decoding that exact sampling needs, timed, beside mmstream.

    python benchmarks/decode_limit.py build/bench --json              # every clip with the "limit" role
    python benchmarks/decode_limit.py build/bench --clips real_bbb_720p_32s.mp4 --workloads t2vid,qa

For each clip and workload it asks mmstream for the frames it plans (its own plan: dense
1 fps, T2Vid's 24 frames, QA data with k = 1..8 records per video, whose frames are T2Vid's),
then works out from the packet index and the bitstream which frames a decoder cannot skip
to produce exactly those frames (:func:`needed_packets`):

* a decoder starts at a key frame: each target needs the key frame before it (the last
  whose time is at or before the target's, as mmstream seeks) and every **reference**
  frame decoded between that key frame and the target (any of them may be referenced:
  decoders keep a sliding window of references; the bitstream does not say more
  without parsing every slice's reference lists);
* a **non-reference** frame that is not a target is skipped, and so is everything after
  a group's last target until the next key frame a later target starts from;
* the reference leading pictures of an open GOP's key frame (decoded after it, shown
  before it) are fed too when decoding starts there: nothing shown after the key frame
  references them, and FFmpeg's HEVC decoder drops them unread after a reset, but left
  out entirely, it loses the key frame (tests show the trailing pictures failing).

Reference-ness comes from the bitstream (:func:`reference_flags`): H.264 ``nal_ref_idc``
of the VCL NAL units; HEVC sub-layer non-reference NAL unit types (TRAIL_N, TSA_N,
STSA_N, RADL_N, RASL_N, RSV_VCL_N10/12/14) at the stream's highest TemporalId (below it,
pictures of higher sub-layers may still reference them). VP9: every frame counts as a
reference: besides the reference buffers a frame refreshes, each frame adapts the
probability contexts the next frames start from and hands its motion vectors on to the
next frame (``use_prev_frame_mvs``), so leaving any frame out changes the frames after
it; only the frames after a group's last target are skipped. Other codecs: every frame
a reference.

It then times decoding exactly those packets (read into memory first, so no demuxing is
timed) with the same decoder (PyAV's libavcodec), the same thread count and no
conversion of the output; a jump between groups drains and flushes the decoder, as a
seek would. That is the limit. mmstream is timed beside it on the same clip, in the same
process, interleaved (limit, mmstream, limit, ...): a StreamingDataset's iteration
(``Stream``) over k records of the clip, in this process (``decode_timeout: none``: no helper
process), from the first record read to the last sample, so probe, decode, RGB
conversion and mixing all count. Both report wall and CPU seconds (user + system of this
process, decoder threads included); with neighbours on the machine the CPU ratio is the
steadier one. Figures are medians of ``--repeat`` runs with their spread, and the other
processes' CPU share while the clip ran.

``--instructions`` counts instead of timing (valgrind's callgrind, ~60x slower: name the
rows): the instructions of one warm run of each side, each in a process of its own that
switches counting on (``callgrind_control``) after its warm-up and off after the run. On this
shared machine the CPU seconds of identical runs move by 10% and more, so a row at 1.16x
may be at 1.05x tomorrow; the count does not move. It leaves out the kernel's work (page faults)
and the time memory accesses wait, which is where the rest of the time ratio goes.

    python benchmarks/decode_limit.py build/bench --instructions --clips real_bbb_720p_32s.mp4 --workloads qa --ks 1
"""
from __future__ import annotations

import argparse
import json
import os
import resource
import statistics
import sys
import tempfile
import time
from dataclasses import dataclass
from typing import Callable, Iterable, Optional, Sequence

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
if ROOT not in sys.path:
    sys.path.insert(0, ROOT)

import av  # noqa: E402

#: Workloads: name -> (fps, max_frames, strategy, records per video). "qa" expands to k = --ks.
WORKLOADS = {
    "dense": (1.0, None, "none", 1),  # exact 1 fps, every slot
    "t2vid": (1.0, 24, "t2vid", 1),  # T2Vid: 1 fps capped at 24 frames
    "qa": (1.0, 24, "t2vid", None),  # QA data: T2Vid's frames, k records per video
}
QA_KS = (1, 2, 4, 8)

#: HEVC sub-layer non-reference VCL NAL unit types (TRAIL_N ... RSV_VCL_N14).
HEVC_SLNR = frozenset({0, 2, 4, 6, 8, 10, 12, 14})


@dataclass
class Packet:
    """One packet of the video stream, in decode order."""

    pts: int
    key: bool
    ref: bool  # may another frame reference it (see :func:`reference_flags`)
    size: int = 0


# -- reference-ness from the bitstream -------------------------------------------------
def _length_size(codec: str, extradata: Optional[bytes]) -> int:
    """NAL length-prefix size from avcC / hvcC extradata; 0 for Annex B (start codes)."""
    if not extradata or extradata[0] != 1:
        return 0
    if codec == "h264" and len(extradata) > 4:
        return (extradata[4] & 3) + 1
    if codec == "hevc" and len(extradata) > 22:
        return (extradata[21] & 3) + 1
    return 0


def nal_units(data: bytes, length_size: int) -> Iterable[memoryview]:
    """The NAL units of one packet (length-prefixed, or Annex B when ``length_size`` is 0)."""
    view = memoryview(data)
    if length_size:
        pos = 0
        while pos + length_size <= len(view):
            n = int.from_bytes(view[pos:pos + length_size], "big")
            pos += length_size
            if n <= 0 or pos + n > len(view):
                return
            yield view[pos:pos + n]
            pos += n
        return
    starts = []
    i = data.find(b"\0\0\1")
    while i >= 0:
        starts.append(i + 3)
        i = data.find(b"\0\0\1", i + 3)
    for a, b in zip(starts, starts[1:] + [len(data) + 3]):
        end = b - 3
        while end > a and data[end - 1] == 0:  # trailing zero of a 4-byte start code
            end -= 1
        yield view[a:end]


def h264_is_reference(data: bytes, length_size: int) -> bool:
    """A frame is a reference when any of its slices (NAL types 1-5) has nal_ref_idc != 0."""
    seen = False
    for nal in nal_units(data, length_size):
        if not len(nal):
            continue
        kind = nal[0] & 0x1F
        if 1 <= kind <= 5:
            seen = True
            if nal[0] & 0x60:
                return True
    return not seen  # no slice found: keep it (never skip what was not understood)


def hevc_picture(data: bytes, length_size: int) -> tuple[Optional[int], int]:
    """(NAL unit type, TemporalId) of the first VCL NAL unit of an HEVC packet (type None
    when there is none)."""
    for nal in nal_units(data, length_size):
        if len(nal) < 2:
            continue
        kind = (nal[0] >> 1) & 0x3F
        if kind < 32:
            return kind, max((nal[1] & 7) - 1, 0)
    return None, 0


def reference_flags(codec: str, payloads: Sequence[bytes], extradata: Optional[bytes]) -> list[bool]:
    """For each packet (decode order), whether a later frame may reference it."""
    ls = _length_size(codec, extradata)
    if codec == "h264":
        return [h264_is_reference(p, ls) for p in payloads]
    if codec == "hevc":
        pics = [hevc_picture(p, ls) for p in payloads]
        top = max((tid for _, tid in pics), default=0)
        return [not (kind in HEVC_SLNR and tid == top) for kind, tid in pics]
    return [True] * len(payloads)  # VP9 and others: see the module docstring


# -- the frames exact sampling cannot skip ---------------------------------------------
def needed_packets(packets: Sequence[Packet], targets: Iterable[int]) -> list[int]:
    """Decode-order indices of the packets that decoding the frames with pts in ``targets``
    cannot skip (module docstring): per target, the key frame at or before it in time,
    then the references decoded between it and the target, and the target."""
    by_pts = {p.pts: i for i, p in enumerate(packets)}
    keys = sorted((p.pts, i) for i, p in enumerate(packets) if p.key)
    if not keys:
        keys = [(packets[0].pts, 0)]
    need: set[int] = set()
    for t in set(targets):
        d = by_pts[t]
        # the last key frame whose pts <= t (mmstream's seek target), else the first
        lo, hi = 0, len(keys)
        while lo < hi:
            mid = (lo + hi) // 2
            if keys[mid][0] <= t:
                lo = mid + 1
            else:
                hi = mid
        k = keys[max(lo - 1, 0)][1]
        need.add(d)
        need.update(i for i in range(k, d) if packets[i].ref)
    return sorted(need)


def jumps(indices: Sequence[int], packets: Sequence[Packet]) -> list[bool]:
    """For each of ``indices`` (sorted), whether decoding jumps to it: a reference frame
    before it was left out (it is then a key frame, where decoding starts afresh)."""
    refs_before = [0]
    for p in packets:
        refs_before.append(refs_before[-1] + p.ref)
    out, last = [], None
    for i in indices:
        out.append(last is None or refs_before[i] - refs_before[last + 1] > 0)
        last = i
    return out


def runs(indices: Sequence[int], packets: Sequence[Packet]) -> list[list[int]]:
    """``indices`` split where decoding jumps (:func:`jumps`)."""
    out: list[list[int]] = []
    for i, jump in zip(indices, jumps(indices, packets)):
        if jump:
            out.append([i])
        else:
            out[-1].append(i)
    return out


# -- reading and timing ----------------------------------------------------------------
def packet_index(path: str) -> tuple[list[Packet], str]:
    """Every packet of the first video stream (decode order) with its reference flag."""
    with av.open(path, metadata_errors="ignore") as c:
        s = c.streams.video[0]
        codec = s.codec_context.name
        extradata = s.codec_context.extradata
        meta, payloads = [], []
        for pk in c.demux(s):
            if pk.size == 0 or pk.pts is None:
                continue
            meta.append((pk.pts, bool(pk.is_keyframe), pk.size))
            payloads.append(bytes(pk) if codec in ("h264", "hevc") else b"")
    flags = reference_flags(codec, payloads, extradata)
    return [Packet(pts, key, ref, size) for (pts, key, size), ref in zip(meta, flags)], codec


def cpu_now() -> float:
    r = resource.getrusage(resource.RUSAGE_SELF)
    c = resource.getrusage(resource.RUSAGE_CHILDREN)
    return r.ru_utime + r.ru_stime + c.ru_utime + c.ru_stime


def _threads(cc, threads: int) -> None:
    from mmstream.media.backends.pyav import decoder_threads

    count, kind = decoder_threads(threads)
    if kind:
        cc.thread_type = kind
    cc.thread_count = count


def decode_exactly(path: str, needed: Sequence[int], packets: Sequence[Packet], threads: int = 1,
                   keep_frames: Optional[set] = None, meter: Callable[[bool], None] = lambda on: None) -> dict:
    """Decode only the ``needed`` packets (decode order) of ``path``; returns wall and CPU
    seconds of the decoding alone, the frames decoded, and (``keep_frames``: pts) those
    frames as RGB arrays (converted after the clock stops). ``meter(True)`` / ``meter(False)``
    are called where the clock starts and stops (:func:`_collect`)."""
    want = set(needed)
    with av.open(path, metadata_errors="ignore") as c:
        s = c.streams.video[0]
        held = []
        i = 0
        for pk in c.demux(s):
            if pk.size == 0 or pk.pts is None:
                continue
            if i in want:
                held.append((i, pk))
            i += 1
        cc = s.codec_context
        _threads(cc, threads)
        keep = keep_frames or set()
        kept, count = [], 0
        meter(True)
        t0, c0 = time.perf_counter(), cpu_now()
        starts = dict(zip(needed, jumps(sorted(needed), packets)))
        first = True
        for i, pk in held:
            if starts[i] and not first:
                for f in cc.decode(None):  # drain what the decoder holds, then start afresh
                    count += 1
                    if f.pts in keep:
                        kept.append(f)
                cc.flush_buffers()
            for f in cc.decode(pk):
                count += 1
                if f.pts in keep:
                    kept.append(f)  # frames are let go at once: the decoder reuses their buffers
            first = False
        for f in cc.decode(None):
            count += 1
            if f.pts in keep:
                kept.append(f)
        wall, cpu = time.perf_counter() - t0, cpu_now() - c0
        meter(False)
        out = {"wall_s": wall, "cpu_s": cpu, "packets": len(held), "frames_out": count}
        if keep_frames is not None:
            out["frames"] = {f.pts: f.to_ndarray(format="rgb24") for f in kept}
        return out


def plan_targets(path: str, workload: str) -> tuple[list[int], object]:
    """mmstream's own plan for ``path`` under ``workload``: (target pts, probe info)."""
    from mmstream.config import SamplingConfig
    from mmstream.media import plan_media
    from mmstream.types import MediaRef

    fps, cap, strategy, _ = WORKLOADS[workload]
    sampling = SamplingConfig(fps=fps, max_frames=cap, strategy=strategy, decode_timeout=None)
    plan = plan_media(MediaRef("video", os.path.basename(path), root=os.path.dirname(os.path.abspath(path))),
                      sampling)
    info = plan.info["probe"]
    return sorted({info.pts[i] for i in plan.indices}), info


class MmstreamRun:
    """k records of one clip through a :class:`~mmstream.stream.Stream` (what a
    :class:`StreamingDataset` iterates; torch is not imported, so a process under
    valgrind starts in a fraction of the time), in this process."""

    def __init__(self, path: str, workload: str, k: int, threads: int, folder: str):
        from mmstream.stream import Stream  # StreamingDataset's iteration, without importing torch

        fps, cap, strategy, _ = WORKLOADS[workload]
        ann = os.path.join(folder, f"{workload}_k{k}.jsonl")
        with open(ann, "w") as f:
            for q in range(k):
                f.write(json.dumps({"id": f"q{q}", "video": os.path.basename(path), "conversations": [
                    {"from": "human", "value": f"<video>\nQuestion {q}?"},
                    {"from": "gpt", "value": f"Answer {q}."}]}) + "\n")
        config = {"sources": [{"name": "clip", "format": "llava", "annotations": ann,
                               "media_root": os.path.dirname(os.path.abspath(path))}],
                  "sampling": {"fps": fps, "max_frames": cap, "strategy": strategy, "decoder_threads": threads,
                               "decode_timeout": None},
                  "filter": {"one_video_in_first_turn": True},
                  "loader": {"seed": 0, "mix_buffer": 32, "mix_buffer_mb": 512}}
        self.ds = Stream(config)
        self.k = k

    def __call__(self) -> dict:
        from mmstream import timing

        timing.enable()
        timing.reset()
        t0, c0 = time.perf_counter(), cpu_now()
        samples = list(self.ds)
        wall, cpu = time.perf_counter() - t0, cpu_now() - c0
        snap = timing.snapshot()
        timing.enable(False)
        if len(samples) != self.k:
            raise RuntimeError(f"mmstream gave {len(samples)} samples for {self.k} records")
        return {"wall_s": wall, "cpu_s": cpu, "decoded_frames": int(snap["counts"].get("decoded_frames", 0)),
                "stages_s": {k: round(v, 4) for k, v in snap["stages"].items() if v}}


def _summary(runs_: list[dict]) -> dict:
    out = {}
    for key in ("wall_s", "cpu_s"):
        vals = [r[key] for r in runs_]
        out[key] = round(statistics.median(vals), 4)
        out[key.replace("_s", "_spread_s")] = [round(min(vals), 4), round(max(vals), 4)]
    return out


def _busy() -> float:
    """Busy CPU seconds of the whole machine so far (/proc/stat)."""
    with open("/proc/stat") as f:
        v = [int(x) for x in f.readline().split()[1:]]
    return (sum(v[:8]) - v[3] - v[4]) / os.sysconf("SC_CLK_TCK")


def row_ks(workload: str, ks: Sequence[int]) -> Sequence[int]:
    """The records per video of a workload's rows: ``ks`` for qa, else one."""
    return ks if WORKLOADS[workload][3] is None else (1,)


def measure_clip(path: str, workloads: Sequence[str], ks: Sequence[int], threads: int, repeat: int) -> list[dict]:
    """Limit and mmstream, interleaved, for every workload of one clip."""
    packets, codec = packet_index(path)
    rows = []
    with tempfile.TemporaryDirectory(prefix="decode_limit_") as folder:
        for workload in workloads:
            targets, info = plan_targets(path, workload)
            needed = needed_packets(packets, targets)
            for k in row_ks(workload, ks):
                mm = MmstreamRun(path, workload, k, threads, folder)
                mm()  # warm-up: page cache, decoder and scaler set-up, imports
                decode_exactly(path, needed, packets, threads)
                t0, busy0, own0 = time.perf_counter(), _busy(), cpu_now()
                lim_runs, mm_runs = [], []
                for _ in range(repeat):
                    lim_runs.append(decode_exactly(path, needed, packets, threads))
                    mm_runs.append(mm())
                wall = time.perf_counter() - t0
                other = max(0.0, (_busy() - busy0) - (cpu_now() - own0))
                lim, ours = _summary(lim_runs), _summary(mm_runs)
                wanted = set(targets)
                last_target = max(i for i, p in enumerate(packets) if p.pts in wanted)
                rows.append({
                    "clip": os.path.basename(path), "codec": codec, "workload": workload if workload != "qa"
                    else f"qa_k{k}", "records": k, "threads": threads, "targets": len(targets),
                    "stream_frames": len(packets), "references": sum(p.ref for p in packets),
                    "needed_frames": len(needed), "up_to_last_target": last_target + 1,
                    "limit_runs": len(runs(needed, packets)),
                    "limit": lim, "mmstream": ours,
                    "mmstream_decoded_frames": mm_runs[0]["decoded_frames"], "mmstream_stages_s": mm_runs[0]["stages_s"],
                    "ratio_cpu": round(ours["cpu_s"] / max(lim["cpu_s"], 1e-9), 3),
                    "ratio_wall": round(ours["wall_s"] / max(lim["wall_s"], 1e-9), 3),
                    "other_cpu_share": round(other / max(wall * len(os.sched_getaffinity(0)), 1e-9), 3),
                })
    return rows


# -- instructions (valgrind): the same comparison without the machine's noise ---------------
def _collect(on: bool) -> None:
    """Switch valgrind's instruction counting on or off in this process (``callgrind_control``
    talks to the callgrind that runs it; it returns once callgrind has done it)."""
    import subprocess

    subprocess.run(["callgrind_control", "--instr=" + ("on" if on else "off"), str(os.getpid())], check=True,
                   capture_output=True)


def _one(path: str, workload: str, k: int, threads: int, side: str) -> None:
    """Set up one row (plan, packet index, dataset), run ``side`` once uncounted (its warm-up,
    as in the timed runs), then once more with counting on: for ``instruction_row``."""
    targets, _ = plan_targets(path, workload)
    packets, _ = packet_index(path)
    needed = needed_packets(packets, targets)
    with tempfile.TemporaryDirectory(prefix="decode_limit_") as folder:
        if side == "mmstream":
            run = MmstreamRun(path, workload, k, threads, folder)
            run()
            _collect(True)
            run()
            _collect(False)
        else:
            decode_exactly(path, needed, packets, threads)
            decode_exactly(path, needed, packets, threads, meter=_collect)  # its decoding alone, as timed


def _instructions(args: list[str]) -> int:
    """Instructions executed (user space, valgrind's callgrind) while this script, run with
    ``args``, has counting switched on."""
    import re
    import subprocess

    done = subprocess.run(["valgrind", "--tool=callgrind", "--instr-atstart=no", "--callgrind-out-file=/dev/null",
                           sys.executable, os.path.abspath(__file__), *args], capture_output=True, text=True)
    found = re.search(r"Collected : (\d+)", done.stderr)
    if done.returncode or not found:
        raise RuntimeError(f"valgrind failed ({done.returncode}): {done.stderr[-2000:]}")
    return int(found.group(1))


def instruction_row(path: str, workload: str, k: int, threads: int) -> dict:
    """Instructions of one warm mmstream run and of one decode of the limit's packets (as
    timed: the limit's demuxing is not counted), each side in a process of its own under
    valgrind with counting switched on for that run alone (:func:`_collect`; the switch's
    own few instructions are in both counts). Deterministic where the CPU seconds move by
    10% and more between runs on a shared machine; what it leaves out is the kernel's work
    (page faults) and the time a memory access waits."""
    base = ["--_one", path, workload, str(k), str(threads)]
    count = {side: _instructions(base + [side]) for side in ("limit", "mmstream")}
    return {"clip": os.path.basename(path), "workload": workload if workload != "qa" else f"qa_k{k}",
            "limit_instructions": count["limit"], "mmstream_instructions": count["mmstream"],
            "ratio_instructions": round(count["mmstream"] / max(count["limit"], 1), 4)}


def limit_clips(data: str) -> list[str]:
    with open(os.path.join(data, "manifest.json")) as f:
        manifest = json.load(f)
    return [n for n, c in manifest["clips"].items() if "limit" in c["roles"]]


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("data", help="benchmark data folder (make_data.py's output)")
    p.add_argument("--clips", default=None, help="comma-separated clip names (default: the 'limit' role)")
    p.add_argument("--workloads", default="dense,t2vid,qa", help="dense, t2vid, qa (default: all)")
    p.add_argument("--ks", default=",".join(map(str, QA_KS)), help="records per video for qa (default 1,2,4,8)")
    p.add_argument("--threads", type=int, default=1, help="decoder threads, both sides (default 1)")
    p.add_argument("--repeat", type=int, default=3, help="interleaved runs per measurement; medians (default 3)")
    p.add_argument("--json", action="store_true", help="print the rows as JSON")
    p.add_argument("--instructions", action="store_true",
                   help="count instructions under valgrind instead of timing (slow: ~60x a run, ~15 s a small row, "
                        "minutes a 720p one; name the rows with --clips, --workloads and --ks)")
    argv = sys.argv[1:] if argv is None else argv
    if argv[:1] == ["--_one"]:  # one side of instruction_row, in its own process
        path, workload, k, threads, side = argv[1:6]
        _one(path, workload, int(k), int(threads), side)
        return 0
    args = p.parse_args(argv)
    import logging

    logging.getLogger("mmstream").setLevel(logging.ERROR)
    clips = args.clips.split(",") if args.clips else limit_clips(args.data)
    workloads = [w.strip() for w in args.workloads.split(",") if w.strip()]
    unknown = set(workloads) - set(WORKLOADS)
    if unknown:
        p.error(f"unknown workloads {sorted(unknown)}; choose from {sorted(WORKLOADS)}")
    ks = [int(k) for k in args.ks.split(",")]
    if args.instructions:
        rows = []
        for clip in clips:
            for workload in workloads:
                for k in row_ks(workload, ks):
                    row = instruction_row(os.path.join(args.data, "videos", clip), workload, k, args.threads)
                    rows.append(row)
                    print(f"{row['clip']:32s} {row['workload']:6s} instructions: limit {row['limit_instructions']:,}"
                          f"  mmstream {row['mmstream_instructions']:,}  = {row['ratio_instructions']:.3f}x",
                          file=sys.stderr if args.json else sys.stdout, flush=True)
        if args.json:
            json.dump({"instruction_rows": rows, "threads": args.threads}, sys.stdout, indent=1)
            sys.stdout.write("\n")
        return 0
    rows = []
    for clip in clips:
        got = measure_clip(os.path.join(args.data, "videos", clip), workloads, ks, args.threads, args.repeat)
        rows += got
        for r in got:
            print(format_row(r), file=sys.stderr if args.json else sys.stdout, flush=True)
    if args.json:
        json.dump({"rows": rows, "repeat": args.repeat, "threads": args.threads}, sys.stdout, indent=1)
        sys.stdout.write("\n")
    return 0


def format_row(r: dict) -> str:
    lim, mm = r["limit"], r["mmstream"]
    return (f"{r['clip']:32s} {r['workload']:6s} targets {r['targets']:3d}  needed {r['needed_frames']:5d} of "
            f"{r['up_to_last_target']:5d} (mmstream decoded {r['mmstream_decoded_frames']:5d})  "
            f"limit cpu {lim['cpu_s']:.3f} s  mmstream cpu {mm['cpu_s']:.3f} s  = {r['ratio_cpu']:.2f}x cpu, "
            f"{r['ratio_wall']:.2f}x wall  (others {100 * r['other_cpu_share']:.0f}%)")


if __name__ == "__main__":
    sys.exit(main())
