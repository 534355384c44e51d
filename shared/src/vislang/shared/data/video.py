"""Video decoding, writing and the papers' frame-sampling schemes.

Decoding goes through decord (fast random access, what VideoMAE, UMT and VLAB's lineage use) with
PyAV as the fallback when decord is not installed or cannot open a file; GIFs always go through PyAV
because decord cannot measure their frame count. Both paths return the same pixels for the same
request: frames are ``numpy.uint8`` arrays of shape ``(T, H, W, 3)`` in RGB order.

Why the PyAV path resizes with a filter graph and not ``VideoFrame.reformat``: decord resizes inside
its decoder with the FFmpeg filter graph ``scale=W:H`` into an ``rgb24`` sink, i.e. libswscale with
the ``scale`` filter's default ``flags=bilinear`` doing YUV->RGB and resizing in one step. PyAV's
``reformat(width, height)`` calls libswscale with other settings and differs by tens of grey levels
on sharp edges; the same ``scale=W:H:flags=bilinear`` graph run through PyAV is bit-identical to
decord (checked on H.264, FFmpeg 4.1 inside decord vs FFmpeg 8 inside PyAV 18; see
``tests/shared/test_video.py``).

Readers are lazy: `VideoReader` stores the path and opens the file on first use, so datasets can
create one per ``__getitem__`` inside the DataLoader worker (decord is not fork-safe; decord issues
#220/#294).

The samplers are pure functions of the video's frame count (and fps where needed) and an optional
random generator (`random.Random`, `numpy.random.Generator` or `torch.Generator`); they return
``numpy.int64`` index arrays and never fail on short videos (each documents its rule).
"""

from __future__ import annotations

import math
import os
import random
import re
from collections.abc import Sequence
from dataclasses import dataclass
from fractions import Fraction
from functools import cache
from pathlib import Path
from types import ModuleType
from typing import Any, Literal, NamedTuple

import av
import numpy as np
import torch

from vislang.shared.data.robust import SampleLoadError

__all__ = [
    "Backend",
    "Generator",
    "ShiftedClips",
    "VideoDecodeError",
    "VideoReader",
    "dense_indices",
    "fps_indices",
    "read_video",
    "resolve_size",
    "temporal_shift_indices",
    "tsn_indices",
    "uniform_indices",
    "write_video",
]

Backend = Literal["auto", "decord", "pyav"]
Generator = random.Random | np.random.Generator | torch.Generator
Size = int | tuple[int, int]

# Containers decord cannot index; always decoded with PyAV.
_PYAV_ONLY_SUFFIXES = {".gif"}
# The libswscale settings of decord's `scale=W:H` filter (vf_scale's default flags in FFmpeg 4.1).
_SCALE_FLAGS = "bilinear"
# "[19:26:58] /github/workspace/src/video/video_reader.cc:486: " before decord's messages
_DECORD_LOG_PREFIX = re.compile(r"^\[[\d:]+\]\s+\S+:\d+:\s*")


class VideoDecodeError(SampleLoadError):
    """A video file is missing, empty, corrupt or truncated, or a requested frame cannot be decoded.

    A subclass of `SampleLoadError` so that `vislang.shared.data.robust.RobustDataset` skips and
    counts the sample instead of stopping training.
    """


# ---- reading ---------------------------------------------------------------------------------------


@cache
def _decord() -> ModuleType | None:
    """decord if it is installed (it has no aarch64 / Apple-silicon wheels), else None."""
    try:
        import decord
    except ImportError:
        return None
    return decord


def _one_line(error: BaseException) -> str:
    """The first non-empty line of an exception's text (decord's errors carry C++ stack traces)."""
    if isinstance(error, av.error.FFmpegError) and error.strerror:
        return str(error.strerror)  # without the errno and the repeated file name
    lines = [line.strip() for line in str(error).splitlines() if line.strip()]
    text = lines[0] if lines else type(error).__name__
    return _DECORD_LOG_PREFIX.sub("", text)[:300]


