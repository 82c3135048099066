"""Video decoding and frame sampling (OpenCV or PyAV), with the timing metadata Qwen2.5-VL needs.

``load_video`` decodes a file into a ``VideoClip``: RGB ``uint8 [T, H, W, 3]`` frames plus the source frame
rate, the source frame count and the index of each sampled frame, which is what transformers' Qwen2.5-VL
processor needs as ``video_metadata`` to compute the time between temporal patches.

Sampling rules (``sample_frame_indices``), with ``N`` the number of frames that actually decode:

* by rate (``fps=r``, the default with ``r = 2.0`` like qwen-vl-utils): frame ``k`` is the source frame
  nearest to time ``k / r`` (``round(k * source_fps / r)``, halves up) for every ``k`` that lands inside
  the video, starting at frame 0. A rate at or above ``source_fps`` takes every frame.
* by count (``num_frames=n``): ``n`` indices evenly spaced from the first to the last frame inclusive
  (``round(linspace(0, N - 1, n))``); ``n`` is capped at ``N``.
* even count: Qwen2.5-VL groups frames in temporal patches of 2 and pads an odd count by repeating the
  last frame. By rate, an odd count drops its last frame (the sampling rate stays exact and the video
  loses at most one sampling interval at its end). By count, an odd ``n`` becomes ``n + 1`` when the video
  has that many frames (the padded frame would cost the same tokens, so a real frame is better), else
  ``n - 1`` when that still meets ``min_frames``; otherwise it stays odd.
* ``min_frames``: when sampling by rate gives fewer than ``min_frames`` frames (a very short video),
  ``min_frames`` frames are spread over the whole video by the count rule instead. A video with fewer
  than ``min_frames`` decodable frames is an error.

The frame count a container reports is only trusted as a first guess: frames are counted as they decode,
and if the count differs from the claim the indices are recomputed from what decoded.
"""

from __future__ import annotations

import functools
import math
import numbers
import os
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from types import ModuleType

import numpy as np

DEFAULT_FPS = 2.0
# Qwen2.5-VL: 14-pixel patches merged 2x2, so frame sides must be multiples of 28.
PATCH_FACTOR = 28
BACKENDS = ("opencv", "pyav")


@dataclass(frozen=True)
class VideoClip:
    """Frames sampled from a video, and where they came from.

    Attributes:
        frames: ``uint8 [T, H, W, 3]`` RGB frames, in time order.
        source_fps: frame rate of the source video (frames per second).
        total_num_frames: number of frames in the source video.
        frame_indices: ``int64 [T]`` index of each sampled frame in the source video, increasing.
    """

    frames: np.ndarray
    source_fps: float
    total_num_frames: int
    frame_indices: np.ndarray

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


# --------------------------------------------------------------------------------------------------------
# Pure helpers: pixel budget and frame sampling.


