"""Video decoding and frame sampling with the rules of the Qwen2.5-VL reference pipeline (qwen-vl-utils).

``load_video`` decodes a video file (OpenCV or PyAV) or a folder of frame images into a ``VideoClip``:
RGB ``uint8 [T, H, W, 3]`` frames plus the source frame rate, the source frame count and the index of each
sampled frame, which is what transformers' Qwen2.5-VL processor needs as ``video_metadata``.

Frame count and indices (``plan_frames``), as qwen-vl-utils 0.0.14 ``smart_nframes`` / ``fetch_video``, with
``N`` the frames that actually decode inside the window:

* by rate (``fps=r``, default 2.0): ``n = N / source_fps * r`` clamped to ``[min_frames, max_frames]``
  (4 and 768 by default, each rounded to a multiple of 2 inwards) and to ``N``, then rounded down to even;
* by count (``num_frames=n``): ``n`` rounded to the nearest even number (halves to even), then capped at
  ``max_frames`` and at ``N`` (rounded down to even);
* indices ``round(linspace(first, last, n))`` in float32, halves to even (``torch.linspace(...).round()``):
  the first and the last frame of the window are always taken;
* a window ``[start, end]`` in seconds covers source frames ``ceil(start * fps) .. floor(end * fps)``.

transformers' own sampling (``Qwen2VLVideoProcessor`` with ``do_sample_frames=True``) gives the same count
but other indices (``arange(0, N, N / n)`` truncated: the last frame is never taken), so it is not used; the
frames prunevid passes to the processor are already sampled and sized (``do_sample_frames=False``).

A cap that changes what was asked for (more frames than the video has, the 768-frame cap, the 4-frame
floor, the total pixel budget) is recorded in ``VideoClip.notes`` and issued as a
:class:`FrameSamplingWarning`. Fewer than 2 frames is an error (Qwen2.5-VL pairs frames).

Frame size (``plan_frame_size``): transformers' own ``smart_resize`` (the function the Qwen2.5-VL
processor resizes with) with qwen-vl-utils' video budgets: per frame at most ``max_pixels`` (default and
ceiling ``768 * 28 * 28``), and all frames together at most ``total_pixels`` (``128000 * 28 * 28 * 0.9``,
counted as in qwen-vl-utils: ``max_pixels <= total_pixels / n * 2``). One deliberate difference:
``min_pixels`` defaults to the processor's ``56 * 56`` rather than qwen-vl-utils' ``128 * 28 * 28``, so a
small video is not enlarged (the bundled synthetic model sees its 224x224 clips as trained); pass
``min_pixels=REFERENCE_MIN_PIXELS`` for qwen-vl-utils' sizes exactly. Frames are resized with bicubic
interpolation and antialiasing, as qwen-vl-utils does.

The frame count a container reports is only trusted as a first guess: frames are counted as they decode,
and if the count differs from the claim the plan is recomputed from what decoded.
"""

from __future__ import annotations

import contextlib
import math
import numbers
import os
import re
import sys
import tempfile
import warnings
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from types import ModuleType

import numpy as np

DEFAULT_FPS = 2.0
# Qwen2.5-VL: 14-pixel patches merged 2x2, so frame sides must be multiples of 28.
PATCH_FACTOR = 28
FRAME_FACTOR = 2  # frames per temporal patch
MIN_FRAMES = 4
MAX_FRAMES = 768
MIN_PIXELS = 56 * 56  # transformers' Qwen2.5-VL processor minimum: no real video is enlarged
REFERENCE_MIN_PIXELS = 128 * PATCH_FACTOR * PATCH_FACTOR  # qwen-vl-utils' per-frame minimum for video
MAX_PIXELS = 768 * PATCH_FACTOR * PATCH_FACTOR  # qwen-vl-utils' per-frame maximum for video
TOTAL_PIXELS = 128000 * PATCH_FACTOR * PATCH_FACTOR * 0.9  # qwen-vl-utils' budget over all frames
# prunevid's default per-frame budget for `ask`, the CLI and `eval`: 256 LLM tokens a frame.
DEFAULT_MAX_PIXELS = 448 * 448
BACKENDS = ("opencv", "pyav")
IMAGE_SUFFIXES = (".jpg", ".jpeg", ".png", ".bmp", ".webp")


