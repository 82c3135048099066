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
from prunevid.video import (
    REFERENCE_MIN_PIXELS,
    FrameSamplingWarning,
    VideoClip,
    load_video,
    plan_frame_size,
    plan_frames,
)

FPS = 10.0
NUM_FRAMES = 40
HEIGHT, WIDTH = 96, 128
EVEN_8 = np.array([0, 6, 11, 17, 22, 28, 33, 39])  # round(linspace(0, 39, 8)): 2 fps over 4 s
SIZE = (84, 140)  # 96x128 snapped to multiples of 28 by smart_resize


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


def _check_clip(clip: VideoClip, expected: np.ndarray, shape: tuple[int, int] = SIZE) -> None:
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


def test_default_is_2fps_spread_over_the_whole_video(videos: dict[str, Path], backend: str) -> None:
    # 4 s at 2 fps: 8 frames from the first to the last, as qwen-vl-utils picks them.
    clip = load_video(videos["main"], backend=backend)
    _check_clip(clip, EVEN_8)
    assert clip.notes == ()
    assert clip.metadata == {"fps": FPS, "total_num_frames": NUM_FRAMES, "frames_indices": EVEN_8.tolist()}


def test_fps_sampling(videos: dict[str, Path], backend: str) -> None:
    clip = load_video(str(videos["main"]), fps=5.0, backend=backend)  # 20 frames over 40
    _check_clip(clip, np.round(np.linspace(0, NUM_FRAMES - 1, 20)).astype(np.int64))
    # Above the source rate: every frame once, and a note says so.
    with pytest.warns(FrameSamplingWarning, match="30 fps asks for 120 frames but the video has 40"):
        clip = load_video(videos["main"], fps=30.0, backend=backend)
    _check_clip(clip, np.arange(NUM_FRAMES))
    assert clip.notes and "using 40 frames" in clip.notes[0]


def test_num_frames_evenly_spaced_including_ends(videos: dict[str, Path], backend: str) -> None:
    _check_clip(load_video(videos["main"], num_frames=8, backend=backend), EVEN_8)
    # An odd request goes to the nearest even count, halves to even (7 -> 8, 5 -> 4), as qwen-vl-utils.
    _check_clip(load_video(videos["main"], num_frames=7, backend=backend), EVEN_8)
    assert len(load_video(videos["main"], num_frames=5, backend=backend).frame_indices) == 4
    # More than the video has: every frame, and the note names both numbers.
    with pytest.warns(FrameSamplingWarning, match="100 frames requested but the video has only 40"):
        clip = load_video(videos["main"], num_frames=100, backend=backend)
    _check_clip(clip, np.arange(NUM_FRAMES))


def test_frame_caps(videos: dict[str, Path]) -> None:
    with pytest.warns(FrameSamplingWarning, match="capped at max_frames=6: using 6 frames"):
        clip = load_video(videos["main"], num_frames=20, max_frames=6)
    assert len(clip.frame_indices) == 6 and clip.frame_indices[-1] == NUM_FRAMES - 1
    with pytest.warns(FrameSamplingWarning, match="capped at max_frames=6"):
        assert len(load_video(videos["main"], max_frames=6).frame_indices) == 6  # 2 fps would give 8
    # A slow rate is raised to min_frames (4) frames.
    with pytest.warns(FrameSamplingWarning, match="raised to min_frames=4: using 4 frames"):
        clip = load_video(videos["main"], fps=0.25)
    _check_clip(clip, [0, 13, 26, 39])


def test_window(videos: dict[str, Path], backend: str) -> None:
    # [1.05 s, 2.5 s] at 10 fps: frames ceil(10.5) = 11 .. floor(25) = 25.
    clip = load_video(videos["main"], start=1.05, end=2.5, num_frames=4, backend=backend)
    _check_clip(clip, [11, 16, 20, 25])
    with pytest.raises(ValueError, match="fewer than 2 frames between 5.0 s and 6.0 s"):
        load_video(videos["main"], start=5.0, end=6.0)


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
    _check_clip(load_video(path, backend=backend), EVEN_8)


def test_pixel_budget(videos: dict[str, Path], backend: str) -> None:
    # 96x128 over 5000 pixels: transformers' smart_resize scales by sqrt(12288 / 5000) and floors to 28.
    _check_clip(load_video(videos["main"], max_pixels=5000, backend=backend), EVEN_8, shape=(56, 56))
    # A small frame is enlarged only up to min_pixels (qwen-vl-utils' minimum on request).
    clip = load_video(videos["main"], min_pixels=REFERENCE_MIN_PIXELS, backend=backend)
    _check_clip(clip, EVEN_8, shape=(280, 392))


def test_short_video_gives_what_it_has(videos: dict[str, Path], backend: str) -> None:
    # 3 frames at 10 fps: 2 fps gives one frame, min_frames asks 4, the video has 3: 2 frames (even).
    with pytest.warns(FrameSamplingWarning, match="using 2 frames"):
        clip = load_video(videos["three"], backend=backend)
    np.testing.assert_array_equal(clip.frame_indices, [0, 2])
    np.testing.assert_array_equal(_decoded_indices(clip.frames), [0, 2])
    assert clip.total_num_frames == 3