def fit_to_pixel_budget(
    height: int,
    width: int,
    max_pixels: int,
    factor: int = PATCH_FACTOR,
    min_pixels: int = PATCH_FACTOR * PATCH_FACTOR,
) -> tuple[int, int]:
    """Frame size ``(h, w)`` with both sides multiples of ``factor`` and ``h * w <= max_pixels``.

    Each side is rounded to the nearest multiple of ``factor`` (at least one ``factor``); if that fits the
    budget it is the answer. Otherwise the frame is scaled down to ``max_pixels`` (or up to ``min_pixels``)
    keeping its aspect ratio and rounded again; if rounding up overshoots the budget, the side that
    overshoots its exact target the most loses one ``factor``, which keeps the aspect ratio as close as the
    grid allows. ``max_pixels`` is a hard limit; ``min_pixels`` is best effort when the two conflict.

    Returns:
        ``(h, w)``, multiples of ``factor``, ``factor <= h, w`` and ``h * w <= max_pixels``.
    """
    if height < 1 or width < 1:
        raise ValueError(f"height and width must be >= 1, got {height}x{width}")
    if factor < 1:
        raise ValueError(f"factor must be >= 1, got {factor}")
    if max_pixels < factor * factor:
        raise ValueError(
            f"max_pixels={max_pixels} is smaller than one {factor}x{factor} patch ({factor * factor} pixels)"
        )
    if min_pixels > max_pixels:
        raise ValueError(f"min_pixels={min_pixels} exceeds max_pixels={max_pixels}")

    h = max(factor, math.floor(height / factor + 0.5) * factor)
    w = max(factor, math.floor(width / factor + 0.5) * factor)
    if min_pixels <= h * w <= max_pixels:
        return h, w  # the frame already fits once snapped to the grid: no scaling, least distortion
    area = height * width
    if h * w > max_pixels:
        scale = min(1.0, math.sqrt(max_pixels / area))
    else:
        scale = math.sqrt(min_pixels / area)
    target_h, target_w = height * scale, width * scale
    h = max(factor, math.floor(target_h / factor + 0.5) * factor)
    w = max(factor, math.floor(target_w / factor + 0.5) * factor)
    if h * w < min_pixels:
        # Nearest rounding went down on both sides; rounding up is the smallest grid size above the floor.
        h = max(factor, math.ceil(target_h / factor) * factor)
        w = max(factor, math.ceil(target_w / factor) * factor)
    while h * w > max_pixels:
        if h == factor or w == factor:
            # One side is pinned at the minimum (extreme aspect ratio): give the other what is left.
            if h == factor:
                w = max(factor, max_pixels // (h * factor) * factor)
            else:
                h = max(factor, max_pixels // (w * factor) * factor)
            break
        if h / target_h >= w / target_w:
            h -= factor
        else:
            w -= factor
    return h, w


def _is_int(value: object) -> bool:
    return isinstance(value, numbers.Integral) and not isinstance(value, bool)


def _check_sampling_args(
    fps: float | None, num_frames: int | None, min_frames: int
) -> tuple[float | None, int | None]:
    """Validate the sampling arguments; returns ``(fps, num_frames)`` with the 2-fps default filled in."""
    if fps is not None and num_frames is not None:
        raise ValueError(f"give fps or num_frames, not both (got fps={fps}, num_frames={num_frames})")
    if not _is_int(min_frames) or min_frames < 1:
        raise ValueError(f"min_frames must be an integer >= 1, got {min_frames!r}")
    if num_frames is not None:
        if not _is_int(num_frames) or num_frames < 1:
            raise ValueError(f"num_frames must be an integer >= 1, got {num_frames!r}")
        if num_frames < min_frames:
            raise ValueError(f"num_frames={num_frames} is less than min_frames={min_frames}")
        return None, int(num_frames)
    fps = DEFAULT_FPS if fps is None else fps
    if not (isinstance(fps, numbers.Real) and not isinstance(fps, bool) and math.isfinite(fps) and fps > 0):
        raise ValueError(f"fps must be a finite number > 0, got {fps!r}")
    return float(fps), None


# Halves round up (not to even) so the rule is easy to state; the epsilon absorbs float error in products
# like k * 29.97 / 2 that should land exactly on a half. Scalar and array versions must agree exactly.
_HALF = 0.5 + 1e-9


def _nearest(x: np.ndarray) -> np.ndarray:
    return np.floor(np.asarray(x, dtype=np.float64) + _HALF).astype(np.int64)


def _on_rate_grid(index: int, step: float) -> bool:
    """Whether source frame ``index`` is picked when sampling every ``step`` source frames (no end known).

    The streaming twin of ``_rate_indices``, called once per decoded frame, so plain floats, no numpy.
    """
    if step <= 1.0:
        return True
    k = math.floor(index / step)
    return math.floor(k * step + _HALF) == index or math.floor((k + 1) * step + _HALF) == index


def _rate_indices(total: int, step: float) -> np.ndarray:
    """``int64 [T]`` source frames nearest to every ``step`` frames, from frame 0 to the last frame."""
    if step <= 1.0:
        return np.arange(total, dtype=np.int64)
    candidates = _nearest(np.arange(math.floor((total - 1) / step) + 2) * step)
    return candidates[candidates <= total - 1]


def _evenly_spaced(total: int, count: int, min_frames: int) -> np.ndarray:
    """``int64 [T]``: ``count`` indices (capped, even when possible) from 0 to ``total - 1`` inclusive."""
    count = min(count, total)
    if count % 2:
        if count + 1 <= total:
            count += 1
        elif count - 1 >= min_frames:
            count -= 1
    # Spacing >= 1 when count <= total, so rounding cannot produce duplicates.
    return _nearest(np.linspace(0, total - 1, count))


def sample_frame_indices(
    total_num_frames: int,
    source_fps: float,
    *,
    fps: float | None = None,
    num_frames: int | None = None,
    min_frames: int = 2,
) -> np.ndarray:
    """Indices of the frames to keep from a video of ``total_num_frames`` frames at ``source_fps``.

    Follows the rules in the module docstring (by rate, default 2 fps, or by count; even count when
    possible; at least ``min_frames``).

    Returns:
        ``int64 [T]`` strictly increasing indices in ``[0, total_num_frames)``.
    """
    fps, num_frames = _check_sampling_args(fps, num_frames, min_frames)
    if not (math.isfinite(source_fps) and source_fps > 0):
        raise ValueError(f"source_fps must be a finite number > 0, got {source_fps!r}")
    if total_num_frames < min_frames:
        raise ValueError(
            f"the video has {total_num_frames} decodable frame(s); "
            f"at least min_frames={min_frames} are needed"
        )
    if num_frames is None:
        indices = _rate_indices(total_num_frames, source_fps / fps)
        if len(indices) % 2:
            indices = indices[:-1]
        if len(indices) >= min_frames:
            return indices
        num_frames = min_frames
    return _evenly_spaced(total_num_frames, num_frames, min_frames)


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
        self._cap = cv2.VideoCapture(path, api)
        if not self._cap.isOpened():
            self._cap.release()
            raise ValueError(f"could not decode {path!r} as a video (OpenCV could not open it)")
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


def _open_stream(path: str, backend: str) -> _Cv2Stream | _PyAVStream:
    return _Cv2Stream(path) if backend == "opencv" else _PyAVStream(path)


def _resize(rgb: np.ndarray, height: int, width: int) -> np.ndarray:
    """``uint8 [H, W, 3]`` -> ``uint8 [height, width, 3]``; area averaging when shrinking (no aliasing)."""
    shrinking = height * width < rgb.shape[0] * rgb.shape[1]
    try:
        cv2 = _import_cv2()
    except ImportError:
        cv2 = None
    if cv2 is not None:
        # Area interpolation is the right filter for shrinking; for enlarging cv2 documents it as close to
        # nearest neighbour, so use bilinear there.
        interpolation = cv2.INTER_AREA if shrinking else cv2.INTER_LINEAR
        return cv2.resize(rgb, (width, height), interpolation=interpolation)
    import torch
    import torch.nn.functional as F

    x = torch.from_numpy(np.ascontiguousarray(rgb)).permute(2, 0, 1)[None].float()
    if shrinking:
        y = F.interpolate(x, size=(height, width), mode="area")
    else:
        y = F.interpolate(x, size=(height, width), mode="bilinear", align_corners=False)
    return y[0].permute(1, 2, 0).round().clamp(0, 255).to(torch.uint8).numpy()


def _decode_pass(
    stream: _Cv2Stream | _PyAVStream,
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
    max_pixels: int | None = None,
    min_frames: int = 2,
    backend: str | None = None,
) -> VideoClip:
    """Decode and sample a video file.

    Args:
        path: video file.
        fps: sample at this many frames per second of video time (default 2.0 when ``num_frames`` is None).
        num_frames: sample this many frames evenly over the whole video instead (not with ``fps``).
        max_pixels: if given, resize every frame so that ``H * W <= max_pixels`` with ``H`` and ``W``
            multiples of 28 (see ``fit_to_pixel_budget``); at least 28 * 28.
        min_frames: fewest frames to return; a video with fewer decodable frames is an error.
        backend: ``"opencv"`` or ``"pyav"``; default OpenCV when importable, else PyAV.

    Returns:
        a ``VideoClip`` with ``frames`` ``uint8 [T, H, W, 3]`` RGB (C-contiguous) and ``frame_indices``
        ``int64 [T]``; ``T`` follows the sampling rules in the module docstring (even when possible).

    Raises:
        FileNotFoundError: ``path`` does not exist.
        IsADirectoryError: ``path`` is a directory.
        ValueError: bad arguments; a file that cannot be decoded as a video; fewer than ``min_frames``
            decodable frames.
        ImportError: the requested backend (or any backend) is not installed.
    """
    fps, num_frames = _check_sampling_args(fps, num_frames, min_frames)
    if max_pixels is not None and (not _is_int(max_pixels) or max_pixels < PATCH_FACTOR * PATCH_FACTOR):
        one_patch = PATCH_FACTOR * PATCH_FACTOR
        raise ValueError(
            f"max_pixels must be an integer >= {one_patch} (one {PATCH_FACTOR}x{PATCH_FACTOR} patch), "
            f"got {max_pixels!r}"
        )
    backend = _choose_backend(backend)
    path = os.fspath(path)
    if not os.path.exists(path):
        raise FileNotFoundError(f"video file not found: {path!r}")
    if os.path.isdir(path):
        raise IsADirectoryError(f"expected a video file, got a directory: {path!r}")

    size: tuple[int, int] | None = None

    def convert(rgb: np.ndarray) -> np.ndarray:
        # The output size is fixed by the first frame kept, so every frame stacks even if the stream
        # changes resolution midway.
        nonlocal size
        if size is None:
            h, w = rgb.shape[:2]
            size = (h, w) if max_pixels is None else fit_to_pixel_budget(h, w, int(max_pixels))
        if rgb.shape[:2] != size:
            rgb = _resize(rgb, *size)
        return np.ascontiguousarray(rgb, dtype=np.uint8)

    stream = _open_stream(path, backend)
    try:
        source_fps, claimed = stream.fps, stream.claimed_frames
        if not (math.isfinite(source_fps) and source_fps > 0):
            raise ValueError(f"could not decode {path!r} as a video (no usable frame rate: {source_fps})")
        # First pass: plan from the container's claimed frame count (by rate the plan needs no count).
        wanted: Callable[[int], bool]
        if num_frames is None:
            wanted = functools.partial(_on_rate_grid, step=source_fps / fps)
        else:
            planned: set[int] = set()
            if claimed >= min_frames:
                plan = sample_frame_indices(claimed, source_fps, num_frames=num_frames, min_frames=min_frames)
                planned = set(plan.tolist())
            wanted = planned.__contains__
        kept, total = _decode_pass(stream, wanted, convert)
    finally:
        stream.close()

    if total == 0:
        raise ValueError(f"could not decode {path!r} as a video (no frame could be decoded)")
    if total < min_frames:
        raise ValueError(
            f"{path!r} has {total} decodable frame(s); at least min_frames={min_frames} are needed"
        )
    indices = sample_frame_indices(total, source_fps, fps=fps, num_frames=num_frames, min_frames=min_frames)
    missing = {int(i) for i in indices} - kept.keys()
    if missing:
        # The claimed count was wrong (or the video was too short for the rate): decode again for the rest.
        stream = _open_stream(path, backend)
        try:
            more, recount = _decode_pass(stream, missing.__contains__, convert)
        finally:
            stream.close()
        if recount != total or not missing <= more.keys():
            raise ValueError(f"could not decode {path!r} consistently ({total} frames, then {recount})")
        kept.update(more)
    frames = np.stack([kept[int(i)] for i in indices])
    return VideoClip(frames=frames, source_fps=source_fps, total_num_frames=total, frame_indices=indices)