class FrameSamplingWarning(UserWarning):
    """A cap or floor changed the frames that were asked for (see ``VideoClip.notes``)."""


@dataclass(frozen=True)
class VideoClip:
    """Frames sampled from a video, and where they came from.

    Attributes:
        frames: ``uint8 [T, H, W, 3]`` RGB frames, in time order.
        source_fps: frame rate of the source video (frames per second).
        total_num_frames: number of frames in the source video.
        frame_indices: ``int64 [T]`` index of each sampled frame in the source video, increasing.
        notes: what a cap or floor changed relative to the request (empty when nothing did).
    """

    frames: np.ndarray
    source_fps: float
    total_num_frames: int
    frame_indices: np.ndarray
    notes: tuple[str, ...] = ()

    @property
    def sampled_fps(self) -> float:
        """Frames per second of video time between consecutive sampled frames."""
        if len(self.frame_indices) < 2:
            return float(self.source_fps)
        span = float(self.frame_indices[-1] - self.frame_indices[0])
        if span <= 0:
            return float(self.source_fps)
        return float(self.source_fps) * (len(self.frame_indices) - 1) / span

    @property
    def metadata(self) -> dict:
        """The ``video_metadata`` entry transformers 5.x processors expect for this clip."""
        return {
            "fps": float(self.source_fps),
            "total_num_frames": int(self.total_num_frames),
            "frames_indices": [int(i) for i in self.frame_indices],
        }


@dataclass(frozen=True)
class FramePlan:
    """Which source frames to take.

    Attributes:
        indices: ``int64 [T]`` increasing source frame indices, ``T`` even and >= 2.
        notes: what a cap or floor changed relative to the request.
    """

    indices: np.ndarray
    notes: tuple[str, ...] = ()


# --------------------------------------------------------------------------------------------------------
# Pure helpers: frame count, indices and frame size.


def _is_int(value: object) -> bool:
    return isinstance(value, numbers.Integral) and not isinstance(value, bool)


def _is_positive_number(value: object) -> bool:
    return (
        isinstance(value, numbers.Real) and not isinstance(value, bool) and math.isfinite(value) and value > 0
    )


def _check_sampling_args(
    fps: float | None, num_frames: int | None, min_frames: int, max_frames: int
) -> tuple[float | None, int | None]:
    """Validate the sampling arguments; returns ``(fps, num_frames)`` with the 2-fps default filled in."""
    if fps is not None and num_frames is not None:
        raise ValueError(f"give fps or num_frames, not both (got fps={fps}, num_frames={num_frames})")
    if not _is_int(min_frames) or min_frames < 1:
        raise ValueError(f"min_frames must be an integer >= 1, got {min_frames!r}")
    if not _is_int(max_frames) or max_frames < FRAME_FACTOR:
        raise ValueError(f"max_frames must be an integer >= {FRAME_FACTOR}, got {max_frames!r}")
    if min_frames > max_frames:
        raise ValueError(f"min_frames={min_frames} exceeds max_frames={max_frames}")
    if num_frames is not None:
        if not _is_int(num_frames) or num_frames < FRAME_FACTOR:
            raise ValueError(
                f"num_frames must be an integer >= {FRAME_FACTOR} (Qwen2.5-VL pairs frames), "
                f"got {num_frames!r}"
            )
        return None, int(num_frames)
    fps = DEFAULT_FPS if fps is None else fps
    if not _is_positive_number(fps):
        raise ValueError(f"fps must be a finite number > 0, got {fps!r}")
    return float(fps), None


def _floor_even(x: float) -> int:
    return math.floor(x / FRAME_FACTOR) * FRAME_FACTOR


def _ceil_even(x: float) -> int:
    return math.ceil(x / FRAME_FACTOR) * FRAME_FACTOR