def resolve_size(size: Size | None, height: int, width: int) -> tuple[int, int]:
    """The output (height, width) for a resize request on a `height` x `width` video.

    Args:
        size: None keeps the original size; an int resizes the short side to `size` and scales the
            long side by the same factor, truncated like torchvision's `Resize(int)`; a
            `(height, width)` pair is used as given.
        height: the video's height in pixels.
        width: the video's width in pixels.
    """
    if size is None:
        return height, width
    if isinstance(size, int):
        if size <= 0:
            raise ValueError(f"size must be positive, got {size}")
        if height <= width:
            return size, max(1, int(size * width / height))
        return max(1, int(size * height / width)), size
    out_h, out_w = size
    if out_h <= 0 or out_w <= 0:
        raise ValueError(f"size must be positive, got {size}")
    return int(out_h), int(out_w)


@dataclass
class _Meta:
    num_frames: int
    fps: float
    height: int
    width: int


class VideoReader:
    """Random access to the frames of one video file, opened lazily on first use.

    Constructing a reader does not touch the file (so a dataset can build one per item anywhere); the
    first call to `len`, `fps`, `shape` or `get_frames` opens it, in the calling process. decord is
    used when available (except for GIFs); if decord is missing or fails to open the file, PyAV reads
    it. Every failure (missing, empty, corrupt, truncated file, or a frame index out of range) raises
    `VideoDecodeError`.

    Args:
        path: the video file (mp4, webm, avi, mkv, gif, ... anything FFmpeg reads).
        size: default resize for `get_frames` (see `resolve_size`); giving it here rather than per
            call lets decord open the file once, already resizing.
        backend: `auto` (decord, falling back to PyAV whenever decord is missing or fails), `decord`
            (decord only: its failures, including its row-padding bug, raise) or `pyav`.
        num_threads: decoding threads; 1 as in VideoMAE/UMT, since DataLoader workers already use
            every core.
    """

    def __init__(
        self, path: str | os.PathLike[str], size: Size | None = None, backend: Backend = "auto", num_threads: int = 1
    ) -> None:
        if backend not in ("auto", "decord", "pyav"):
            raise ValueError(f"backend must be 'auto', 'decord' or 'pyav', got {backend!r}")
        self.path = Path(path)
        self.size = size
        self.backend = backend
        self.num_threads = num_threads
        self._meta: _Meta | None = None
        self._used: Literal["decord", "pyav"] | None = None
        self._decord_readers: dict[tuple[int, int], Any] = {}

    # -- metadata --

    def __len__(self) -> int:
        return self._open().num_frames

    @property
    def fps(self) -> float:
        """Average frames per second from the container."""
        return self._open().fps

    @property
    def shape(self) -> tuple[int, int]:
        """The stored (height, width) of the frames, before any resize."""
        meta = self._open()
        return meta.height, meta.width

    @property
    def used_backend(self) -> Literal["decord", "pyav"]:
        """Which library reads this file (opens it if needed)."""
        self._open()
        assert self._used is not None
        return self._used

    # -- frames --

    def get_frames(self, indices: Sequence[int] | np.ndarray, size: Size | None = None) -> np.ndarray:
        """Decode the frames at `indices` (any order, repeats allowed).

        Args:
            indices: frame numbers in presentation order, 0-based, each in ``[0, len(self))``.
            size: resize inside the decoder (see `resolve_size`); defaults to the reader's `size`.

        Returns:
            ``numpy.uint8`` array of shape ``(len(indices), H, W, 3)``, RGB.
        """
        meta = self._open()
        wanted = np.asarray(indices, dtype=np.int64).reshape(-1)
        if wanted.size and (wanted.min() < 0 or wanted.max() >= meta.num_frames):
            bad = int(wanted.min() if wanted.min() < 0 else wanted.max())
            raise VideoDecodeError(self.path, f"frame {bad} requested from a video of {meta.num_frames} frames")
        out_h, out_w = resolve_size(self.size if size is None else size, meta.height, meta.width)
        if wanted.size == 0:
            return np.zeros((0, out_h, out_w, 3), dtype=np.uint8)
        if self._used == "decord" and (self.backend == "decord" or _decord_handles_width(out_w)):
            return self._decord_frames(wanted, out_h, out_w)
        return _pyav_frames(self.path, wanted, out_h, out_w, self.num_threads)

    def close(self) -> None:
        """Drop the decoder handles (decord holds the whole packet index in memory)."""
        self._decord_readers.clear()

    def __enter__(self) -> VideoReader:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def __repr__(self) -> str:
        return f"VideoReader({str(self.path)!r}, backend={self.backend!r}, opened={self._meta is not None})"

    # -- internals --

    def _open(self) -> _Meta:
        if self._meta is not None:
            return self._meta
        if not self.path.exists():
            raise VideoDecodeError(self.path, "file not found")
        if not self.path.is_file():
            raise VideoDecodeError(self.path, "not a regular file")
        if self.path.stat().st_size == 0:
            raise VideoDecodeError(self.path, "empty file (0 bytes)")
        use_decord = self.backend != "pyav" and self.path.suffix.lower() not in _PYAV_ONLY_SUFFIXES
        decord_error = ""
        if use_decord:
            if _decord() is None:
                if self.backend == "decord":
                    raise VideoDecodeError(self.path, "backend 'decord' requested but decord is not installed")
            else:
                try:
                    self._meta = self._open_decord()
                    self._used = "decord"
                    return self._meta
                except VideoDecodeError:
                    raise
                except Exception as error:  # decord raises DECORDError/RuntimeError with C++ traces
                    decord_error = _one_line(error)
                    if self.backend == "decord":
                        raise VideoDecodeError(self.path, f"decord: {decord_error}") from error
        try:
            self._meta = _pyav_meta(self.path)
        except VideoDecodeError as error:
            if decord_error:
                raise VideoDecodeError(self.path, f"decord: {decord_error}; PyAV: {error.reason}") from error
            raise
        self._used = "pyav"
        return self._meta

    def _open_decord(self) -> _Meta:
        # decord resizes only to an explicit width x height, so the stored size comes from the
        # container header (cheap) before decord opens the file at the requested size.
        height, width = _pyav_shape(self.path)
        out = resolve_size(self.size, height, width)
        reader = self._decord_reader(out)
        num_frames = len(reader)
        if num_frames <= 0:
            raise VideoDecodeError(self.path, "no video frames")
        return _Meta(num_frames=num_frames, fps=float(reader.get_avg_fps()), height=height, width=width)

    def _decord_reader(self, out: tuple[int, int]) -> Any:
        if out not in self._decord_readers:
            decord = _decord()
            assert decord is not None
            self._decord_readers[out] = decord.VideoReader(
                str(self.path), ctx=decord.cpu(0), width=out[1], height=out[0], num_threads=self.num_threads
            )
        return self._decord_readers[out]

    def _decord_frames(self, wanted: np.ndarray, out_h: int, out_w: int) -> np.ndarray:
        try:
            reader = self._decord_reader((out_h, out_w))
            batch = reader.get_batch(wanted.tolist())
            reader.seek(0)  # releases decoder buffers (decord issues #197/#208)
        except Exception as error:
            decord_error = _one_line(error)
            if self.backend == "decord":
                raise VideoDecodeError(self.path, f"decord: {decord_error}") from error
            # PyAV gives the same pixels, so falling back is invisible to the caller
            try:
                return _pyav_frames(self.path, wanted, out_h, out_w, self.num_threads)
            except VideoDecodeError as pyav_error:
                raise VideoDecodeError(self.path, f"decord: {decord_error}; {pyav_error.reason}") from error
        # decord.bridge may have been set to torch/tensorflow globally by someone else.
        frames = batch.asnumpy() if hasattr(batch, "asnumpy") else np.asarray(batch)
        return np.ascontiguousarray(frames, dtype=np.uint8)


