"""Deterministic synthetic video clips (numpy only) for tests and the offline demo.

A clip is a static textured background with coloured shapes on it; some shapes move at constant
velocity and the others stay still, which is the structure PruneVid exploits (static regions merge,
moving ones are kept). An optional scene cut switches to a different background and objects.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

__all__ = ["make_clip", "write_video"]


def _background(rng: np.random.Generator, height: int, width: int) -> np.ndarray:
    """Smooth colour noise plus diagonal stripes: ``float64 [H, W, 3]`` in [0, 255]."""
    grid = rng.uniform(40.0, 215.0, size=(5, 5, 3))
    # Bilinear upsampling of the coarse grid, separably along each axis.
    ys = np.linspace(0.0, grid.shape[0] - 1, height)
    xs = np.linspace(0.0, grid.shape[1] - 1, width)
    y0 = np.minimum(ys.astype(int), grid.shape[0] - 2)
    x0 = np.minimum(xs.astype(int), grid.shape[1] - 2)
    fy = (ys - y0)[:, None, None]
    fx = (xs - x0)[None, :, None]
    top = grid[y0][:, x0] * (1 - fx) + grid[y0][:, x0 + 1] * fx
    bottom = grid[y0 + 1][:, x0] * (1 - fx) + grid[y0 + 1][:, x0 + 1] * fx
    smooth = top * (1 - fy) + bottom * fy
    period = rng.uniform(10.0, 24.0)
    angle = rng.uniform(0.0, np.pi)
    yy, xx = np.mgrid[0:height, 0:width].astype(np.float32)
    stripes = np.sin(2 * np.pi * (xx * np.cos(angle) + yy * np.sin(angle)) / period)
    return np.clip(smooth + 25.0 * stripes[..., None], 0, 255)


def _render_scene(
    rng: np.random.Generator, num_frames: int, height: int, width: int, num_objects: int
) -> np.ndarray:
    """One scene: ``uint8 [T, H, W, 3]``. Objects 0, 2, 4, ... move; 1, 3, 5, ... are static."""
    background = _background(rng, height, width).round().astype(np.uint8)
    frames = np.broadcast_to(background, (num_frames, height, width, 3)).copy()
    yy = np.arange(height, dtype=np.float32)[None, :]
    xx = np.arange(width, dtype=np.float32)[None, :]
    t = np.linspace(0.0, 1.0, num_frames, dtype=np.float32) if num_frames > 1 else np.zeros(1, np.float32)
    for i in range(num_objects):
        half_h = rng.uniform(0.08, 0.16) * height
        half_w = rng.uniform(0.08, 0.16) * width
        # Start and end centres inside the frame: constant velocity, never leaves the picture.
        start = rng.uniform([half_h, half_w], [height - half_h, width - half_w])
        end = rng.uniform([half_h, half_w], [height - half_h, width - half_w]) if i % 2 == 0 else start
        dy = yy - (start[0] + (end[0] - start[0]) * t)[:, None]  # [T, H]
        dx = xx - (start[1] + (end[1] - start[1]) * t)[:, None]  # [T, W]
        if rng.random() < 0.5:
            mask = (np.abs(dy) <= half_h)[:, :, None] & (np.abs(dx) <= half_w)[:, None, :]
        else:
            radius = min(half_h, half_w)
            mask = (dy**2)[:, :, None] + (dx**2)[:, None, :] <= radius**2
        colour = rng.permutation(np.array([rng.uniform(200, 255), rng.uniform(0, 60), rng.uniform(0, 255)]))
        frames[mask] = colour.round().astype(np.uint8)
    return frames


def make_clip(
    num_frames: int = 16,
    height: int = 112,
    width: int = 112,
    *,
    seed: int = 0,
    num_objects: int = 3,
    scene_cut_at: int | None = None,
) -> np.ndarray:
    """Make a deterministic synthetic clip.

    Each scene has a static textured background (smooth colour noise and stripes) and
    ``num_objects`` solid-coloured rectangles or discs; objects 0, 2, 4, ... move in a straight line at
    constant velocity (staying inside the frame), objects 1, 3, 5, ... are static. Frames from
    ``scene_cut_at`` on show a different scene (new background and objects).

    Args:
        num_frames: T, number of frames (>= 1).
        height: H in pixels (>= 1).
        width: W in pixels (>= 1).
        seed: the clip depends only on the arguments; the same arguments give the same array.
        num_objects: shapes per scene (>= 0).
        scene_cut_at: index of the first frame of the second scene, in ``1 .. T - 1``, or None.

    Returns:
        ``uint8 [T, H, W, 3]`` RGB frames.
    """
    if num_frames < 1 or height < 1 or width < 1:
        raise ValueError(f"need num_frames, height, width >= 1, got {num_frames}, {height}, {width}")
    if num_objects < 0:
        raise ValueError(f"num_objects must be >= 0, got {num_objects}")
    if scene_cut_at is not None and not 0 < scene_cut_at < num_frames:
        raise ValueError(f"scene_cut_at must be in 1..{num_frames - 1}, got {scene_cut_at}")
    first_rng, second_rng = (np.random.default_rng(s) for s in np.random.SeedSequence(seed).spawn(2))
    if scene_cut_at is None:
        return _render_scene(first_rng, num_frames, height, width, num_objects)
    first = _render_scene(first_rng, scene_cut_at, height, width, num_objects)
    second = _render_scene(second_rng, num_frames - scene_cut_at, height, width, num_objects)
    return np.concatenate([first, second], axis=0)


def _count_frames_cv2(path: Path) -> int:
    import cv2

    cap = cv2.VideoCapture(str(path))
    count = 0
    try:
        while cap.read()[0]:
            count += 1
    finally:
        cap.release()
    return count


def _write_cv2(frames: np.ndarray, path: Path, fps: float) -> bool:
    import cv2

    height, width = frames.shape[1:3]
    writer = cv2.VideoWriter(str(path), cv2.VideoWriter_fourcc(*"mp4v"), float(fps), (width, height))
    if not writer.isOpened():
        return False
    try:
        for frame in frames:
            writer.write(np.ascontiguousarray(frame[..., ::-1]))  # OpenCV wants BGR
    finally:
        writer.release()
    return True


def _write_pyav(frames: np.ndarray, path: Path, fps: float) -> None:
    from fractions import Fraction

    import av

    with av.open(str(path), mode="w") as container:
        stream = container.add_stream("mpeg4", rate=Fraction(fps).limit_denominator(1000))
        stream.width, stream.height = frames.shape[2], frames.shape[1]
        stream.pix_fmt = "yuv420p"
        for frame in frames:
            container.mux(
                stream.encode(av.VideoFrame.from_ndarray(np.ascontiguousarray(frame), format="rgb24"))
            )
        container.mux(stream.encode())


def write_video(frames: np.ndarray, path: str | Path, fps: float = 8.0) -> Path:
    """Write frames to a video file that both OpenCV and PyAV decode (MPEG-4 Part 2 in .mp4).

    Uses OpenCV's ``mp4v`` writer, or PyAV's ``mpeg4`` encoder where OpenCV cannot write. The codec is
    lossy: decoded pixels are close to, not equal to, the input. Even sizes are safest for the codec.

    Args:
        frames: ``uint8 [T, H, W, 3]`` RGB frames.
        path: output file, normally ending in ``.mp4``; parent directories are created.
        fps: frame rate stored in the file.

    Returns:
        ``path`` as a Path, after checking that OpenCV reads back exactly T frames.
    """
    frames = np.asarray(frames)
    if frames.ndim != 4 or frames.shape[-1] != 3 or frames.dtype != np.uint8:
        raise ValueError(f"frames must be uint8 [T, H, W, 3], got {frames.dtype} {frames.shape}")
    if len(frames) == 0:
        raise ValueError("cannot write a video with no frames")
    if fps <= 0:
        raise ValueError(f"fps must be > 0, got {fps}")
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    if not _write_cv2(frames, path, fps):
        _write_pyav(frames, path, fps)
    count = _count_frames_cv2(path)
    if count != len(frames):
        raise RuntimeError(f"{path}: wrote {len(frames)} frames but OpenCV reads back {count}")
    return path