def frame_window(
    total_num_frames: int, source_fps: float, start: float | None = None, end: float | None = None
) -> tuple[int, int]:
    """First and last source frame (inclusive) of the window ``[start, end]`` seconds.

    As qwen-vl-utils' ``video_start``/``video_end``: times are clamped to the video, the first frame is
    ``ceil(start * source_fps)`` and the last ``floor(end * source_fps)`` (at most the last frame).

    Raises:
        ValueError: a window that holds fewer than 2 frames.
    """
    if start is None and end is None:
        return 0, total_num_frames - 1
    duration = total_num_frames / source_fps
    first = 0 if start is None else math.ceil(max(0.0, min(float(start), duration)) * source_fps)
    last = total_num_frames - 1
    if end is not None:
        last = min(math.floor(max(0.0, min(float(end), duration)) * source_fps), total_num_frames - 1)
    if last - first + 1 < FRAME_FACTOR:
        begin = 0.0 if start is None else float(start)
        finish = duration if end is None else float(end)
        raise ValueError(
            f"fewer than 2 frames between {begin} s and {finish} s (the video lasts {duration:.1f} s)"
        )
    return first, last


def plan_frames(
    total_num_frames: int,
    source_fps: float,
    *,
    fps: float | None = None,
    num_frames: int | None = None,
    min_frames: int = MIN_FRAMES,
    max_frames: int = MAX_FRAMES,
    start: float | None = None,
    end: float | None = None,
) -> FramePlan:
    """The source frames to take from a video of ``total_num_frames`` frames at ``source_fps``.

    Follows the rules in the module docstring (qwen-vl-utils' ``smart_nframes`` and its indices).

    Returns:
        a :class:`FramePlan`: ``int64 [T]`` indices (``T`` even, ``2 <= T <= max_frames``) and notes.

    Raises:
        ValueError: bad arguments; a video or window with fewer than 2 frames.
    """
    fps, num_frames = _check_sampling_args(fps, num_frames, min_frames, max_frames)
    if not _is_positive_number(source_fps):
        raise ValueError(f"source_fps must be a finite number > 0, got {source_fps!r}")
    if total_num_frames < FRAME_FACTOR:
        raise ValueError(
            f"the video has {total_num_frames} decodable frame(s); at least 2 are needed "
            "(Qwen2.5-VL pairs frames)"
        )
    first, last = frame_window(total_num_frames, source_fps, start, end)
    available = last - first + 1
    notes = []
    if num_frames is not None:
        count = round(num_frames / FRAME_FACTOR) * FRAME_FACTOR
        if count > available:
            where = "the video has" if available == total_num_frames else "the window holds"
            notes.append(f"{num_frames} frames requested but {where} only {available}")
        elif count > max_frames:
            notes.append(f"{num_frames} frames requested; capped at max_frames={max_frames}")
        count = min(count, _floor_even(max_frames), _floor_even(available))
    else:
        wanted = available / source_fps * fps
        low = _ceil_even(min_frames)
        high = _floor_even(min(max_frames, available))
        count = _floor_even(min(max(wanted, low), high, available))
        if wanted > available:
            notes.append(
                f"{fps:g} fps asks for {wanted:.0f} frames but the video has {available} ({source_fps:g} fps)"
            )
        elif wanted >= _floor_even(max_frames) + FRAME_FACTOR:
            notes.append(f"{fps:g} fps gives {wanted:.0f} frames; capped at max_frames={max_frames}")
        elif _floor_even(wanted) < count:
            notes.append(f"{fps:g} fps gives {wanted:.1f} frames; raised to min_frames={min_frames}")
    if notes:
        notes[-1] += f": using {count} frames ({count * source_fps / available:.3g} per second of video)"
    import torch

    indices = torch.linspace(first, last, count).round().long().numpy().astype(np.int64)
    return FramePlan(indices=indices, notes=tuple(notes))


def sample_frame_indices(
    total_num_frames: int,
    source_fps: float,
    *,
    fps: float | None = None,
    num_frames: int | None = None,
    min_frames: int = MIN_FRAMES,
    max_frames: int = MAX_FRAMES,
) -> np.ndarray:
    """``int64 [T]`` indices of :func:`plan_frames` (the notes dropped)."""
    plan = plan_frames(
        total_num_frames,
        source_fps,
        fps=fps,
        num_frames=num_frames,
        min_frames=min_frames,
        max_frames=max_frames,
    )
    return plan.indices


def _smart_resize(height: int, width: int, min_pixels: float, max_pixels: float) -> tuple[int, int]:
    from transformers.models.qwen2_vl.image_processing_qwen2_vl import smart_resize

    return smart_resize(height, width, factor=PATCH_FACTOR, min_pixels=min_pixels, max_pixels=max_pixels)


