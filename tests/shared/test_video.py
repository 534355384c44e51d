"""Video decoding (decord and PyAV agree bit for bit), writing, errors and the frame samplers."""

from __future__ import annotations

import pickle
import random
from pathlib import Path

import numpy as np
import pytest
import torch

from vislang.shared.data.robust import SampleLoadError
from vislang.shared.data.video import (
    VideoDecodeError,
    VideoReader,
    dense_indices,
    fps_indices,
    read_video,
    resolve_size,
    temporal_shift_indices,
    tsn_indices,
    uniform_indices,
    write_video,
)

decord = pytest.importorskip("decord")

NUM_FRAMES, HEIGHT, WIDTH = 40, 48, 64
BLOCK = 16  # bits of the frame index are 16x16 black/white blocks: survive lossy coding and resizing
BITS = 6  # 2**6 = 64 > NUM_FRAMES


def _bit_centres() -> list[tuple[float, float]]:
    """Relative (row, col) centres of the bit blocks: the top row holds bits 0-3, the next bits 4-5."""
    cells = [(0, c) for c in range(4)] + [(1, 0), (1, 1)]
    return [((r + 0.5) * BLOCK / HEIGHT, (c + 0.5) * BLOCK / WIDTH) for r, c in cells]


def _clip(num_frames: int = NUM_FRAMES) -> np.ndarray:
    """Frames whose index is written into their pixels, plus moving colour texture elsewhere (so
    the colour conversion and the resize have something to disagree about)."""
    rows, cols = np.mgrid[0:HEIGHT, 0:WIDTH]
    frames = []
    for t in range(num_frames):
        frame = np.stack([(cols * 4 + t * 9) % 256, (rows * 5 + t * 3) % 256, ((cols + rows) * 3 + t) % 256], -1)
        frame = frame.astype(np.uint8)
        for bit, (r, c) in enumerate(_bit_centres()):
            top, left = int(r * HEIGHT) - BLOCK // 2, int(c * WIDTH) - BLOCK // 2
            frame[top : top + BLOCK, left : left + BLOCK] = 255 if (t >> bit) & 1 else 0
        frames.append(frame)
    return np.stack(frames)


def _read_index(frames: np.ndarray) -> list[int]:
    """The index written into each frame, read at the bit blocks' centres (any output size)."""
    height, width = frames.shape[1:3]
    values = []
    for frame in frames:
        bits = [frame[int(r * height), int(c * width)].mean() > 127 for r, c in _bit_centres()]
        values.append(sum(int(b) << i for i, b in enumerate(bits)))
    return values