def _decord_handles_width(width: int, align: int = 32) -> bool:
    """False for output widths where decord 0.6.0 fails with "DECORDArrayCopyFromTo: The size must
    exactly match" (e.g. 16, 24, 48, 72 px).

    FFmpeg pads each rgb24 row to a multiple of `align` bytes by rounding the width up to a power of
    two (libavfilter's frame pool); decord then takes "row bytes divisible by the width" to mean
    "unpadded" (``AsNDArray`` tests ``linesize % width``), builds a wrongly shaped array and fails
    on the copy. Those widths go straight to PyAV (same pixels). If FFmpeg pads to another
    alignment on some CPU, the failure is caught and PyAV is used all the same.
    """
    step = 1
    while step <= align:
        linesize = 3 * (-(-width // step) * step)
        if linesize % align == 0:
            break
        step *= 2
    return linesize == 3 * width or linesize % width != 0


def _pyav_shape(path: Path) -> tuple[int, int]:
    """(height, width) of the first video stream from the container header."""
    try:
        with av.open(str(path)) as container:
            if not container.streams.video:
                raise VideoDecodeError(path, "no video stream")
            codec = container.streams.video[0].codec_context
            return int(codec.height), int(codec.width)
    except VideoDecodeError:
        raise
    except Exception as error:  # av.error.FFmpegError and friends
        raise VideoDecodeError(path, f"PyAV: {_one_line(error)}") from error


def _pyav_meta(path: Path) -> _Meta:
    """Frame count, fps and size through PyAV; counts packets when the header has no frame count."""
    try:
        with av.open(str(path)) as container:
            if not container.streams.video:
                raise VideoDecodeError(path, "no video stream")
            stream = container.streams.video[0]
            num_frames = int(stream.frames)
            if num_frames <= 0:  # webm, GIF: no count in the header; demuxing (no decoding) is cheap
                num_frames = sum(1 for packet in container.demux(stream) if packet.size > 0)
            rate = stream.average_rate or stream.guessed_rate or Fraction(0)
            codec = stream.codec_context
            meta = _Meta(num_frames=num_frames, fps=float(rate), height=int(codec.height), width=int(codec.width))
    except VideoDecodeError:
        raise
    except Exception as error:
        raise VideoDecodeError(path, f"PyAV: {_one_line(error)}") from error
    if meta.num_frames <= 0:
        raise VideoDecodeError(path, "no video frames")
    return meta


class _Scaler:
    """FFmpeg `scale=W:H:flags=bilinear` into rgb24: the same libswscale call decord makes."""

    def __init__(self, frame: av.VideoFrame, height: int, width: int) -> None:
        self.key = (frame.width, frame.height, frame.format.name)
        self.graph = av.filter.Graph()
        source = self.graph.add_buffer(
            width=frame.width,
            height=frame.height,
            format=frame.format.name,
            time_base=frame.time_base or Fraction(1, 25),
        )
        scale = self.graph.add("scale", f"{width}:{height}:flags={_SCALE_FLAGS}")
        rgb = self.graph.add("format", "rgb24")
        sink = self.graph.add("buffersink")
        source.link_to(scale)
        scale.link_to(rgb)
        rgb.link_to(sink)
        self.graph.configure()

    def __call__(self, frame: av.VideoFrame) -> np.ndarray:
        self.graph.push(frame)
        return self.graph.pull().to_ndarray()


def _pyav_frames(path: Path, wanted: np.ndarray, out_h: int, out_w: int, num_threads: int) -> np.ndarray:
    """Decode sequentially from the start and convert only the wanted frames (PyAV seeks only to
    key frames, so exact random access would need the same linear scan anyway)."""
    unique = np.unique(wanted)
    position = {int(index): slot for slot, index in enumerate(unique)}
    decoded: list[np.ndarray | None] = [None] * len(unique)
    last = int(unique[-1])
    scaler: _Scaler | None = None
    count = 0
    try:
        with av.open(str(path)) as container:
            stream = container.streams.video[0]
            stream.codec_context.thread_count = num_threads
            for frame in container.decode(stream):
                if count in position:
                    if scaler is None or scaler.key != (frame.width, frame.height, frame.format.name):
                        scaler = _Scaler(frame, out_h, out_w)
                    decoded[position[count]] = scaler(frame)
                count += 1
                if count > last:
                    break
    except Exception as error:
        raise VideoDecodeError(path, f"PyAV: {_one_line(error)}") from error
    if count <= last:
        raise VideoDecodeError(path, f"only {count} frames decodable, frame {last} requested (truncated file?)")
    stacked = np.stack(decoded)  # type: ignore[arg-type]
    return stacked[np.searchsorted(unique, wanted)]


def read_video(
    path: str | os.PathLike[str],
    indices: Sequence[int] | np.ndarray,
    size: Size | None = None,
    backend: Backend = "auto",
) -> np.ndarray:
    """Decode `indices` of the video at `path` in one call; see `VideoReader.get_frames`."""
    with VideoReader(path, size=size, backend=backend) as reader:
        return reader.get_frames(indices)


# ---- writing ---------------------------------------------------------------------------------------

_CODECS = {".mp4": "libx264", ".mkv": "libx264", ".webm": "libvpx-vp9", ".avi": "mpeg4", ".gif": "gif"}
_PIXEL_FORMATS = {
    "libx264": "yuv420p",
    "h264": "yuv420p",
    "libvpx-vp9": "yuv420p",
    "libvpx": "yuv420p",
    "mpeg4": "yuv420p",
    "gif": "rgb8",
}


def write_video(
    path: str | os.PathLike[str],
    frames: np.ndarray | torch.Tensor,
    fps: float = 25,
    codec: str | None = None,
    options: dict[str, str] | None = None,
    container_options: dict[str, str] | None = None,
) -> Path:
    """Encode RGB frames to a video file with PyAV (for tests and the synthetic world's writers).

    Args:
        path: output file; its suffix picks the container (and the codec unless `codec` is given:
            mp4/mkv -> libx264, webm -> libvpx-vp9, avi -> mpeg4, gif -> gif).
        frames: ``uint8`` array or tensor of shape ``(T, H, W, 3)``, RGB. 4:2:0 codecs need even H, W.
        fps: frame rate (a GIF stores delays in 1/100 s, so use a divisor of 100 there).
        codec: an FFmpeg encoder name overriding the suffix's default.
        options: encoder options, e.g. ``{"crf": "0"}`` for lossless x264 or ``{"g": "4"}`` for a
            key frame every 4 frames.
        container_options: muxer options, e.g. ``{"movflags": "faststart"}`` to put the mp4 index
            first (what web-downloaded datasets usually have).

    Returns:
        The path written.
    """
    path = Path(path)
    array = frames.cpu().numpy() if isinstance(frames, torch.Tensor) else np.asarray(frames)
    if array.ndim != 4 or array.shape[-1] != 3 or array.dtype != np.uint8:
        raise ValueError(f"frames must be uint8 (T, H, W, 3), got {array.dtype} {tuple(array.shape)}")
    codec = codec or _CODECS.get(path.suffix.lower())
    if codec is None:
        raise ValueError(f"{path}: no default codec for suffix {path.suffix!r}; pass codec=")
    pixel_format = _PIXEL_FORMATS.get(codec, "yuv420p")
    height, width = array.shape[1:3]
    if pixel_format == "yuv420p" and (height % 2 or width % 2):
        raise ValueError(f"{path}: {codec} with yuv420p needs even height and width, got {height}x{width}")
    path.parent.mkdir(parents=True, exist_ok=True)
    with av.open(str(path), mode="w", options=container_options or {}) as container:
        stream = container.add_stream(codec, rate=Fraction(fps).limit_denominator(1001), options=options or {})
        stream.width, stream.height, stream.pix_fmt = width, height, pixel_format
        for image in array:
            frame = av.VideoFrame.from_ndarray(np.ascontiguousarray(image), format="rgb24")
            container.mux(stream.encode(frame))
        container.mux(stream.encode(None))
    return path


# ---- frame sampling --------------------------------------------------------------------------------


def _randint(rng: Generator | None, low: int, high: int) -> int:
    """A uniform integer in [low, high] (inclusive) from any of the supported generators."""
    if high <= low:
        return low
    if rng is None:
        return random.randint(low, high)
    if isinstance(rng, random.Random):
        return rng.randint(low, high)
    if isinstance(rng, np.random.Generator):
        return int(rng.integers(low, high + 1))
    if isinstance(rng, torch.Generator):
        return int(torch.randint(low, high + 1, (1,), generator=rng).item())
    raise TypeError(f"rng must be random.Random, numpy.random.Generator or torch.Generator, got {type(rng)}")


def _check(num_frames: int, num_samples: int) -> None:
    if num_frames <= 0:
        raise ValueError(f"the video has no frames (num_frames={num_frames}); decode errors come from VideoReader")
    if num_samples <= 0:
        raise ValueError(f"num_samples must be positive, got {num_samples}")


def uniform_indices(num_frames: int, num_samples: int) -> np.ndarray:
    """`num_samples` evenly spaced frames including the first and the last (CLIP4Clip's
    ``np.linspace(0, n - 1, num=T, dtype=int)``, i.e. rounded down).

    Short videos (``num_frames < num_samples``): the same formula repeats frames in order, e.g.
    3 frames, 5 samples -> [0, 0, 1, 1, 2]. Deterministic, for training and evaluation alike.

    Args:
        num_frames: frames in the video.
        num_samples: frames to take (T).
    """
    _check(num_frames, num_samples)
    return np.linspace(0, num_frames - 1, num=num_samples).astype(np.int64)


def tsn_indices(num_frames: int, num_samples: int, train: bool, rng: Generator | None = None) -> np.ndarray:
    """TSN segment sampling (Wang et al. 2016; VideoMAE's SSv2 fine-tuning, UMT/VindLU's `rand`/`middle`).

    The video is split into `num_samples` segments ``[floor(i n / T), floor((i + 1) n / T))``;
    training takes a uniformly random frame of each segment, evaluation the frame at the segment's
    centre, ``floor((i + 0.5) n / T)`` (TSN's test-time offsets).

    Short videos (``num_frames < num_samples``): empty segments are widened to one frame, so frames
    repeat in order (3 frames, 5 samples -> [0, 0, 1, 1, 2] in training and [0, 0, 1, 2, 2] in
    evaluation).

    Args:
        num_frames: frames in the video (n).
        num_samples: segments, one frame each (T).
        train: random frame per segment (True) or segment centre (False).
        rng: generator for training; None uses the `random` module's global state.
    """
    _check(num_frames, num_samples)
    if not train:
        return np.floor((np.arange(num_samples) + 0.5) * num_frames / num_samples).astype(np.int64)
    starts = [i * num_frames // num_samples for i in range(num_samples)]
    ends = [max((i + 1) * num_frames // num_samples, start + 1) for i, start in enumerate(starts)]
    return np.array([_randint(rng, start, end - 1) for start, end in zip(starts, ends, strict=True)], dtype=np.int64)


def _pad(indices: np.ndarray, num_frames: int, pad: Literal["repeat", "loop"]) -> np.ndarray:
    if pad == "repeat":  # VideoMAE: the offset stops advancing at the last frame
        return np.minimum(indices, num_frames - 1)
    if pad == "loop":
        return indices % num_frames
    raise ValueError(f"pad must be 'repeat' or 'loop', got {pad!r}")


def dense_indices(
    num_frames: int,
    num_samples: int,
    stride: int,
    train: bool,
    rng: Generator | None = None,
    pad: Literal["repeat", "loop"] = "repeat",
) -> np.ndarray:
    """Dense sampling (VideoMAE pre-training, K400 16 x 4): `num_samples` frames `stride` apart.

    The clip spans ``L = (T - 1) * stride + 1`` frames and starts at a uniformly random frame in
    ``[0, n - L]`` in training, at ``(n - L) // 2`` (the centred clip) in evaluation.

    Short videos (``n < L``): the clip starts at 0 and indices past the end become the last frame
    (``pad="repeat"``, VideoMAE's behaviour) or wrap around (``pad="loop"``).

    Args:
        num_frames: frames in the video (n).
        num_samples: frames in the clip (T).
        stride: distance between consecutive sampled frames (VideoMAE's `sampling_rate`).
        train: random start (True) or centred start (False).
        rng: generator for training; None uses the `random` module's global state.
        pad: how short videos are filled: `repeat` the last frame or `loop` from the first.
    """
    _check(num_frames, num_samples)
    if stride <= 0:
        raise ValueError(f"stride must be positive, got {stride}")
    span = (num_samples - 1) * stride + 1
    room = max(num_frames - span, 0)
    start = _randint(rng, 0, room) if train else room // 2
    return _pad(start + stride * np.arange(num_samples, dtype=np.int64), num_frames, pad)


class ShiftedClips(NamedTuple):
    """The two clips of CMAE-V's temporal shift: same video, target starts `shift` frames later."""

    online: np.ndarray
    target: np.ndarray
    shift: int


def temporal_shift_indices(
    num_frames: int,
    num_samples: int,
    stride: int,
    max_shift: int,
    train: bool,
    rng: Generator | None = None,
    shift: int | None = None,
    pad: Literal["repeat", "loop"] = "repeat",
) -> ShiftedClips:
    """CMAE-V's temporal shift (its video analogue of CMAE's pixel shift): two dense clips of the
    same video whose start frames differ by ``delta`` frames, ``target = online + delta``.

    ``delta`` is `shift` when given, else uniform in ``{0, ..., max_shift}`` in training and
    ``max_shift // 2`` (the mean) in evaluation. Both clips together span
    ``L = (T - 1) * stride + 1 + delta`` frames, placed like `dense_indices` (random start in
    training, centred in evaluation); short videos are padded the same way (`pad`). Decode
    ``concatenate([online, target])`` in one `get_frames` call and apply the same spatial crop to
    both clips, as CMAE's shifted views share one crop.

    Args:
        num_frames: frames in the video (n).
        num_samples: frames per clip (T).
        stride: distance between consecutive sampled frames within a clip.
        max_shift: largest shift in frames (Delta_max; a hyper-parameter, not given by the paper).
        train: random start and shift (True) or deterministic ones (False).
        rng: generator for training; None uses the `random` module's global state.
        shift: a fixed shift, overriding the random one.
        pad: how short videos are filled (see `dense_indices`).
    """
    _check(num_frames, num_samples)
    if stride <= 0 or max_shift < 0:
        raise ValueError(f"stride must be positive and max_shift non-negative, got {stride}, {max_shift}")
    if shift is None:
        shift = _randint(rng, 0, max_shift) if train else max_shift // 2
    if shift < 0:
        raise ValueError(f"shift must be non-negative, got {shift}")
    span = (num_samples - 1) * stride + 1 + shift
    room = max(num_frames - span, 0)
    start = _randint(rng, 0, room) if train else room // 2
    online = start + stride * np.arange(num_samples, dtype=np.int64)
    return ShiftedClips(_pad(online, num_frames, pad), _pad(online + shift, num_frames, pad), shift)


def fps_indices(num_frames: int, video_fps: float, sample_fps: float, max_samples: int | None = None) -> np.ndarray:
    """Frames at a fixed rate: one at the centre of every ``1 / sample_fps`` seconds (UMT/VindLU's
    ``fpsX``), thinned to `max_samples` with `uniform_indices` if there are more (CLIP4Clip samples
    at 1 fps, then keeps ``max_frames`` uniformly).

    Short videos (shorter than one sampling interval): the middle frame.

    Args:
        num_frames: frames in the video.
        video_fps: the video's frame rate.
        sample_fps: samples per second.
        max_samples: keep at most this many.
    """
    _check(num_frames, 1)
    if video_fps <= 0 or sample_fps <= 0:
        raise ValueError(f"fps must be positive, got video_fps={video_fps}, sample_fps={sample_fps}")
    count = math.floor(num_frames / video_fps * sample_fps)
    if count == 0:
        return np.array([num_frames // 2], dtype=np.int64)
    times = (np.arange(count) + 0.5) / sample_fps
    indices = np.minimum(np.floor(times * video_fps), num_frames - 1).astype(np.int64)
    if max_samples is not None and len(indices) > max_samples:
        indices = indices[uniform_indices(len(indices), max_samples)]
    return indices