def plan_frame_size(
    height: int,
    width: int,
    num_frames: int,
    *,
    max_pixels: int | None = None,
    min_pixels: int = MIN_PIXELS,
    total_pixels: float = TOTAL_PIXELS,
) -> tuple[tuple[int, int], tuple[str, ...]]:
    """Frame size for ``num_frames`` frames of ``height x width``: transformers' ``smart_resize`` with
    qwen-vl-utils' video budgets (see the module docstring).

    Returns:
        ``((h, w), notes)``: both sides multiples of 28; notes say when the total budget shrank the frames.

    Raises:
        ValueError: bad budgets; an aspect ratio over 200.
    """
    if height < 1 or width < 1:
        raise ValueError(f"height and width must be >= 1, got {height}x{width}")
    one_patch = PATCH_FACTOR * PATCH_FACTOR
    if max_pixels is not None and (not _is_int(max_pixels) or max_pixels < one_patch):
        raise ValueError(
            f"max_pixels must be an integer >= {one_patch} (one {PATCH_FACTOR}x{PATCH_FACTOR} patch), "
            f"got {max_pixels!r}"
        )
    if not _is_int(min_pixels) or min_pixels < 1:
        raise ValueError(f"min_pixels must be an integer >= 1, got {min_pixels!r}")
    if not _is_positive_number(total_pixels):
        raise ValueError(f"total_pixels must be a number > 0, got {total_pixels!r}")
    per_frame = MAX_PIXELS if max_pixels is None else min(int(max_pixels), MAX_PIXELS)
    budget = max(min(MAX_PIXELS, total_pixels / num_frames * FRAME_FACTOR), int(min_pixels * 1.05))
    limit = min(per_frame, budget)
    if min_pixels > limit:
        raise ValueError(f"min_pixels={min_pixels} exceeds the per-frame limit {limit:.0f}")
    try:
        size = _smart_resize(height, width, min_pixels, limit)
        unbudgeted = _smart_resize(height, width, min_pixels, per_frame) if budget < per_frame else size
    except ValueError as error:
        raise ValueError(f"cannot size a {height}x{width} frame: {error}") from error
    notes = ()
    if unbudgeted != size:
        notes = (
            f"{num_frames} frames at {unbudgeted[0]}x{unbudgeted[1]} exceed the total pixel budget "
            f"({total_pixels:.0f}): frames resized to {size[0]}x{size[1]}",
        )
    return (int(size[0]), int(size[1])), notes


# --------------------------------------------------------------------------------------------------------
# Backends. Each stream reports the container's frame rate and (possibly wrong) frame count, and yields one
# callable per decoded frame; calling it converts that frame to RGB. Frames that are not called for are
# decoded (codecs need them as references) but never converted or kept.


def _import_cv2() -> ModuleType:
    import cv2

    return cv2


def _import_av() -> ModuleType:
    import av

    return av


def _available(importer: Callable[[], ModuleType]) -> bool:
    try:
        importer()
    except ImportError:
        return False
    return True


class _Text:
    """What a :func:`_native_stderr_captured` block wrote, once it has ended."""

    def __init__(self) -> None:
        self.text = ""

    def getvalue(self) -> str:
        return self.text


@contextlib.contextmanager
def _native_stderr_captured() -> Iterator[_Text]:
    """Send what C libraries write to file descriptor 2 into a buffer for the duration of the block."""
    captured = _Text()
    try:
        saved = os.dup(2)
    except OSError:  # no usable descriptor 2: nothing to protect
        yield captured
        return
    sys.stderr.flush()
    with tempfile.TemporaryFile() as sink:
        os.dup2(sink.fileno(), 2)
        try:
            yield captured
        finally:
            os.dup2(saved, 2)
            os.close(saved)
            sink.seek(0)
            captured.text = sink.read().decode("utf-8", "replace")


def _decoder_message(text: str) -> str:
    """``": <the decoder's first complaint>"`` without its ``[mov,mp4 @ 0x...]`` prefix, or ``""``."""
    for line in text.splitlines():
        line = re.sub(r"^\[[^\]]*\]\s*", "", line.strip())
        if line and "WARN" not in line:
            return f": {line}"
    return ""