@pytest.fixture(scope="module")
def clips(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("video")
    frames = _clip()
    # a key frame every 8 frames with B-frames (x264 default): random access must really seek
    return {
        "mp4": write_video(root / "clip.mp4", frames, fps=10, options={"g": "8"}),
        "webm": write_video(root / "clip.webm", frames, fps=10, options={"g": "8"}),
        "avi": write_video(root / "clip.avi", frames, fps=10, options={"g": "8"}),
        "gif": write_video(root / "clip.gif", frames[:20], fps=10),
    }


RANDOM_ACCESS = [17, 3, 39, 3, 0, 24, 8, 31, 16, 7]  # unsorted, repeated, across key frames


# ---- decoding --------------------------------------------------------------------------------------


@pytest.mark.parametrize("container", ["mp4", "webm", "avi"])
def test_decord_and_pyav_return_the_requested_frames_bit_identically(clips: dict[str, Path], container: str) -> None:
    decord_reader = VideoReader(clips[container], backend="decord")
    pyav_reader = VideoReader(clips[container], backend="pyav")
    assert len(decord_reader) == len(pyav_reader) == NUM_FRAMES
    from_decord = decord_reader.get_frames(RANDOM_ACCESS)
    from_pyav = pyav_reader.get_frames(RANDOM_ACCESS)
    assert decord_reader.used_backend == "decord" and pyav_reader.used_backend == "pyav"
    assert from_decord.shape == from_pyav.shape == (len(RANDOM_ACCESS), HEIGHT, WIDTH, 3)
    assert from_decord.dtype == from_pyav.dtype == np.uint8
    assert _read_index(from_decord) == RANDOM_ACCESS
    assert _read_index(from_pyav) == RANDOM_ACCESS
    assert np.abs(from_decord.astype(int) - from_pyav.astype(int)).max() == 0
    # and the decord path really is decord's own output
    raw = decord.VideoReader(str(clips[container]), num_threads=1).get_batch(RANDOM_ACCESS).asnumpy()
    np.testing.assert_array_equal(from_decord, raw)


@pytest.mark.parametrize(("size", "shape"), [(32, (32, 42)), ((24, 40), (24, 40)), (56, (56, 74))])
def test_resizing_while_decoding_is_bit_identical_across_backends(clips: dict[str, Path], size, shape) -> None:
    from_decord = VideoReader(clips["mp4"], backend="decord").get_frames(RANDOM_ACCESS, size=size)
    from_pyav = VideoReader(clips["mp4"], backend="pyav").get_frames(RANDOM_ACCESS, size=size)
    assert from_decord.shape[1:3] == from_pyav.shape[1:3] == shape
    assert _read_index(from_decord) == RANDOM_ACCESS
    assert np.abs(from_decord.astype(int) - from_pyav.astype(int)).max() == 0
    raw = decord.VideoReader(str(clips["mp4"]), width=shape[1], height=shape[0], num_threads=1)
    np.testing.assert_array_equal(from_decord, raw.get_batch(RANDOM_ACCESS).asnumpy())


def test_widths_decord_mis_pads_fall_back_to_pyav(clips: dict[str, Path]) -> None:
    # decord 0.6.0 fails on output widths such as 48 ("DECORDArrayCopyFromTo: The size must exactly match")
    with pytest.raises(decord.DECORDError):
        decord.VideoReader(str(clips["mp4"]), width=48, height=36).get_batch([0])
    with pytest.raises(VideoDecodeError, match="decord"):
        VideoReader(clips["mp4"], backend="decord").get_frames([0], size=(36, 48))
    auto = VideoReader(clips["mp4"]).get_frames(RANDOM_ACCESS, size=(36, 48))
    np.testing.assert_array_equal(
        auto, VideoReader(clips["mp4"], backend="pyav").get_frames(RANDOM_ACCESS, size=(36, 48))
    )
    assert _read_index(auto) == RANDOM_ACCESS


def test_reader_default_size_fps_and_read_video(clips: dict[str, Path]) -> None:
    reader = VideoReader(clips["mp4"], size=24)
    assert reader.fps == pytest.approx(10.0)
    assert reader.shape == (HEIGHT, WIDTH)
    frames = reader.get_frames([5, 6])
    assert frames.shape == (2, 24, 32, 3)
    np.testing.assert_array_equal(frames, read_video(clips["mp4"], [5, 6], size=24, backend="pyav"))
    assert reader.get_frames([]).shape == (0, 24, 32, 3)


def test_gif_is_read_through_pyav(clips: dict[str, Path]) -> None:
    reader = VideoReader(clips["gif"])  # auto: never decord for GIFs
    assert len(reader) == 20
    assert reader.used_backend == "pyav"
    assert reader.fps == pytest.approx(10.0)
    wanted = [19, 0, 7, 7, 12]
    frames = reader.get_frames(wanted)
    assert frames.shape == (5, HEIGHT, WIDTH, 3) and frames.dtype == np.uint8
    assert _read_index(frames) == wanted
    assert _read_index(reader.get_frames(wanted, size=32)) == wanted


def test_resolve_size() -> None:
    assert resolve_size(None, 240, 320) == (240, 320)
    assert resolve_size(224, 240, 320) == (224, 298)  # long side truncated, as torchvision's Resize
    assert resolve_size(224, 320, 240) == (298, 224)
    assert resolve_size((10, 20), 240, 320) == (10, 20)
    with pytest.raises(ValueError):
        resolve_size(0, 240, 320)


# ---- laziness and errors ---------------------------------------------------------------------------


def test_reader_does_not_open_the_file_until_first_use(tmp_path: Path) -> None:
    path = tmp_path / "later.mp4"
    reader = VideoReader(path)  # does not exist yet: constructing must not touch it
    copy = pickle.loads(pickle.dumps(reader))  # an unopened reader can travel to a worker
    write_video(path, _clip(16), fps=10)
    assert len(copy) == 16 and len(reader) == 16
    with pytest.raises(VideoDecodeError, match="nowhere.mp4: file not found"):
        len(VideoReader(tmp_path / "nowhere.mp4"))


@pytest.fixture(scope="module")
def broken(tmp_path_factory: pytest.TempPathFactory, clips: dict[str, Path]) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("broken")
    index_last = write_video(root / "faststart.mp4", _clip(), fps=10, container_options={"movflags": "faststart"})
    files = {
        "truncated": clips["mp4"].read_bytes()[: clips["mp4"].stat().st_size // 2],  # index (moov) at the end: lost
        "truncated_faststart": index_last.read_bytes()[: index_last.stat().st_size // 2],  # index kept, frames lost
        "zero_byte": b"",
        "garbage": bytes(np.random.default_rng(0).integers(0, 256, 4000, dtype=np.uint8)),
    }
    paths = {name: root / f"{name}.mp4" for name in files}
    for name, data in files.items():
        paths[name].write_bytes(data)
    paths["missing"] = root / "missing.mp4"
    return paths


@pytest.mark.parametrize("backend", ["auto", "decord", "pyav"])
@pytest.mark.parametrize("case", ["truncated", "truncated_faststart", "zero_byte", "garbage", "missing"])
def test_unreadable_files_raise_one_typed_error(broken: dict[str, Path], case: str, backend: str) -> None:
    reader = VideoReader(broken[case], backend=backend)  # type: ignore[arg-type]
    with pytest.raises(VideoDecodeError) as info:
        reader.get_frames(uniform_indices(len(reader), 4))
    error = info.value
    assert isinstance(error, SampleLoadError)
    assert error.path == str(broken[case]) and error.reason
    assert str(error).startswith(f"{broken[case]}: ") and "\n" not in str(error)


def test_out_of_range_index_raises(clips: dict[str, Path]) -> None:
    with pytest.raises(VideoDecodeError, match="frame 40 requested from a video of 40 frames"):
        VideoReader(clips["mp4"]).get_frames([0, 40])


def test_write_video_rejects_bad_input(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="even"):
        write_video(tmp_path / "odd.mp4", np.zeros((2, 15, 16, 3), np.uint8))
    with pytest.raises(ValueError, match="uint8"):
        write_video(tmp_path / "float.mp4", np.zeros((2, 16, 16, 3), np.float32))
    path = write_video(tmp_path / "tensor.mp4", torch.zeros(3, 16, 16, 3, dtype=torch.uint8), fps=5)
    assert len(VideoReader(path)) == 3


# ---- sampling --------------------------------------------------------------------------------------


def test_uniform_indices_clip4clip_linspace() -> None:
    np.testing.assert_array_equal(uniform_indices(10, 4), [0, 3, 6, 9])
    np.testing.assert_array_equal(uniform_indices(100, 5), [0, 24, 49, 74, 99])
    np.testing.assert_array_equal(uniform_indices(3, 5), [0, 0, 1, 1, 2])  # short video: repeats in order
    np.testing.assert_array_equal(uniform_indices(1, 3), [0, 0, 0])
    assert uniform_indices(10, 4).dtype == np.int64
    with pytest.raises(ValueError):
        uniform_indices(0, 4)


def test_tsn_indices_evaluation_takes_segment_centres() -> None:
    np.testing.assert_array_equal(tsn_indices(10, 4, train=False), [1, 3, 6, 8])
    np.testing.assert_array_equal(tsn_indices(8, 8, train=False), np.arange(8))
    np.testing.assert_array_equal(tsn_indices(3, 5, train=False), [0, 0, 1, 2, 2])  # short video


def test_tsn_indices_training_takes_a_random_frame_per_segment() -> None:
    segments = [(0, 2), (2, 5), (5, 7), (7, 10)]  # [floor(i*10/4), floor((i+1)*10/4))
    seen: list[set[int]] = [set() for _ in segments]
    for seed in range(200):
        indices = tsn_indices(10, 4, train=True, rng=np.random.default_rng(seed))
        for i, (start, end) in enumerate(segments):
            assert start <= indices[i] < end
            seen[i].add(int(indices[i]))
    assert seen == [set(range(s, e)) for s, e in segments]  # every frame of every segment is reachable
    for make in (random.Random, np.random.default_rng, lambda s: torch.Generator().manual_seed(s)):
        np.testing.assert_array_equal(tsn_indices(50, 8, True, make(3)), tsn_indices(50, 8, True, make(3)))
    np.testing.assert_array_equal(tsn_indices(3, 5, train=True, rng=random.Random(0)), [0, 0, 1, 1, 2])


def test_dense_indices_videomae() -> None:
    # 16 frames x stride 4 in a 100-frame video would not fit; use 4 x 5: span 16, room 84
    np.testing.assert_array_equal(dense_indices(100, 4, 5, train=False), [42, 47, 52, 57])
    starts = set()
    for seed in range(300):
        indices = dense_indices(100, 4, 5, train=True, rng=np.random.default_rng(seed))
        np.testing.assert_array_equal(np.diff(indices), [5, 5, 5])
        assert 0 <= indices[0] <= 84
        starts.add(int(indices[0]))
    assert min(starts) == 0 and max(starts) == 84 and len(starts) > 60
    np.testing.assert_array_equal(dense_indices(16, 4, 5, train=True, rng=random.Random(1)), [0, 5, 10, 15])
    # short videos: start at 0, then repeat the last frame (VideoMAE) or loop
    np.testing.assert_array_equal(dense_indices(10, 4, 5, train=True, rng=random.Random(1)), [0, 5, 9, 9])
    np.testing.assert_array_equal(dense_indices(10, 4, 5, train=False, pad="loop"), [0, 5, 0, 5])


def test_temporal_shift_indices_cmae_v() -> None:
    clips = temporal_shift_indices(100, 4, 2, max_shift=6, train=False)
    assert clips.shift == 3  # evaluation: the mean shift
    np.testing.assert_array_equal(clips.online, [45, 47, 49, 51])  # span 7 + 3, centred: start (100 - 10) // 2
    np.testing.assert_array_equal(clips.target, [48, 50, 52, 54])
    shifts = set()
    for seed in range(100):
        clips = temporal_shift_indices(60, 8, 2, max_shift=5, train=True, rng=np.random.default_rng(seed))
        np.testing.assert_array_equal(clips.target - clips.online, clips.shift)
        assert clips.online.min() >= 0 and clips.target.max() < 60
        shifts.add(clips.shift)
    assert shifts == set(range(6))
    fixed = temporal_shift_indices(60, 8, 2, max_shift=5, train=True, rng=random.Random(0), shift=2)
    assert fixed.shift == 2
    np.testing.assert_array_equal(fixed.target - fixed.online, 2)
    short = temporal_shift_indices(5, 4, 2, max_shift=5, train=True, rng=random.Random(0), shift=3)
    np.testing.assert_array_equal(short.online, [0, 2, 4, 4])
    np.testing.assert_array_equal(short.target, [3, 4, 4, 4])


def test_fps_indices() -> None:
    np.testing.assert_array_equal(fps_indices(100, 25.0, 1.0), [12, 37, 62, 87])  # centres of each second
    np.testing.assert_array_equal(fps_indices(100, 25.0, 1.0, max_samples=2), [12, 87])
    np.testing.assert_array_equal(fps_indices(10, 25.0, 1.0), [5])  # shorter than one interval: the middle
