"""torchcodec backend (``sampling.decoder: torchcodec``): the decoder Qwen's utilities,
vLLM and sglang default to. Exact seek mode (every frame's position comes from a scan of
the file, so frame i is the i-th frame in presentation order, as in the probe); frames
come upright (torchcodec applies the display matrix) and resized by the decoder's
``Resize`` transform. The CPU build of torchcodec 0.13 is the newest that imports beside
the CPU torch 2.13 (REFERENCE section 8); it uses the system's FFmpeg libraries.

Each returned frame's timestamp is checked against the probe's: a decoder that returns
a different frame than asked for is a decode_error, not a silent wrong frame."""
from __future__ import annotations

from typing import Sequence

import numpy as np

from ...errors import DECODE_ERROR, SampleError
from ..probe import VideoInfo
from .base import Backend


class TorchCodecBackend(Backend):
    name = "torchcodec"

    def read(self, path: str, info: VideoInfo, positions: Sequence[int], size: tuple[int, int],
             threads: int = 1, salvage: bool = False) -> dict[int, np.ndarray]:
        from torchcodec.decoders import VideoDecoder
        from torchcodec.transforms import Resize

        width, height = size
        transforms = [Resize((height, width))] if (width, height) != (info.width, info.height) else None
        from ... import storage

        out: dict[int, np.ndarray] = {}
        opened = storage.open_media(path)
        source = opened.__enter__()
        try:
            decoder = VideoDecoder(source, seek_mode="exact", dimension_order="NHWC", num_ffmpeg_threads=threads,
                                   transforms=transforms)
            if decoder.metadata.num_frames != info.num_frames:
                raise SampleError(DECODE_ERROR, f"torchcodec sees {decoder.metadata.num_frames} frames, the "
                                  f"container index {info.num_frames}: refusing to guess which is which", path=path)
            try:
                batches = [(list(positions), decoder.get_frames_at(list(positions)))]
            except RuntimeError:
                if not salvage:
                    raise
                batches = []  # one at a time: keep the frames before the damage
                for p in positions:
                    try:
                        batches.append(([p], decoder.get_frames_at([p])))
                    except RuntimeError:
                        break
        except SampleError:
            raise
        except (RuntimeError, ValueError, OSError) as exc:
            raise SampleError(DECODE_ERROR, f"torchcodec failed: {exc}", path=path) from None
        finally:
            opened.__exit__(None, None, None)
        half_frame = 0.5 / max(info.num_frames / max(info.duration_seconds, 1e-9), 1e-9)
        for pos_list, batch in batches:
            frames = batch.data.numpy()
            for k, p in enumerate(pos_list):
                got, want = float(batch.pts_seconds[k]), info.seconds(p)
                if abs(got - want) > half_frame:
                    raise SampleError(DECODE_ERROR, f"torchcodec returned the frame at {got:.4f} s for the one at "
                                      f"{want:.4f} s", path=path)
                out[p] = np.ascontiguousarray(frames[k])
        return out