def _choose_backend(backend: str | None) -> str:
    if backend is None:
        if _available(_import_cv2):
            return "opencv"
        if _available(_import_av):
            return "pyav"
        raise ImportError("no video backend: install opencv-python-headless (or PyAV, package 'av')")
    if backend not in BACKENDS:
        raise ValueError(f"backend must be one of {BACKENDS} or None, got {backend!r}")
    importer, package = (_import_cv2, "opencv-python-headless") if backend == "opencv" else (_import_av, "av")
    if not _available(importer):
        raise ImportError(f"backend={backend!r} needs the {package!r} package, which is not installed")
    return backend


class _Cv2Stream:
    def __init__(self, path: str) -> None:
        cv2 = _import_cv2()
        self._cv2 = cv2
        # Prefer FFmpeg explicitly: CAP_ANY may hand a still image (or a printf-style path) to the image
        # sequence reader, which would pass a picture off as a one-frame video.
        api = cv2.CAP_FFMPEG if cv2.videoio_registry.hasBackend(cv2.CAP_FFMPEG) else cv2.CAP_ANY
        # A broken file makes FFmpeg and OpenCV print warnings ("moov atom not found", "[ WARN:0@...]")
        # straight to file descriptor 2 while it opens: they are caught there and only quoted in the error.
        with _native_stderr_captured() as messages:
            self._cap = cv2.VideoCapture(path, api)
        if not self._cap.isOpened():
            self._cap.release()
            said = _decoder_message(messages.getvalue())
            raise ValueError(f"could not decode {path!r} as a video (OpenCV could not open it{said})")
        self.fps = float(self._cap.get(cv2.CAP_PROP_FPS))
        # CAP_PROP_FRAME_COUNT is an estimate from the container (duration x fps for some formats).
        claimed = self._cap.get(cv2.CAP_PROP_FRAME_COUNT)
        self.claimed_frames = int(claimed) if math.isfinite(claimed) and claimed > 0 else 0

    def frames(self) -> Iterator[Callable[[], np.ndarray]]:
        # grab() decodes without the colour conversion and copy that retrieve() does.
        while self._cap.grab():
            yield self._retrieve

    def _retrieve(self) -> np.ndarray:
        ok, bgr = self._cap.retrieve()
        if not ok or bgr is None:
            raise ValueError("OpenCV decoded a frame but could not convert it")
        return self._cv2.cvtColor(bgr, self._cv2.COLOR_BGR2RGB)

    def close(self) -> None:
        self._cap.release()


class _PyAVStream:
    def __init__(self, path: str) -> None:
        av = _import_av()
        self._error = av.FFmpegError
        try:
            self._container = av.open(path)
        except av.FFmpegError as error:
            raise ValueError(f"could not decode {path!r} as a video ({error})") from error
        if not self._container.streams.video:
            self._container.close()
            raise ValueError(f"could not decode {path!r} as a video (it has no video stream)")
        self._stream = self._container.streams.video[0]
        self._stream.thread_type = "AUTO"
        rate = self._stream.average_rate or self._stream.guessed_rate or self._stream.base_rate
        self.fps = float(rate) if rate else 0.0
        self.claimed_frames = max(0, int(self._stream.frames or 0))

    def frames(self) -> Iterator[Callable[[], np.ndarray]]:
        try:
            for frame in self._container.decode(self._stream):
                yield lambda frame=frame: frame.to_ndarray(format="rgb24")
        except self._error:
            # A corrupt tail ends the video: keep what decoded (the caller reports a video where nothing did).
            return

    def close(self) -> None:
        self._container.close()


class _FolderStream:
    """A folder of frame images (sorted by name, numbers compared as numbers) at a given frame rate."""

    def __init__(self, path: str, frame_rate: float | None) -> None:
        files = [
            os.path.join(path, name)
            for name in os.listdir(path)
            if name.lower().endswith(IMAGE_SUFFIXES) and os.path.isfile(os.path.join(path, name))
        ]
        if not files:
            raise ValueError(
                f"{path!r} is a folder with no frame images ({', '.join(IMAGE_SUFFIXES)}): expected a video "
                "file or a folder of frames"
            )
        if frame_rate is None:
            raise ValueError(
                f"{path!r} is a folder of frames: give its frame rate, load_video(folder, frame_rate=...) "
                "(MVBench's TVQA frames are 3 fps)"
            )
        self.files = sorted(files, key=_natural_key)
        self.fps = float(frame_rate)
        self.claimed_frames = len(self.files)

    def frames(self) -> Iterator[Callable[[], np.ndarray]]:
        for file in self.files:
            yield lambda file=file: _read_image(file)

    def close(self) -> None:
        pass