def test_frame_folder(tmp_path: Path) -> None:
    """MVBench's TVQA layout: 00001.jpg, ... at 3 fps; names sort as numbers; a window selects frames."""
    cv2 = pytest.importorskip("cv2")
    folder = tmp_path / "clip"
    folder.mkdir()
    frames = _striped_frames(30)
    for i, frame in enumerate(frames):
        # PNG keeps the stripes exact; unpadded names check the numeric sort (2 before 10).
        cv2.imwrite(str(folder / f"{i + 1}.png"), cv2.cvtColor(frame, cv2.COLOR_RGB2BGR))
    (folder / "notes.txt").write_text("not a frame")
    clip = load_video(folder, frame_rate=3.0)  # 10 s at 2 fps: 20 frames of 30
    expected = np.round(np.linspace(0, 29, 20)).astype(np.int64)
    np.testing.assert_array_equal(clip.frame_indices, expected)
    np.testing.assert_array_equal(_decoded_indices(clip.frames), expected)
    assert clip.source_fps == 3.0 and clip.total_num_frames == 30 and clip.frames.shape[1:3] == SIZE
    window = load_video(folder, frame_rate=3.0, start=2.0, end=5.0, num_frames=4)  # frames 6 .. 15
    np.testing.assert_array_equal(_decoded_indices(window.frames), [6, 9, 12, 15])
    with pytest.raises(ValueError, match="give its frame rate"):
        load_video(folder)
    empty = tmp_path / "empty"
    empty.mkdir()
    with pytest.raises(ValueError, match="no frame images"):
        load_video(empty, frame_rate=3.0)


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
    _check_clip(load_video(videos["main"], backend=backend), EVEN_8)


def test_backend_choice(videos: dict[str, Path], monkeypatch: pytest.MonkeyPatch) -> None:
    pytest.importorskip("av")

    def no_cv2():
        raise ImportError("cv2 hidden by the test")

    monkeypatch.setattr(video_module, "_import_cv2", no_cv2)
    _check_clip(load_video(videos["main"], max_pixels=5000), EVEN_8, shape=(56, 56))  # PyAV decodes
    with pytest.raises(ImportError, match="opencv"):
        load_video(videos["main"], backend="opencv")


# ---- bad input ---------------------------------------------------------------------------------------


def test_missing_file(tmp_path: Path) -> None:
    with pytest.raises(FileNotFoundError, match="nope.mp4"):
        load_video(tmp_path / "nope.mp4")


@pytest.mark.parametrize("name", ["empty", "random", "text"])
def test_undecodable_file_gets_only_the_clean_error(
    videos: dict[str, Path], backend: str, name: str, capfd: pytest.CaptureFixture
) -> None:
    with pytest.raises(ValueError, match=rf"could not decode .*{name}\.mp4"):
        load_video(videos[name], backend=backend)
    # No FFmpeg ("moov atom not found") or OpenCV ("[ WARN:0@...]") lines on the real stderr.
    assert capfd.readouterr().err == ""


def test_too_few_frames(videos: dict[str, Path], backend: str) -> None:
    with pytest.raises(ValueError, match=r"has 1 decodable frame.*at least 2"):
        load_video(videos["one"], backend=backend)


@pytest.mark.parametrize(
    ("kwargs", "match"),
    [
        ({"fps": 2.0, "num_frames": 8}, "fps or num_frames, not both"),
        ({"fps": 0.0}, "fps"),
        ({"fps": -1.0}, "fps"),
        ({"fps": math.nan}, "fps"),
        ({"num_frames": 0}, "num_frames"),
        ({"num_frames": 2.5}, "num_frames"),
        ({"num_frames": 1}, "num_frames must be an integer >= 2"),
        ({"min_frames": 0}, "min_frames"),
        ({"max_frames": 1}, "max_frames"),
        ({"min_frames": 10, "max_frames": 8}, "min_frames=10 exceeds max_frames=8"),
        ({"max_pixels": 28 * 28 - 1}, "max_pixels"),
        ({"max_pixels": 0}, "max_pixels"),
        ({"backend": "decord"}, "backend"),
    ],
)
def test_bad_arguments(videos: dict[str, Path], kwargs: dict, match: str) -> None:
    with pytest.raises(ValueError, match=match):
        load_video(videos["main"], **kwargs)


# ---- the reference pipeline's frames --------------------------------------------------------------------

# (duration s, source fps, height, width, request) -> (frames, height, width, first indices). The worked
# examples of qwen-vl-utils 0.0.14 (fetch_video run on real files; shared/spec/ecosystem-reference.md §2)
# and the transformers issue's 480x640 frame under a 448x448 budget.
REFERENCE_CASES = [
    ((10, 30.0, 360, 640, {}), (20, 364, 644, [0, 16, 31, 47])),
    ((60, 30.0, 720, 1280, {}), (120, 560, 1008, [0, 15, 30, 45])),
    ((3600, 25.0, 1080, 1920, {}), (768, 336, 644, [0, 117, 235, 352])),
    ((10, 30.0, 360, 640, {"num_frames": 32}), (32, 364, 644, [0, 10, 19, 29])),
    ((8, 2.0, 480, 640, {"max_pixels": 448 * 448}), (16, 364, 504, [0, 1, 2, 3])),
]


