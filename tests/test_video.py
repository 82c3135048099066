"""Tests for prunevid.video: decoding with OpenCV and PyAV, frame sampling, pixel budget, bad input.

Test videos show the frame index in binary as vertical black/white stripes (stripe ``b`` white when bit
``b`` of the index is set), so a decoded frame tells which source frame it is; black and white survive
YUV 4:2:0, lossy coding and resizing far from the 128 threshold.
"""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from prunevid import video as video_module
from prunevid.video import VideoClip, fit_to_pixel_budget, load_video, sample_frame_indices

FPS = 10.0
NUM_FRAMES = 40
HEIGHT, WIDTH = 96, 128
EVERY_FIFTH = np.arange(0, NUM_FRAMES, 5)  # 2 fps from 10 fps
EVEN_8 = np.array([0, 6, 11, 17, 22, 28, 33, 39])  # round(linspace(0, 39, 8)), halves up


STRIPES = 8  # bits of the frame index drawn per frame


def _striped_frames(count: int, height: int = HEIGHT, width: int = WIDTH) -> np.ndarray:
    """``uint8 [count, height, width, 3]`` RGB frames; frame ``i`` draws ``i`` in binary as stripes."""
    bits = (np.arange(count)[:, None] >> np.arange(STRIPES)[None, :]) & 1  # [count, STRIPES]
    columns = np.repeat(bits, width // STRIPES, axis=1).astype(np.uint8) * 255  # [count, width]
    return np.ascontiguousarray(np.broadcast_to(columns[:, None, :, None], (count, height, width, 3)))


def _decoded_indices(frames: np.ndarray) -> np.ndarray:
    """``int64 [T]`` source index of each decoded frame ``uint8 [T, H, W, 3]``, read from its stripes."""
    width = frames.shape[2]
    centres = ((np.arange(STRIPES) + 0.5) * width / STRIPES).astype(int)
    bits = frames[:, :, centres, :].mean(axis=(1, 3)) > 128  # [T, STRIPES]
    return (bits.astype(np.int64) << np.arange(STRIPES)).sum(axis=1)


def _write_cv2(path: Path, frames: np.ndarray, fps: float) -> Path:
    cv2 = pytest.importorskip("cv2")
    height, width = frames.shape[1:3]
    writer = cv2.VideoWriter(str(path), cv2.VideoWriter_fourcc(*"mp4v"), fps, (width, height))
    assert writer.isOpened()
    for frame in frames:
        writer.write(cv2.cvtColor(frame, cv2.COLOR_RGB2BGR))
    writer.release()
    return path


def _write_pyav(path: Path, frames: np.ndarray, fps: float) -> Path:
    av = pytest.importorskip("av")
    height, width = frames.shape[1:3]
    with av.open(str(path), "w") as container:
        stream = container.add_stream("mpeg4", rate=int(fps))
        stream.width, stream.height, stream.pix_fmt = width, height, "yuv420p"
        for frame in frames:
            container.mux(stream.encode(av.VideoFrame.from_ndarray(frame, format="rgb24")))
        container.mux(stream.encode())
    return path


def _write_any(path: Path, frames: np.ndarray, fps: float) -> Path:
    """Write with OpenCV when it is installed, else PyAV (so backend tests run with either alone)."""
    try:
        import cv2  # noqa: F401
    except ImportError:
        return _write_pyav(path, frames, fps)
    return _write_cv2(path, frames, fps)


@pytest.fixture(scope="module")
def videos(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("videos")
    bad = {
        "empty": b"",
        "random": np.random.default_rng(0).integers(0, 256, 4096, dtype=np.uint8).tobytes(),
        "text": b"this is a text file, not a video\n" * 20,
    }
    paths = {name: root / f"{name}.mp4" for name in bad}
    for name, data in bad.items():
        paths[name].write_bytes(data)
    paths["main"] = _write_any(root / "main.mp4", _striped_frames(NUM_FRAMES), FPS)
    paths["one"] = _write_any(root / "one.mp4", _striped_frames(1), FPS)
    paths["three"] = _write_any(root / "three.mp4", _striped_frames(3), FPS)
    return paths


@pytest.fixture(params=["opencv", "pyav"])
def backend(request: pytest.FixtureRequest) -> str:
    pytest.importorskip("cv2" if request.param == "opencv" else "av")
    return request.param


def _check_clip(clip: VideoClip, expected: np.ndarray, shape: tuple[int, int] = (HEIGHT, WIDTH)) -> None:
    assert isinstance(clip, VideoClip)
    assert clip.frames.dtype == np.uint8 and clip.frames.flags["C_CONTIGUOUS"]
    assert clip.frames.shape == (len(expected), *shape, 3)
    assert clip.frame_indices.dtype == np.int64
    np.testing.assert_array_equal(clip.frame_indices, expected)
    # The pixels are those of the claimed source frames, not just the right count.
    np.testing.assert_array_equal(_decoded_indices(clip.frames), expected)
    assert clip.source_fps == pytest.approx(FPS)
    assert clip.total_num_frames == NUM_FRAMES


# ---- decoding and sampling ---------------------------------------------------------------------------


def test_default_samples_2fps_every_fifth_frame(videos: dict[str, Path], backend: str) -> None:
    clip = load_video(videos["main"], backend=backend)
    _check_clip(clip, EVERY_FIFTH)
    assert len(clip.frame_indices) % 2 == 0
    assert clip.sampled_fps == pytest.approx(2.0)
    assert clip.metadata == {
        "fps": FPS,
        "total_num_frames": NUM_FRAMES,
        "frames_indices": EVERY_FIFTH.tolist(),
    }


def test_fps_sampling(videos: dict[str, Path], backend: str) -> None:
    # 5 fps from 10 fps: every other frame, 20 of them.
    clip = load_video(str(videos["main"]), fps=5.0, backend=backend)
    _check_clip(clip, np.arange(0, NUM_FRAMES, 2))
    assert clip.sampled_fps == pytest.approx(5.0)
    # At or above the source rate: every frame, once.
    clip = load_video(videos["main"], fps=30.0, backend=backend)
    _check_clip(clip, np.arange(NUM_FRAMES))
    assert clip.sampled_fps == pytest.approx(FPS)


def test_num_frames_evenly_spaced_including_ends(videos: dict[str, Path], backend: str) -> None:
    clip = load_video(videos["main"], num_frames=8, backend=backend)
    expected = EVEN_8
    _check_clip(clip, expected)
    assert clip.sampled_fps == pytest.approx(FPS * 7 / 39)
    # An odd request is rounded up to an even count (Qwen2.5-VL would pad with a copy of the last frame).
    clip = load_video(videos["main"], num_frames=7, backend=backend)
    _check_clip(clip, expected)
    # More than the video has: every frame.
    clip = load_video(videos["main"], num_frames=100, backend=backend)
    _check_clip(clip, np.arange(NUM_FRAMES))


def test_backends_agree(videos: dict[str, Path]) -> None:
    pytest.importorskip("cv2")
    pytest.importorskip("av")
    for kwargs in ({}, {"num_frames": 6}, {"max_pixels": 5000}):
        a = load_video(videos["main"], backend="opencv", **kwargs)
        b = load_video(videos["main"], backend="pyav", **kwargs)
        np.testing.assert_array_equal(a.frame_indices, b.frame_indices)
        assert (a.source_fps, a.total_num_frames) == (b.source_fps, b.total_num_frames)
        assert a.frames.shape == b.frames.shape
        assert np.abs(a.frames.astype(np.int16) - b.frames.astype(np.int16)).mean() <= 1.0


def test_video_written_by_pyav(tmp_path: Path, backend: str) -> None:
    path = _write_pyav(tmp_path / "pyav.mp4", _striped_frames(NUM_FRAMES), FPS)
    _check_clip(load_video(path, backend=backend), EVERY_FIFTH)


def test_pixel_budget(videos: dict[str, Path], backend: str) -> None:
    clip = load_video(videos["main"], max_pixels=5000, backend=backend)
    # 96x128 scaled by sqrt(5000 / 12288) is 61.2x81.6 -> nearest multiples of 28.
    _check_clip(clip, EVERY_FIFTH, shape=(56, 84))
    # A budget larger than the frame only snaps the sides to multiples of 28 (nearest).
    clip = load_video(videos["main"], max_pixels=10**6, backend=backend)
    _check_clip(clip, EVERY_FIFTH, shape=(84, 140))


def test_short_video_falls_back_to_min_frames(videos: dict[str, Path], backend: str) -> None:
    # 3 frames at 10 fps is 0.3 s: 2 fps gives one frame, so min_frames=2 are spread over the video.
    clip = load_video(videos["three"], backend=backend)
    np.testing.assert_array_equal(clip.frame_indices, [0, 2])
    np.testing.assert_array_equal(_decoded_indices(clip.frames), [0, 2])
    assert clip.total_num_frames == 3


def test_one_frame_video_allowed_with_min_frames_1(videos: dict[str, Path], backend: str) -> None:
    clip = load_video(videos["one"], min_frames=1, backend=backend)
    assert clip.frames.shape == (1, HEIGHT, WIDTH, 3) and clip.total_num_frames == 1


class _Spy:
    """Wraps a backend stream: can misreport the container's frame count, counts frames converted."""

    def __init__(self, stream, claimed: int | None, log: dict[str, int]) -> None:
        self._stream, self._log = stream, log
        self.fps = stream.fps
        self.claimed_frames = stream.claimed_frames if claimed is None else claimed
        log["opened"] += 1

    def frames(self):
        for retrieve in self._stream.frames():
            yield self._counted(retrieve)

    def _counted(self, retrieve):
        def call() -> np.ndarray:
            self._log["converted"] += 1
            return retrieve()

        return call

    def close(self) -> None:
        self._stream.close()


def _spy_on_streams(monkeypatch: pytest.MonkeyPatch, claimed: int | None) -> dict[str, int]:
    log = {"opened": 0, "converted": 0}
    real_open = video_module._open_stream
    monkeypatch.setattr(video_module, "_open_stream", lambda p, b: _Spy(real_open(p, b), claimed, log))
    return log


def test_only_sampled_frames_are_converted(
    videos: dict[str, Path], backend: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    log = _spy_on_streams(monkeypatch, claimed=None)
    load_video(videos["main"], backend=backend)
    assert log == {"opened": 1, "converted": 8}
    log.update(opened=0, converted=0)
    load_video(videos["main"], num_frames=6, backend=backend)
    assert log == {"opened": 1, "converted": 6}


@pytest.mark.parametrize("claimed", [0, 7, 20, 41, 100])
def test_wrong_container_frame_count(
    videos: dict[str, Path], backend: str, monkeypatch: pytest.MonkeyPatch, claimed: int
) -> None:
    # The count that decodes wins over the container's claim, whichever way the claim is wrong.
    _spy_on_streams(monkeypatch, claimed=claimed)
    _check_clip(load_video(videos["main"], num_frames=8, backend=backend), EVEN_8)
    _check_clip(load_video(videos["main"], backend=backend), EVERY_FIFTH)


def test_backend_choice(videos: dict[str, Path], monkeypatch: pytest.MonkeyPatch) -> None:
    pytest.importorskip("av")

    def no_cv2():
        raise ImportError("cv2 hidden by the test")

    monkeypatch.setattr(video_module, "_import_cv2", no_cv2)
    # Without OpenCV the default is PyAV, and resizing falls back to torch.
    _check_clip(load_video(videos["main"], max_pixels=5000), EVERY_FIFTH, shape=(56, 84))
    with pytest.raises(ImportError, match="opencv"):
        load_video(videos["main"], backend="opencv")


# ---- bad input ---------------------------------------------------------------------------------------


def test_missing_file(tmp_path: Path) -> None:
    path = tmp_path / "nope.mp4"
    with pytest.raises(FileNotFoundError, match="nope.mp4"):
        load_video(path)


def test_directory(tmp_path: Path) -> None:
    with pytest.raises(IsADirectoryError, match="directory"):
        load_video(tmp_path)


@pytest.mark.parametrize("name", ["empty", "random", "text"])
def test_undecodable_file(videos: dict[str, Path], backend: str, name: str) -> None:
    with pytest.raises(ValueError, match=rf"could not decode .*{name}\.mp4"):
        load_video(videos[name], backend=backend)


def test_too_few_frames(videos: dict[str, Path], backend: str) -> None:
    with pytest.raises(ValueError, match=r"has 1 decodable frame.*min_frames=2"):
        load_video(videos["one"], backend=backend)
    with pytest.raises(ValueError, match=r"has 3 decodable frame.*min_frames=4"):
        load_video(videos["three"], min_frames=4, backend=backend)


@pytest.mark.parametrize(
    ("kwargs", "match"),
    [
        ({"fps": 2.0, "num_frames": 8}, "fps or num_frames, not both"),
        ({"fps": 0.0}, "fps"),
        ({"fps": -1.0}, "fps"),
        ({"fps": math.nan}, "fps"),
        ({"num_frames": 0}, "num_frames"),
        ({"num_frames": 2.5}, "num_frames"),
        ({"num_frames": 1}, "num_frames=1 is less than min_frames=2"),
        ({"min_frames": 0}, "min_frames"),
        ({"max_pixels": 28 * 28 - 1}, "max_pixels"),
        ({"max_pixels": 0}, "max_pixels"),
        ({"backend": "decord"}, "backend"),
    ],
)
def test_bad_arguments(videos: dict[str, Path], kwargs: dict, match: str) -> None:
    with pytest.raises(ValueError, match=match):
        load_video(videos["main"], **kwargs)


# ---- pure helpers --------------------------------------------------------------------------------------


def test_sample_frame_indices_examples() -> None:
    np.testing.assert_array_equal(sample_frame_indices(40, 10.0), np.arange(0, 40, 5))
    # 41 frames give 9 on the 2-fps grid (0..40); the odd last one is dropped to keep the rate exact.
    np.testing.assert_array_equal(sample_frame_indices(41, 10.0), np.arange(0, 40, 5))
    # 29.97 fps at 2 fps: every 14.985 frames, nearest frame.
    np.testing.assert_array_equal(sample_frame_indices(60, 29.97, fps=2.0), [0, 15, 30, 45])
    np.testing.assert_array_equal(sample_frame_indices(5, 10.0, num_frames=5), [0, 1, 3, 4])
    np.testing.assert_array_equal(sample_frame_indices(5, 10.0, num_frames=3), [0, 1, 3, 4])  # 3 -> 4
    np.testing.assert_array_equal(sample_frame_indices(1, 10.0, min_frames=1), [0])
    with pytest.raises(ValueError, match="source_fps"):
        sample_frame_indices(10, 0.0)


@settings(max_examples=300, deadline=None)
@given(
    total=st.integers(1, 600),
    source_fps=st.floats(1.0, 120.0),
    by_rate=st.booleans(),
    fps=st.floats(0.05, 200.0),
    num_frames=st.integers(1, 700),
    min_frames=st.integers(1, 4),
)
def test_sample_frame_indices_properties(
    total: int, source_fps: float, by_rate: bool, fps: float, num_frames: int, min_frames: int
) -> None:
    kwargs = {"fps": fps} if by_rate else {"num_frames": num_frames}
    if total < min_frames or (not by_rate and num_frames < min_frames):
        with pytest.raises(ValueError):
            sample_frame_indices(total, source_fps, min_frames=min_frames, **kwargs)
        return
    indices = sample_frame_indices(total, source_fps, min_frames=min_frames, **kwargs)
    assert indices.dtype == np.int64
    assert indices[0] == 0 and indices[-1] <= total - 1
    assert np.all(np.diff(indices) >= 1)
    assert len(indices) >= min_frames
    # Even unless the video has exactly min_frames frames and that is odd.
    if not (total == min_frames and total % 2):
        assert len(indices) % 2 == 0
    if not by_rate:
        # Evenly spaced over the whole video: last frame included once there are >= 2 frames.
        assert len(indices) == 1 or indices[-1] == total - 1
    elif len(indices) >= 2 and fps < source_fps and len(indices) > min_frames + 1:
        # By rate (no min_frames fallback): consecutive picks one sampling interval apart, +-1 frame.
        assert np.all(np.abs(np.diff(indices) - source_fps / fps) <= 1.0 + 1e-6)


@settings(max_examples=200, deadline=None)
@given(total=st.integers(1, 400), step=st.floats(0.1, 50.0))
def test_streaming_rate_grid_matches_batch(total: int, step: float) -> None:
    # The first decode pass decides frame by frame with no known end; it must pick exactly the batch plan.
    streamed = [i for i in range(total) if video_module._on_rate_grid(i, step)]
    assert streamed == video_module._rate_indices(total, step).tolist()


def test_fit_to_pixel_budget_examples() -> None:
    assert fit_to_pixel_budget(96, 128, 5000) == (56, 84)
    assert fit_to_pixel_budget(96, 128, 10**6) == (84, 140)  # never scaled up, only snapped
    # 1/3 scale is 360x640; nearest is 364x644 (over budget), and h overshoots its target more.
    assert fit_to_pixel_budget(1080, 1920, 360 * 640) == (336, 644)
    assert fit_to_pixel_budget(10, 10, 10**6, min_pixels=56 * 56) == (56, 56)  # tiny frames grow
    assert fit_to_pixel_budget(1, 8192, 28 * 28 * 4) == (28, 112)  # extreme aspect ratio
    with pytest.raises(ValueError, match="max_pixels"):
        fit_to_pixel_budget(96, 128, 28 * 28 - 1)
    with pytest.raises(ValueError, match="min_pixels"):
        fit_to_pixel_budget(96, 128, 28 * 28 * 2, min_pixels=28 * 28 * 3)


@settings(max_examples=500, deadline=None)
@given(
    height=st.integers(1, 8192),
    width=st.integers(1, 8192),
    max_pixels=st.integers(28 * 28, 8192 * 8192),
    factor=st.sampled_from([14, 28, 32]),
)
def test_fit_to_pixel_budget_properties(height: int, width: int, max_pixels: int, factor: int) -> None:
    max_pixels = max(max_pixels, factor * factor)
    h, w = fit_to_pixel_budget(height, width, max_pixels, factor=factor, min_pixels=factor * factor)
    assert h % factor == 0 and w % factor == 0
    assert h >= factor and w >= factor
    assert h * w <= max_pixels
    nearest_h = max(factor, math.floor(height / factor + 0.5) * factor)
    nearest_w = max(factor, math.floor(width / factor + 0.5) * factor)
    if nearest_h * nearest_w <= max_pixels and height * width >= factor * factor:
        assert (h, w) == (nearest_h, nearest_w)  # within budget: nearest multiples, no scaling
    # Aspect ratio: each side is within [-1, +0.5] factor of its exact scaled target, so once both targets
    # span >= 4 factors the ratio is kept within a factor 1.5.
    scale = min(1.0, math.sqrt(max_pixels / (height * width)))
    if min(height, width) * scale >= 4 * factor:
        assert abs(math.log((h / w) / (height / width))) <= math.log(1.5) + 1e-9
        assert h * w >= max_pixels / 2 or scale == 1.0  # and the budget is not wasted