def _natural_key(path: str) -> list:
    return [int(part) if part.isdigit() else part for part in re.split(r"(\d+)", os.path.basename(path))]


def _read_image(path: str) -> np.ndarray:
    """``uint8 [H, W, 3]`` RGB pixels of an image file."""
    try:
        cv2 = _import_cv2()
    except ImportError:
        cv2 = None
    if cv2 is not None:
        bgr = cv2.imread(path, cv2.IMREAD_COLOR)
        if bgr is None:
            raise ValueError(f"could not read frame image {path!r}")
        return cv2.cvtColor(bgr, cv2.COLOR_BGR2RGB)
    from PIL import Image

    try:
        with Image.open(path) as image:
            return np.asarray(image.convert("RGB"))
    except OSError as error:
        raise ValueError(f"could not read frame image {path!r} ({error})") from error


def _open_stream(path: str, backend: str) -> _Cv2Stream | _PyAVStream:
    return _Cv2Stream(path) if backend == "opencv" else _PyAVStream(path)


def _resize(rgb: np.ndarray, height: int, width: int) -> np.ndarray:
    """``uint8 [H, W, 3]`` -> ``uint8 [height, width, 3]``: bicubic with antialiasing, as qwen-vl-utils."""
    import torch
    import torch.nn.functional as F

    x = torch.from_numpy(np.ascontiguousarray(rgb)).permute(2, 0, 1)[None].float()
    y = F.interpolate(x, size=(height, width), mode="bicubic", align_corners=False, antialias=True)
    return y[0].permute(1, 2, 0).round().clamp(0, 255).to(torch.uint8).numpy()


def _decode_pass(
    stream: _Cv2Stream | _PyAVStream | _FolderStream,
    wanted: Callable[[int], bool],
    convert: Callable[[np.ndarray], np.ndarray],
) -> tuple[dict[int, np.ndarray], int]:
    """Decode the whole stream once; returns ``{index: convert(frame)}`` for the frames ``wanted`` and the
    number of frames that decoded."""
    kept: dict[int, np.ndarray] = {}
    count = 0
    for index, retrieve in enumerate(stream.frames()):
        count += 1
        if wanted(index):
            kept[index] = convert(retrieve())
    return kept, count