@pytest.mark.parametrize(("case", "expected"), REFERENCE_CASES)
def test_frames_match_the_reference_worked_examples(case: tuple, expected: tuple) -> None:
    seconds, source_fps, height, width, request = case
    total = round(seconds * source_fps)
    max_pixels = request.pop("max_pixels", None) if request else None
    plan = plan_frames(total, source_fps, **request)
    size, _ = plan_frame_size(height, width, len(plan.indices), max_pixels=max_pixels)
    count, expected_h, expected_w, first = expected
    assert len(plan.indices) == count and plan.indices[: len(first)].tolist() == first
    assert plan.indices[-1] == total - 1
    assert size == (expected_h, expected_w)


@settings(max_examples=300, deadline=None)
@given(
    seconds=st.floats(0.2, 4000.0),
    source_fps=st.sampled_from([1.0, 3.0, 8.0, 23.976, 25.0, 29.97, 30.0, 60.0]),
    fps=st.one_of(st.none(), st.floats(0.05, 8.0)),
    num_frames=st.integers(2, 900),
    height=st.integers(32, 2160),
    width=st.integers(32, 3840),
    window=st.one_of(st.none(), st.tuples(st.floats(0.0, 0.5), st.floats(0.5, 1.0))),
)
def test_frames_equal_qwen_vl_utils(
    seconds: float,
    source_fps: float,
    fps: float | None,
    num_frames: int,
    height: int,
    width: int,
    window: tuple[float, float] | None,
) -> None:
    """Indices and sizes equal qwen-vl-utils' own functions for any (duration, fps, resolution, window)."""
    vision = pytest.importorskip("qwen_vl_utils.vision_process")
    import torch

    total = max(2, round(seconds * source_fps))
    element: dict = {"nframes": num_frames} if fps is None else {"fps": fps}
    if window is not None:
        element.update(video_start=window[0] * seconds, video_end=window[1] * seconds)
    try:
        first, last, available = vision.calculate_video_frame_range(element, total, source_fps)
        count = vision.smart_nframes(element, available, source_fps)
    except ValueError:
        return  # a window or request the reference refuses: ours must refuse or cap, not crash
    except AssertionError:
        return
    reference = torch.linspace(first, last, count).round().long().numpy()
    kwargs = {"num_frames": num_frames} if fps is None else {"fps": fps}
    if window is not None:
        kwargs.update(start=window[0] * seconds, end=window[1] * seconds)
    if fps is None and num_frames > MAX_FRAMES_REFERENCE:
        kwargs["max_frames"] = 10**6  # qwen-vl-utils does not cap an explicit frame count
    ours = plan_frames(total, source_fps, **kwargs)
    np.testing.assert_array_equal(ours.indices, reference)
    # Frame size: qwen-vl-utils' budget for `count` frames (fetch_video), with its own smart_resize.
    min_pixels = REFERENCE_MIN_PIXELS
    total_pixels = 128000 * 28 * 28 * 0.9
    max_pixels = max(min(768 * 28 * 28, total_pixels / count * 2), int(min_pixels * 1.05))
    if max(height, width) / min(height, width) > 200:
        return
    expected = vision.smart_resize(height, width, 28, min_pixels=min_pixels, max_pixels=max_pixels)
    size, _ = plan_frame_size(height, width, count, min_pixels=min_pixels)
    assert size == tuple(expected)


MAX_FRAMES_REFERENCE = 768


def test_load_video_equals_qwen_vl_utils_fetch_video(videos: dict[str, Path]) -> None:
    """End to end on a real file: the frames qwen-vl-utils' fetch_video gives (its torchcodec reader)."""
    vision = pytest.importorskip("qwen_vl_utils.vision_process")
    pytest.importorskip("torchcodec")
    try:
        from torchcodec.decoders import VideoDecoder

        VideoDecoder(str(videos["main"]))
    except Exception as error:  # torchcodec without FFmpeg's libraries cannot open a video
        pytest.skip(f"torchcodec cannot decode here: {error}")
    for request in ({}, {"nframes": 6}, {"fps": 5.0}):
        element = {"video": str(videos["main"]), **request}
        reference, _ = vision.fetch_video(element, return_video_sample_fps=True)
        kwargs = {"num_frames": request["nframes"]} if "nframes" in request else {"fps": request.get("fps")}
        ours = load_video(videos["main"], min_pixels=REFERENCE_MIN_PIXELS, **kwargs)
        assert tuple(reference.shape) == (len(ours.frame_indices), 3, *ours.frames.shape[1:3])
        # Same source frames: the stripes of each frame name its index.
        frames = reference.permute(0, 2, 3, 1).clamp(0, 255).round().byte().numpy()
        np.testing.assert_array_equal(_decoded_indices(frames), ours.frame_indices)
        difference = np.abs(frames.astype(np.int16) - ours.frames.astype(np.int16))
        assert difference.mean() <= 2.0  # different decoders, same resize