def load_video(
    path: str | os.PathLike,
    *,
    fps: float | None = None,
    num_frames: int | None = None,
    max_frames: int = MAX_FRAMES,
    min_frames: int = MIN_FRAMES,
    max_pixels: int | None = None,
    min_pixels: int = MIN_PIXELS,
    total_pixels: float = TOTAL_PIXELS,
    start: float | None = None,
    end: float | None = None,
    frame_rate: float | None = None,
    backend: str | None = None,
) -> VideoClip:
    """Decode and sample a video file or a folder of frames, as the Qwen2.5-VL reference pipeline does.

    Args:
        path: a video file, or a folder of frame images (sorted by name; give ``frame_rate``).
        fps: sample at this many frames per second of video time (default 2.0 when ``num_frames`` is None).
        num_frames: sample this many frames evenly instead (not with ``fps``); rounded to even.
        max_frames: at most this many frames (default 768); a larger request is capped, with a note.
        min_frames: by rate, at least this many frames (default 4), when the video has them.
        max_pixels: per-frame pixel budget (at most and by default ``768 * 28 * 28``).
        min_pixels: per-frame minimum; smaller frames are enlarged (default ``56 * 56``).
        total_pixels: budget of all frames together (qwen-vl-utils' default).
        start / end: only this window of the video, in seconds (qwen-vl-utils' ``video_start``/``video_end``).
        frame_rate: frames per second of a folder of frames (ignored for video files).
        backend: ``"opencv"`` or ``"pyav"`` for video files; default OpenCV when importable, else PyAV.

    Returns:
        a ``VideoClip`` with ``frames`` ``uint8 [T, H, W, 3]`` RGB (C-contiguous; ``T`` even, ``H`` and
        ``W`` multiples of 28) and ``frame_indices`` ``int64 [T]``; ``notes`` lists what a cap changed
        (each also issued as a :class:`FrameSamplingWarning`).

    Raises:
        FileNotFoundError: ``path`` does not exist.
        ValueError: bad arguments; a file that cannot be decoded as a video; fewer than 2 decodable frames.
        ImportError: the requested backend (or any backend) is not installed.
    """
    fps, num_frames = _check_sampling_args(fps, num_frames, min_frames, max_frames)
    plan_frame_size(
        PATCH_FACTOR, PATCH_FACTOR, 2, max_pixels=max_pixels, min_pixels=min_pixels, total_pixels=total_pixels
    )  # argument checks before any decoding
    path = os.fspath(path)
    if not os.path.exists(path):
        raise FileNotFoundError(f"video file not found: {path!r}")
    folder = os.path.isdir(path)
    if folder and frame_rate is not None and not _is_positive_number(frame_rate):
        raise ValueError(f"frame_rate must be a finite number > 0, got {frame_rate!r}")
    backend = None if folder else _choose_backend(backend)

    def open_stream() -> _Cv2Stream | _PyAVStream | _FolderStream:
        return _FolderStream(path, frame_rate) if folder else _open_stream(path, backend)

    def plan(total: int) -> FramePlan:
        return plan_frames(
            total,
            source_fps,
            fps=fps,
            num_frames=num_frames,
            min_frames=min_frames,
            max_frames=max_frames,
            start=start,
            end=end,
        )

    size: tuple[int, int] | None = None
    size_notes: tuple[str, ...] = ()
    frame_count = 0  # the T the frame size is planned for

    def convert(rgb: np.ndarray) -> np.ndarray:
        # The output size is fixed by the first frame kept, so every frame stacks even if the stream
        # changes resolution midway.
        nonlocal size, size_notes
        if size is None:
            size, size_notes = plan_frame_size(
                *rgb.shape[:2],
                frame_count,
                max_pixels=max_pixels,
                min_pixels=min_pixels,
                total_pixels=total_pixels,
            )
        if rgb.shape[:2] != size:
            rgb = _resize(rgb, *size)
        return np.ascontiguousarray(rgb, dtype=np.uint8)

    stream = open_stream()
    try:
        source_fps, claimed = stream.fps, stream.claimed_frames
        if not _is_positive_number(source_fps):
            raise ValueError(f"could not decode {path!r} as a video (no usable frame rate: {source_fps})")
        # First pass: plan from the container's claimed frame count.
        planned: set[int] = set()
        if claimed >= FRAME_FACTOR:
            try:
                first_plan = plan(claimed)
                planned = set(first_plan.indices.tolist())
                frame_count = len(first_plan.indices)
            except ValueError:
                planned = set()  # e.g. a window past the claimed end: the count that decodes decides
        kept, total = _decode_pass(stream, planned.__contains__, convert)
    finally:
        stream.close()

    if total == 0:
        raise ValueError(f"could not decode {path!r} as a video (no frame could be decoded)")
    if total < FRAME_FACTOR:
        raise ValueError(
            f"{path!r} has {total} decodable frame(s); at least 2 are needed (Qwen2.5-VL pairs frames)"
        )
    try:
        final = plan(total)
    except ValueError as error:
        raise ValueError(f"{path!r}: {error}") from error
    if len(final.indices) != frame_count:
        # The claimed count was wrong: the frame size may depend on the frame count, so start over.
        kept, size, frame_count = {}, None, len(final.indices)
    missing = {int(i) for i in final.indices} - kept.keys()
    if missing:
        stream = open_stream()
        try:
            more, recount = _decode_pass(stream, missing.__contains__, convert)
        finally:
            stream.close()
        if recount != total or not missing <= more.keys():
            raise ValueError(f"could not decode {path!r} consistently ({total} frames, then {recount})")
        kept.update(more)
    frames = np.stack([kept[int(i)] for i in final.indices])
    notes = final.notes + size_notes
    for note in notes:
        warnings.warn(f"{os.path.basename(path)}: {note}", FrameSamplingWarning, stacklevel=2)
    return VideoClip(
        frames=frames, source_fps=source_fps, total_num_frames=total, frame_indices=final.indices, notes=notes
    )
