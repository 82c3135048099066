"""Synthetic video multiple-choice questions with known answers, deterministic by seed (numpy only).

A clip is a static, low-saturation textured background with one to four solid shapes of clearly distinct
saturated colours. Shapes are static or move at constant speed left, right, up or down; events happen
on even frames (temporal-patch boundaries): a shape appears, disappears, changes colour, or the whole
scene cuts to a new background and new shapes. Each sample asks one of six question types with four
options (A-D):

============  ====================================================  ===================================
type          question                                              options
============  ====================================================  ===================================
colour        What colour is the {shape}?                           four colours
shape         What shape is the {colour} object?                    four shapes
direction     In which direction does the {colour} {shape} move?    left, right, up, down
count         How many shapes are in the video?                     one, two, three, four
order         Which of these happens first?                         events (2-3 real, the rest never)
end           What happens at the end of the video?                 events (the last one, earlier, never)
============  ====================================================  ===================================

Sample ``index`` of a seed has type ``QUESTION_TYPES[index % 6]`` and answer letter
``"ABCD"[(index // 6) % 4]``, so every 24 consecutive indices hold each (type, letter) pair once.
Every sample is checked to be answerable from the frames: :func:`check_answerable` re-derives the
answer from a per-frame table of what is visible (not from the generator's plan), and the renderer
asserts that shapes never overlap and stay inside the frame.

Frame sizes are multiples of 28 (Qwen2.5-VL's 14-pixel patches merged 2x2). Clips are sampled at
:data:`FPS` = 2 frames per second, so ``second_per_grid_ts`` is 1.0 on every transformers version.

Two regimes (``regime=`` of :func:`make_sample` and :func:`write_eval_set`; :data:`REGIMES`):

- ``"original"`` (the default; its clips are unchanged since the first release): 16 frames of 224x224
  (8 frame pairs x 64 merged tokens = 512 video tokens), objects of 45-60 px (about 4 merged tokens), a
  static textured background, events on any even frame (an object that appears at frame 14 of 16 is seen
  in one frame pair).
- ``"realistic"``: 32 frames of 448x448 (16 frame pairs x 256 = 4096 video tokens, as real inputs give
  thousands), objects of 56-112 px (4 to 25 merged tokens a frame pair), events on even frames in
  ``[6, T - 6]`` with every state lasting at least 3 frame pairs (an object on screen, gone after it
  disappears, each of its colours, each side of a scene cut; :func:`check_answerable` checks it), and per
  scene part either a static camera or a background panning 1-3 px per frame in any direction (a window
  moving over a larger canvas; shapes keep frame coordinates). Same six question types, same letter
  balance, same answerability check. Rendering takes about 13 ms per clip on one CPU core (4.5 ms for the
  original regime; measured on the development machine with single-threaded numpy, as the training
  workers run it: a multi-threaded BLAS makes the small matrix products several times slower).
"""

from __future__ import annotations

import itertools
import json
import multiprocessing
import os
import sys
from concurrent.futures import ProcessPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from prunevid.video import VideoClip

__all__ = [
    "COLOURS",
    "DIRECTIONS",
    "EVAL_SEED",
    "FPS",
    "INDEX_FILE",
    "MODEL_DIR",
    "MODEL_DIR_REALISTIC",
    "MODEL_DIR_REALISTIC_DROPOUT",
    "NUMBERS",
    "QUESTION_TEMPLATES",
    "QUESTION_TYPES",
    "REGIMES",
    "SHAPES",
    "TRAIN_SEED",
    "QASample",
    "Regime",
    "check_answerable",
    "cell_counts",
    "check_eval_set",
    "demo_clip",
    "make_sample",
    "object_map",
    "render_scene",
    "write_eval_set",
]

QUESTION_TYPES = ("colour", "shape", "direction", "count", "order", "end")
QUESTION_TEMPLATES = {
    "colour": "What colour is the {shape}?",
    "shape": "What shape is the {colour} object?",
    "direction": "In which direction does the {colour} {shape} move?",
    "count": "How many shapes are in the video?",
    "order": "Which of these happens first?",
    "end": "What happens at the end of the video?",
}
# Saturated and far apart in RGB; backgrounds stay grey-ish (saturation <= ~45), so none is confusable.
COLOURS: dict[str, tuple[int, int, int]] = {
    "red": (220, 40, 40),
    "green": (40, 180, 60),
    "blue": (40, 80, 225),
    "yellow": (235, 215, 40),
    "purple": (150, 55, 205),
    "cyan": (40, 205, 215),
}
SHAPES = ("square", "circle", "triangle", "cross", "diamond")
DIRECTIONS = ("left", "right", "up", "down")
NUMBERS = ("one", "two", "three", "four")
LETTERS = "ABCD"
FPS = 2.0
TRAIN_SEED = 1
EVAL_SEED = 20_261_127  # never used for training
INDEX_FILE = "synthetic.json"
# The small Qwen2.5-VL trained on this generator (benchmarks/train_synthetic.py), shipped with the package.
MODEL_DIR = Path(__file__).resolve().parent / "data" / "synthetic-model"
# Continued from it on the realistic regime (benchmarks/train_synthetic.py --regime realistic): trained
# without token dropout (the default model of `prunevid eval synthetic --regime realistic`) and with it.
MODEL_DIR_REALISTIC = MODEL_DIR.with_name("synthetic-model-realistic")
MODEL_DIR_REALISTIC_DROPOUT = MODEL_DIR.with_name("synthetic-model-realistic-dropout")
_FORMAT_VERSION = 1
_STEP = {"left": (0, -1), "right": (0, 1), "up": (-1, 0), "down": (1, 0)}


@dataclass(frozen=True)
class Regime:
    """How clips of a regime look (see the module docstring).

    Attributes:
        name: ``"original"`` or ``"realistic"``.
        size: default frame side in pixels (a multiple of 28).
        num_frames: default frame count T (even).
        eval_seed: the default held-out stream of ``prunevid eval synthetic --regime NAME``.
        side: an object's side as a fraction of the frame side, drawn uniformly in this range.
        hold: the fewest frames an object's state lasts: on screen, off screen after disappearing, each of
            its colours; events fall on even frames in ``[hold, T - hold]``.
        still_below: objects on screen for fewer frames stay still (a fast jump would look like two shapes).
        pan_probability: the chance that a scene part's background pans (else the camera is static).
        pan_speed: the panning background's speed range in pixels per frame.
        min_frames: the fewest frames a clip of the regime may have.
    """

    name: str
    size: int
    num_frames: int
    eval_seed: int
    side: tuple[float, float]
    hold: int
    still_below: int
    pan_probability: float = 0.0
    pan_speed: tuple[float, float] = (0.0, 0.0)
    min_frames: int = 8


REGIMES: dict[str, Regime] = {
    "original": Regime("original", 224, 16, EVAL_SEED, (0.20, 0.27), hold=2, still_below=6),
    # 448x448x32 at 2 fps: 16 frame pairs of 16x16 merged tokens (4096 video tokens); objects of 56-112 px
    # (4 to 25 merged tokens a frame pair); every state lasts at least 3 frame pairs; half the scene parts
    # pan at 1-3 px per frame. Its default held-out stream is the accuracy protocol's final seed.
    "realistic": Regime(
        "realistic",
        448,
        32,
        20_261_130,
        (0.125, 0.25),
        hold=6,
        still_below=12,
        pan_probability=0.5,
        pan_speed=(1.0, 3.0),
        min_frames=24,
    ),
}


def _regime(name: str) -> Regime:
    """The :class:`Regime` called ``name``; a clear error for any other name."""
    if name not in REGIMES:
        raise ValueError(f"unknown regime {name!r}: choose one of {', '.join(REGIMES)}")
    return REGIMES[name]


# ------------------------------------------------------------------------------------------------------
# Scene description


@dataclass
class Shape:
    """One object: ``shape`` of side ``size`` px, top-left ``(y, x)`` at frame ``on``, moving ``velocity``
    px/frame (one axis only); visible on frames ``[on, off)``; colour ``colour`` until ``change_at``, then
    ``colour2``."""

    shape: str
    colour: str
    size: int
    y: float
    x: float
    velocity: tuple[float, float] = (0.0, 0.0)
    on: int = 0
    off: int = 0
    colour2: str | None = None
    change_at: int | None = None

    def box(self, t: int) -> tuple[int, int]:
        """Integer top-left corner at frame ``t`` (visible frames only)."""
        k = t - self.on
        return int(round(self.y + self.velocity[0] * k)), int(round(self.x + self.velocity[1] * k))

    def colour_at(self, t: int) -> str:
        return self.colour2 if self.change_at is not None and t >= self.change_at else self.colour


@dataclass
class Scene:
    """Everything drawn in a clip: ``shapes`` (each tagged with the scene part it belongs to in
    ``part``), one background seed per part, the frame of the scene cut (or None), the regime's name, and
    per part the background's panning velocity ``(dy, dx)`` in pixels per frame (``pans``; empty or
    ``(0, 0)``: a static camera). Shapes are placed in frame coordinates: a pan moves only the background.
    """

    size: int
    num_frames: int
    shapes: list[Shape]
    part: list[int]
    background_seeds: list[int]
    cut: int | None = None
    regime: str = "original"
    pans: list[tuple[float, float]] = field(default_factory=list)

    def part_at(self, t: int) -> int:
        return int(self.cut is not None and t >= self.cut)

    def pan(self, part: int) -> tuple[float, float]:
        """The background velocity ``(dy, dx)`` px/frame of scene part ``part`` (0 without a pan)."""
        return self.pans[part] if part < len(self.pans) else (0.0, 0.0)

    def background_offset(self, part: int, t: int) -> tuple[int, int]:
        """Top-left ``(y, x)`` of the window of part ``part``'s background canvas shown at frame ``t``."""
        dy, dx = self.pan(part)
        pad_y, pad_x = _pan_padding(dy, self.num_frames), _pan_padding(dx, self.num_frames)
        y0, x0 = (pad_y if dy < 0 else 0), (pad_x if dx < 0 else 0)
        return int(round(y0 + dy * t)), int(round(x0 + dx * t))


def _pan_padding(speed: float, num_frames: int) -> int:
    """Extra canvas pixels along one axis for a background moving ``speed`` px/frame over the clip."""
    return int(np.ceil(abs(speed) * (num_frames - 1)))


@dataclass(frozen=True)
class Event:
    """``kind`` in appear / disappear / change / cut; ``colour``/``shape`` name the object (its colour before
    a change); ``colour2`` is the colour after a change."""

    kind: str
    colour: str = ""
    shape: str = ""
    colour2: str = ""

    def text(self) -> str:
        if self.kind == "cut":
            return "the scene changes"
        if self.kind == "change":
            return f"the {self.colour} {self.shape} turns {self.colour2}"
        return f"the {self.colour} {self.shape} {self.kind}s"


@dataclass(frozen=True)
class QASample:
    """One multiple-choice question about one generated clip.

    Attributes:
        id: ``"<seed>-<index>"``.
        clip: the frames (``uint8 [T, H, W, 3]``) at :data:`FPS`, every frame sampled.
        question: the question text (without options).
        options: four option texts, in letter order.
        answer: the correct letter.
        question_type: one of :data:`QUESTION_TYPES`.
        scene: the scene drawn (ground truth for checks and visualisation).
        events: the structured events behind the options of ``order`` / ``end`` questions.
    """

    id: str
    clip: VideoClip
    question: str
    options: tuple[str, ...]
    answer: str
    question_type: str
    scene: Scene = field(repr=False)
    events: tuple[Event, ...] = field(default=(), repr=False)

    @property
    def frames(self) -> np.ndarray:
        return self.clip.frames

    def record(self, video: str) -> dict[str, Any]:
        """The JSON index entry of this sample, its video stored at ``video`` (relative path)."""
        return {
            "id": self.id,
            "video": video,
            "question": self.question,
            "options": list(self.options),
            "answer": self.answer,
            "type": self.question_type,
        }


# ------------------------------------------------------------------------------------------------------
# Rendering


def _background(seed: int, size: int) -> np.ndarray:
    """Low-saturation smooth noise plus stripes: ``uint8 [size, size, 3]``."""
    rng = np.random.default_rng(seed)
    grid = (rng.uniform(70.0, 170.0, size=(4, 4, 1)) + rng.uniform(-18.0, 18.0, size=(4, 4, 3))).astype(
        np.float32
    )
    # Bilinear upsampling of the 4x4 grid as two small matrix products: weights [size, 4] per axis.
    pos = np.linspace(0.0, 3.0, size, dtype=np.float32)
    low = np.minimum(pos.astype(int), 2)
    frac = pos - low
    weights = np.zeros((size, 4), dtype=np.float32)
    weights[np.arange(size), low] = 1 - frac
    weights[np.arange(size), low + 1] = frac
    rows = np.tensordot(weights, grid, axes=(1, 0))  # [size, 4, 3]
    smooth = np.ascontiguousarray(np.tensordot(rows, weights, axes=(1, 1)).transpose(0, 2, 1))
    # Stripes sin(a*y + b*x), separably: sin(ay)cos(bx) + cos(ay)sin(bx).
    period, angle = rng.uniform(8.0, 20.0), rng.uniform(0.0, np.pi)
    coords = np.arange(size, dtype=np.float32) * np.float32(2 * np.pi / period)
    ay, bx = coords * np.float32(np.sin(angle)), coords * np.float32(np.cos(angle))
    stripes = np.outer(np.sin(ay), np.cos(bx)) + np.outer(np.cos(ay), np.sin(bx))
    stripes *= np.float32(rng.uniform(8.0, 16.0))
    return np.clip(smooth + stripes[:, :, None], 0, 255).round().astype(np.uint8)


def _canvas(seed: int, height: int, width: int) -> np.ndarray:
    """A realistic-regime background: ``uint8 [height, width, 3]``, low-saturation smooth noise (one grid
    point about every 150 px) plus stripes of a 10-28 px period; larger than the frame when it pans."""
    rng = np.random.default_rng(seed)
    grid_h, grid_w = 2 + height // 150, 2 + width // 150
    grid = (
        rng.uniform(70.0, 170.0, size=(grid_h, grid_w, 1))
        + rng.uniform(-18.0, 18.0, size=(grid_h, grid_w, 3))
    ).astype(np.float32)

    def weights(length: int, points: int) -> np.ndarray:  # bilinear interpolation weights [length, points]
        pos = np.linspace(0.0, points - 1.0, length, dtype=np.float32)
        low = np.minimum(pos.astype(int), points - 2)
        frac = pos - low
        out = np.zeros((length, points), dtype=np.float32)
        out[np.arange(length), low] = 1 - frac
        out[np.arange(length), low + 1] = frac
        return out

    # Two plain matrix products: [height, grid_h] @ [grid_h, grid_w * 3], then per channel @ [grid_w, width].
    rows = (weights(height, grid_h) @ grid.reshape(grid_h, grid_w * 3)).reshape(height, grid_w, 3)
    left = np.ascontiguousarray(rows.transpose(2, 0, 1)).reshape(3 * height, grid_w)
    smooth = (left @ np.ascontiguousarray(weights(width, grid_w).T)).reshape(3, height, width)
    period, angle = rng.uniform(10.0, 28.0), rng.uniform(0.0, np.pi)
    scale = np.float32(2 * np.pi / period)
    ay = np.arange(height, dtype=np.float32) * scale * np.float32(np.sin(angle))
    bx = np.arange(width, dtype=np.float32) * scale * np.float32(np.cos(angle))
    stripes = np.outer(np.sin(ay), np.cos(bx)) + np.outer(np.cos(ay), np.sin(bx))
    stripes *= np.float32(rng.uniform(8.0, 16.0))
    smooth += stripes
    np.clip(smooth, 0, 255, out=smooth)
    return np.ascontiguousarray(np.rint(smooth.transpose(1, 2, 0))).astype(np.uint8)


def _draw_backgrounds(scene: Scene, frames: np.ndarray) -> None:
    """Fill ``frames`` ``uint8 [T, S, S, 3]`` with each part's background (a panning window on a larger
    canvas in the realistic regime)."""
    size, t_count = scene.size, scene.num_frames
    parts = 1 if scene.cut is None else 2
    if scene.regime == "original":
        backgrounds = [_background(seed, size) for seed in scene.background_seeds[:parts]]
        frames[: scene.cut] = backgrounds[0]
        if scene.cut is not None:
            frames[scene.cut :] = backgrounds[1]
        return
    for part in range(parts):
        dy, dx = scene.pan(part)
        canvas = _canvas(
            scene.background_seeds[part],
            size + _pan_padding(dy, t_count),
            size + _pan_padding(dx, t_count),
        )
        start, stop = (0, scene.cut or t_count) if part == 0 else (scene.cut or t_count, t_count)
        if (dy, dx) == (0.0, 0.0):
            frames[start:stop] = canvas
            continue
        for t in range(start, stop):
            y, x = scene.background_offset(part, t)
            frames[t] = canvas[y : y + size, x : x + size]


def _sprite(shape: str, size: int) -> np.ndarray:
    """Boolean ``[size, size]`` mask of a shape filling its box."""
    c = (size - 1) / 2
    yy, xx = np.mgrid[0:size, 0:size].astype(np.float32)
    dy, dx = yy - c, xx - c
    if shape == "square":
        return np.ones((size, size), dtype=bool)
    if shape == "circle":
        return dy**2 + dx**2 <= (size / 2) ** 2
    if shape == "triangle":  # pointing up
        return np.abs(dx) <= (yy + 1) / size * (size / 2)
    if shape == "cross":
        arm = size / 6
        return (np.abs(dx) <= arm) | (np.abs(dy) <= arm)
    if shape == "diamond":
        return np.abs(dx) + np.abs(dy) <= size / 2
    raise ValueError(f"unknown shape {shape!r}")


def render_scene(scene: Scene, out: np.ndarray | None = None) -> np.ndarray:
    """Draw ``scene``: ``uint8 [T, S, S, 3]`` RGB, into ``out`` if given (a reused buffer saves the page
    faults of a fresh 2.4 MB array per 224x224x16 clip). Asserts that shapes stay inside the frame and
    never overlap (so each one is fully visible while it is on)."""
    t_count, size = scene.num_frames, scene.size
    if out is None:
        out = np.empty((t_count, size, size, 3), dtype=np.uint8)
    if out.shape != (t_count, size, size, 3) or out.dtype != np.uint8:
        raise ValueError(f"out must be uint8 {(t_count, size, size, 3)}, got {out.dtype} {out.shape}")
    frames = out
    _draw_backgrounds(scene, frames)
    occupied = np.zeros((t_count, size, size), dtype=bool)
    palette = {name: np.array(rgb, dtype=np.uint8) for name, rgb in COLOURS.items()}
    for obj in scene.shapes:
        mask = _sprite(obj.shape, obj.size)
        # Runs of frames with the same position and colour are drawn with one call.
        runs: list[list[int]] = []
        for t in range(obj.on, obj.off):
            if runs and obj.box(t) == obj.box(runs[-1][0]) and obj.colour_at(t) == obj.colour_at(runs[-1][0]):
                runs[-1][1] = t + 1
            else:
                runs.append([t, t + 1])
        for start, stop in runs:
            y, x = obj.box(start)
            assert 0 <= y and y + obj.size <= size and 0 <= x and x + obj.size <= size, (
                "shape leaves the frame"
            )
            region = occupied[start:stop, y : y + obj.size, x : x + obj.size]
            assert not (region & mask).any(), "shapes overlap"
            region |= mask
            np.copyto(
                frames[start:stop, y : y + obj.size, x : x + obj.size],
                palette[obj.colour_at(start)],
                where=mask[None, :, :, None],
            )
    return frames


def object_map(scene: Scene) -> np.ndarray:
    """Which object is drawn at each pixel: ``int8 [T, S, S]``, the object's index in ``scene.shapes``, -1
    where only background shows (shapes never overlap, so each pixel has at most one)."""
    ids = np.full((scene.num_frames, scene.size, scene.size), -1, dtype=np.int8)
    for number, obj in enumerate(scene.shapes):
        mask = _sprite(obj.shape, obj.size)
        for t in range(obj.on, obj.off):
            y, x = obj.box(t)
            ids[t, y : y + obj.size, x : x + obj.size][mask] = number
    return ids


def cell_counts(scene: Scene, merge: int = 28) -> np.ndarray:
    """How many pixels of each object each ``merge x merge`` cell shows: ``int32 [objects, T, S/merge,
    S/merge]`` (the cells of ``object_map`` counted per object, without drawing the whole map: about 1 ms
    for a realistic-regime clip). ``S`` must be a multiple of ``merge``."""
    t_count, size = scene.num_frames, scene.size
    if size % merge:
        raise ValueError(f"the frame side {size} is not a multiple of {merge}")
    grid = size // merge
    counts = np.zeros((len(scene.shapes), t_count, grid, grid), dtype=np.int32)
    for number, obj in enumerate(scene.shapes):
        mask = _sprite(obj.shape, obj.size).astype(np.int32)
        footprints: dict[tuple[int, int], tuple[int, int, np.ndarray]] = {}  # box -> its cells' counts
        for t in range(obj.on, obj.off):
            y, x = obj.box(t)
            if (y, x) not in footprints:
                y0, x0 = y // merge, x // merge
                y1, x1 = -(-(y + obj.size) // merge), -(-(x + obj.size) // merge)
                padded = np.zeros(((y1 - y0) * merge, (x1 - x0) * merge), dtype=np.int32)
                padded[
                    y - y0 * merge : y - y0 * merge + obj.size, x - x0 * merge : x - x0 * merge + obj.size
                ] = mask
                cells = padded.reshape(y1 - y0, merge, x1 - x0, merge).sum((1, 3))
                footprints[(y, x)] = (y0, x0, cells)
            y0, x0, cells = footprints[(y, x)]
            counts[number, t, y0 : y0 + cells.shape[0], x0 : x0 + cells.shape[1]] = cells
    return counts


# ------------------------------------------------------------------------------------------------------
# Ground truth from the scene, independent of how it was planned


def _visible(scene: Scene) -> list[dict[int, tuple[str, str, tuple[int, int]]]]:
    """Per frame: object number -> (colour, shape, top-left) of every object drawn in that frame."""
    table: list[dict[int, tuple[str, str, tuple[int, int]]]] = [{} for _ in range(scene.num_frames)]
    for number, obj in enumerate(scene.shapes):
        for t in range(obj.on, obj.off):
            table[t][number] = (obj.colour_at(t), obj.shape, obj.box(t))
    return table


def _occurrences(scene: Scene, event: Event) -> list[int]:
    """Frames at which ``event`` is seen to happen, read from the per-frame table."""
    table = _visible(scene)
    frames = []
    for t in range(1, scene.num_frames):
        if event.kind == "cut":
            if scene.part_at(t) != scene.part_at(t - 1):
                frames.append(t)
            continue
        if scene.part_at(t) != scene.part_at(t - 1):
            continue  # a cut replaces everything: no object event is seen across it
        before = {(c, s) for c, s, _ in table[t - 1].values()}
        now = {(c, s) for c, s, _ in table[t].values()}
        key = (event.colour, event.shape)
        if event.kind == "appear" and key in now - before:
            # appearing, not a colour change of a shape already there
            if not any(s == event.shape for c, s in before):
                frames.append(t)
        elif event.kind == "disappear" and key in before - now:
            if not any(s == event.shape for c, s in now):
                frames.append(t)
        elif event.kind == "change":
            same = [n for n in table[t] if n in table[t - 1] and table[t][n][1] == event.shape]
            for n in same:
                if table[t - 1][n][0] == event.colour and table[t][n][0] == event.colour2:
                    frames.append(t)
    return frames


def _change_frames(scene: Scene) -> list[int]:
    """Frames ``t`` at which what is on screen differs from frame ``t - 1`` (a cut, or a set of
    (colour, shape) that changed), read from the per-frame table; motion alone is no change."""
    table = _visible(scene)
    frames = []
    for t in range(1, scene.num_frames):
        before = {(c, s) for c, s, _ in table[t - 1].values()}
        now = {(c, s) for c, s, _ in table[t].values()}
        if scene.part_at(t) != scene.part_at(t - 1) or before != now:
            frames.append(t)
    return frames


def check_answerable(sample: QASample) -> None:
    """Raise AssertionError unless exactly the gold option is right according to the frames' content.

    The answer is derived again from the per-frame table of visible shapes (colour, shape, position per
    frame; scene part per frame), never from the generator's plan.
    """
    scene, options, gold = sample.scene, sample.options, LETTERS.index(sample.answer)
    assert len(options) == 4 and len(set(options)) == 4, f"{sample.id}: options must be 4 distinct texts"
    table = _visible(scene)
    seen = [(c, s, n) for frame in table for n, (c, s, _) in frame.items()]
    kind = sample.question_type
    if kind == "colour":
        shape = sample.question.split("the ")[1].rstrip("?")
        objects = {n for c, s, n in seen if s == shape}
        colours = {c for c, s, n in seen if s == shape}
        assert len(objects) == 1 and len(colours) == 1, f"{sample.id}: the {shape} is not unique"
        assert options[gold] == colours.pop() and all(o in COLOURS for o in options)
    elif kind == "shape":
        colour = sample.question.split("the ")[1].split(" ")[0]
        objects = {n for c, s, n in seen if c == colour}
        shapes = {s for c, s, n in seen if c == colour}
        assert len(objects) == 1 and len(shapes) == 1, f"{sample.id}: the {colour} object is not unique"
        assert options[gold] == shapes.pop() and all(o in SHAPES for o in options)
    elif kind == "direction":
        colour, shape = sample.question.split("the ")[1].split(" ")[:2]
        objects = {n for c, s, n in seen if (c, s) == (colour, shape)}
        assert len(objects) == 1, f"{sample.id}: the {colour} {shape} is not unique"
        number = objects.pop()
        path = [frame[number][2] for frame in table if number in frame]
        assert len(path) == scene.num_frames, f"{sample.id}: the moving shape is not always visible"
        dy, dx = path[-1][0] - path[0][0], path[-1][1] - path[0][1]
        steps = np.diff(np.array(path), axis=0)
        moved = {"down": dy, "up": -dy, "right": dx, "left": -dx}[options[gold]]
        assert moved >= 0.2 * scene.size and min(abs(dy), abs(dx)) == 0, f"{sample.id}: motion unclear"
        assert (steps * np.sign([dy, dx]) >= 0).all(), f"{sample.id}: motion is not monotonic"
        assert sorted(options) == sorted(DIRECTIONS)
    elif kind == "count":
        objects = {n for c, s, n in seen}
        assert all(len(frame) == len(objects) for frame in table), f"{sample.id}: shapes come and go"
        assert options[gold] == NUMBERS[len(objects) - 1] and sorted(options) == sorted(NUMBERS)
    elif kind in ("order", "end"):
        assert [e.text() for e in sample.events] == list(options)
        times = [_occurrences(scene, e) for e in sample.events]
        assert all(len(t) <= 1 for t in times), f"{sample.id}: an option happens twice"
        assert times[gold], f"{sample.id}: the answer never happens"
        if kind == "order":
            later = [t[0] for i, t in enumerate(times) if t and i != gold]
            assert all(t >= times[gold][0] + 2 for t in later), f"{sample.id}: 'first' is ambiguous"
        else:
            last = times[gold][0]
            assert last >= 0.75 * scene.num_frames, f"{sample.id}: the answer is not at the end"
            others = [t for t in _change_frames(scene) if t != last]
            assert all(t <= scene.num_frames // 2 for t in others), f"{sample.id}: other events near the end"
    else:
        raise AssertionError(f"unknown question type {kind!r}")
    if scene.regime != "original":
        _check_states_last(sample)


def _check_states_last(sample: QASample) -> None:
    """Realistic regime: every state lasts at least ``hold`` frames (an object on screen, off screen after
    it disappears or before it appears, each of its colours; each scene part), read from the per-frame
    table."""
    scene, hold = sample.scene, _regime(sample.scene.regime).hold
    table = _visible(scene)
    parts = [scene.part_at(t) for t in range(scene.num_frames)]
    runs = [len(list(group)) for _, group in itertools.groupby(parts)]
    assert min(runs) >= hold, f"{sample.id}: a scene part lasts less than {hold} frames"
    for number in range(len(scene.shapes)):
        states = [(parts[t], table[t][number][0] if number in table[t] else None) for t in range(len(table))]
        runs = [len(list(group)) for _, group in itertools.groupby(states)]
        assert min(runs) >= hold, f"{sample.id}: object {number} changes within {hold} frames"


# ------------------------------------------------------------------------------------------------------
# Planning


class _Retry(Exception):
    """The random layout failed a constraint: draw again."""


def _event_frames(num_frames: int, hold: int = 2) -> list[int]:
    """Even frames in ``[hold, T - hold]``: events fall on temporal-patch boundaries, and what they change
    lasts at least ``hold`` frames before and after."""
    return list(range(hold, num_frames - hold + 1, 2))


def _place(
    rng: np.random.Generator,
    scene: Scene,
    part: int,
    shape: str,
    colour: str,
    on: int,
    off: int,
    direction: str | None,
    regime: Regime = REGIMES["original"],
) -> Shape:
    """A shape visible on ``[on, off)``, moving along ``direction`` (or static), whose swept box avoids
    every shape of the same part visible at the same time (4 px gap). Shapes on screen for fewer than
    ``regime.still_below`` frames stay still (a fast jump would look like two shapes)."""
    size = scene.size
    side = int(round(rng.uniform(*regime.side) * size / 2)) * 2
    frames = off - on
    direction = direction if frames >= regime.still_below else None
    for _ in range(50):
        velocity = (0.0, 0.0)
        span = (0.0, 0.0)
        if direction is not None:
            travel = rng.uniform(0.25, 0.40) * size
            step = np.array(_STEP[direction], dtype=float) * travel / (frames - 1)
            velocity = (float(step[0]), float(step[1]))
            span = (velocity[0] * (frames - 1), velocity[1] * (frames - 1))
        lo_y, hi_y = max(0.0, -span[0]), size - side - max(0.0, span[0])
        lo_x, hi_x = max(0.0, -span[1]), size - side - max(0.0, span[1])
        if hi_y < lo_y or hi_x < lo_x:
            continue
        obj = Shape(shape, colour, side, rng.uniform(lo_y, hi_y), rng.uniform(lo_x, hi_x), velocity, on, off)
        # The swept box over the visible frames, with a 4 px gap (the bounds above keep it in the frame).
        ends = [obj.box(on), obj.box(off - 1)]
        y0, y1 = min(e[0] for e in ends) - 4, max(e[0] for e in ends) + side + 4
        x0, x1 = min(e[1] for e in ends) - 4, max(e[1] for e in ends) + side + 4
        clash = False
        for other, other_part in zip(scene.shapes, scene.part, strict=True):
            if other_part != part or other.off <= on or off <= other.on:
                continue
            o_ends = [other.box(max(on, other.on)), other.box(min(off, other.off) - 1)]
            oy0, oy1 = min(e[0] for e in o_ends), max(e[0] for e in o_ends) + other.size
            ox0, ox1 = min(e[1] for e in o_ends), max(e[1] for e in o_ends) + other.size
            if y0 < oy1 and oy0 < y1 and x0 < ox1 and ox0 < x1:
                clash = True
                break
        if not clash:
            return obj
    raise _Retry


class _Planner:
    """Draws shapes, colours and times without repetition (every shape and colour at most once a clip)."""

    def __init__(
        self, rng: np.random.Generator, size: int, num_frames: int, regime: Regime = REGIMES["original"]
    ) -> None:
        self.rng = rng
        self.regime = regime
        self.scene = Scene(size, num_frames, [], [], [int(rng.integers(2**31)), int(rng.integers(2**31))])
        if regime.name != "original":
            self.scene.regime = regime.name
            for _ in range(2):  # one camera per scene part: static, or panning slowly in any direction
                if rng.random() < regime.pan_probability:
                    speed, angle = rng.uniform(*regime.pan_speed), rng.uniform(0.0, 2 * np.pi)
                    self.scene.pans.append((float(speed * np.sin(angle)), float(speed * np.cos(angle))))
                else:
                    self.scene.pans.append((0.0, 0.0))
        self.shapes = list(rng.permutation(SHAPES))
        self.colours = list(rng.permutation(list(COLOURS)))

    def take_shape(self) -> str:
        return str(self.shapes.pop())

    def take_colour(self) -> str:
        return str(self.colours.pop())

    def motion(self, moving_probability: float = 0.5) -> str | None:
        return str(self.rng.choice(DIRECTIONS)) if self.rng.random() < moving_probability else None

    def add(self, part: int, on: int, off: int, direction: str | None = None) -> Shape:
        obj = _place(
            self.rng, self.scene, part, self.take_shape(), self.take_colour(), on, off, direction, self.regime
        )
        self.scene.shapes.append(obj)
        self.scene.part.append(part)
        return obj

    def part_range(self, part: int) -> tuple[int, int]:
        cut = self.scene.cut
        if cut is None:
            return 0, self.scene.num_frames
        return (0, cut) if part == 0 else (cut, self.scene.num_frames)

    def fake_event(self, used: set[str], allow_cut: bool) -> Event:
        """An event that never happens: its (colour, shape) is never on screen (nor a cut, if none)."""
        on_screen = {(o.colour, o.shape) for o in self.scene.shapes}
        on_screen |= {(o.colour2, o.shape) for o in self.scene.shapes if o.colour2}
        for _ in range(100):
            if allow_cut and self.scene.cut is None and self.rng.random() < 0.2:
                event = Event("cut")
            else:
                colour, shape = str(self.rng.choice(list(COLOURS))), str(self.rng.choice(SHAPES))
                kind = str(self.rng.choice(["appear", "disappear", "change"]))
                colour2 = (
                    str(self.rng.choice([c for c in COLOURS if c != colour])) if kind == "change" else ""
                )
                if (colour, shape) in on_screen or (colour2, shape) in on_screen:
                    continue
                event = Event(kind, colour, shape, colour2)
            if event.text() not in used:
                return event
        raise _Retry


def _event_on(planner: _Planner, kind: str, when: int, part: int) -> Event:
    """Add a shape to ``part`` that makes ``kind`` happen at frame ``when``; returns the event."""
    start, stop = planner.part_range(part)
    if kind == "appear":
        obj = planner.add(part, when, stop, planner.motion(0.3))
        return Event("appear", obj.colour, obj.shape)
    if kind == "disappear":
        obj = planner.add(part, start, when, planner.motion(0.3))
        return Event("disappear", obj.colour, obj.shape)
    obj = planner.add(part, start, stop, planner.motion(0.3))
    obj.colour2, obj.change_at = planner.take_colour(), when
    return Event("change", obj.colour, obj.shape, obj.colour2)


def _plan_events(planner: _Planner, times: list[int]) -> list[Event]:
    """Real events at the given frames (ascending), at most one of them a scene cut; a few shapes that do
    nothing are added around them."""
    scene = planner.scene
    rng = planner.rng
    cut_slot = int(rng.integers(len(times))) if rng.random() < 0.3 else None
    if cut_slot is not None:
        scene.cut = times[cut_slot]
    events: list[Event] = []
    for slot, when in enumerate(times):
        if slot == cut_slot:
            events.append(Event("cut"))
            continue
        part = scene.part_at(when)
        start, _ = planner.part_range(part)
        kinds = ["appear", "disappear", "change"]
        if when - start < planner.regime.hold:
            kinds.remove("disappear")  # it would be on screen for less than `hold` frames
        events.append(_event_on(planner, str(rng.choice(kinds)), when, part))
    for part in (0, 1) if scene.cut is not None else (0,):
        start, stop = planner.part_range(part)
        present = sum(1 for p in scene.part if p == part)
        if present == 0 or (present < 2 and rng.random() < 0.5):
            planner.add(part, start, stop, planner.motion())
    return events


def _arrange(rng: np.random.Generator, answer: str, others: list[str], letter: int) -> tuple[str, ...]:
    """Four options with ``answer`` at position ``letter`` and the others shuffled around it."""
    rest = [others[i] for i in rng.permutation(len(others))][:3]
    rest.insert(letter, answer)
    return tuple(rest)


def _plan(
    rng: np.random.Generator,
    kind: str,
    letter: int,
    size: int,
    num_frames: int,
    regime: Regime = REGIMES["original"],
) -> tuple:
    planner = _Planner(rng, size, num_frames, regime)
    scene = planner.scene
    event_frames = _event_frames(num_frames, regime.hold)
    whole = (0, num_frames)
    events: tuple[Event, ...] = ()
    if kind in ("colour", "shape", "direction"):
        direction = str(rng.choice(DIRECTIONS)) if kind == "direction" else planner.motion()
        target = planner.add(0, *whole, direction)
        for _ in range(int(rng.integers(0, 3))):
            if rng.random() < 0.3:  # a bystander with an event: events are not only in event questions
                when = int(rng.choice(event_frames))
                _event_on(planner, str(rng.choice(["appear", "disappear"])), when, 0)
            else:
                planner.add(0, *whole, planner.motion())
        if kind == "colour":
            question = QUESTION_TEMPLATES[kind].format(shape=target.shape)
            options = _arrange(rng, target.colour, [c for c in COLOURS if c != target.colour], letter)
        elif kind == "shape":
            question = QUESTION_TEMPLATES[kind].format(colour=target.colour)
            options = _arrange(rng, target.shape, [s for s in SHAPES if s != target.shape], letter)
        else:
            question = QUESTION_TEMPLATES[kind].format(colour=target.colour, shape=target.shape)
            assert direction is not None
            options = _arrange(rng, direction, [d for d in DIRECTIONS if d != direction], letter)
    elif kind == "count":
        count = int(rng.integers(1, 5))
        for _ in range(count):
            obj = planner.add(0, *whole, planner.motion(0.35))
            if rng.random() < 0.15:
                obj.colour2, obj.change_at = planner.take_colour(), int(rng.choice(event_frames))
        question = QUESTION_TEMPLATES[kind]
        options = _arrange(rng, NUMBERS[count - 1], [n for n in NUMBERS if n != NUMBERS[count - 1]], letter)
    elif kind == "order":
        frames = event_frames
        # Distinct times at least `gap` frames apart: 2 temporal patches for clips of 16 frames and more
        # (`hold` frames in the realistic regime, so that each state between events lasts that long).
        gap = max(4 if num_frames >= 16 else 2, regime.hold)
        real = 2 if rng.random() < 0.6 or 2 * gap + 2 > frames[-1] else 3
        times = sorted(int(t) for t in rng.choice(frames, size=real, replace=False))
        if min(np.diff(times)) < gap:
            raise _Retry
        happened = _plan_events(planner, times)
        used = {e.text() for e in happened}
        fakes = []
        for _ in range(4 - real):
            fakes.append(planner.fake_event(used, allow_cut=True))
            used.add(fakes[-1].text())
        ordered = _arrange(rng, happened[0].text(), [e.text() for e in happened[1:] + fakes], letter)
        by_text = {e.text(): e for e in happened + fakes}
        events = tuple(by_text[o] for o in ordered)
        question, options = QUESTION_TEMPLATES[kind], ordered
    elif kind == "end":
        frames = event_frames
        last = int(rng.choice([t for t in frames if t >= 0.75 * num_frames]))
        early_count = int(rng.integers(0, 3))
        early = [t for t in frames if t <= num_frames // 2]
        times = sorted(int(t) for t in rng.choice(early, size=early_count, replace=False)) + [last]
        if regime.name != "original" and min(np.diff(times), default=regime.hold) < regime.hold:
            raise _Retry  # a state between two events would last less than `hold` frames
        happened = _plan_events(planner, times)
        used = {e.text() for e in happened}
        fakes = []
        for _ in range(4 - len(happened)):
            fakes.append(planner.fake_event(used, allow_cut=True))
            used.add(fakes[-1].text())
        ordered = _arrange(rng, happened[-1].text(), [e.text() for e in happened[:-1] + fakes], letter)
        by_text = {e.text(): e for e in happened + fakes}
        events = tuple(by_text[o] for o in ordered)
        question, options = QUESTION_TEMPLATES[kind], ordered
    else:
        raise ValueError(f"unknown question type {kind!r}")
    return scene, question, options, events


def make_sample(
    seed: int,
    index: int,
    *,
    size: int | None = None,
    num_frames: int | None = None,
    out: np.ndarray | None = None,
    regime: str = "original",
) -> QASample:
    """Sample ``index`` of the stream ``seed``: the same arguments always give the same clip and question.

    Args:
        seed: the stream (training seeds and the held-out seeds never overlap in use).
        index: >= 0; sets the question type (``index % 6``) and the answer letter (``(index // 6) % 4``).
        size: frame side in pixels, a multiple of 28 (>= 112); default: the regime's (224 or 448).
        num_frames: T, even, >= 8 (>= 24 in the realistic regime); default: the regime's (16 or 32).
        out: optional ``uint8 [T, size, size, 3]`` buffer to draw into (the clip's frames are then ``out``).
        regime: ``"original"`` or ``"realistic"`` (:data:`REGIMES`).

    Returns:
        a :class:`QASample` whose clip has ``uint8 [T, size, size, 3]`` frames at :data:`FPS`.
    """
    spec = _regime(regime)
    size = spec.size if size is None else size
    num_frames = spec.num_frames if num_frames is None else num_frames
    if size % 28 or size < 112:
        raise ValueError(f"size must be a multiple of 28 and >= 112, got {size}")
    if num_frames % 2 or num_frames < spec.min_frames:
        raise ValueError(
            f"num_frames must be even and >= {spec.min_frames} in the {regime} regime, got {num_frames}"
        )
    if index < 0:
        raise ValueError(f"index must be >= 0, got {index}")
    kind = QUESTION_TYPES[index % len(QUESTION_TYPES)]
    letter = (index // len(QUESTION_TYPES)) % len(LETTERS)
    rng = np.random.default_rng([seed, index])
    for _ in range(200):
        try:
            scene, question, options, events = _plan(rng, kind, letter, size, num_frames, spec)
            frames = render_scene(scene, out)
        except (_Retry, AssertionError, IndexError):
            continue
        clip = VideoClip(
            frames=frames,
            source_fps=FPS,
            total_num_frames=num_frames,
            frame_indices=np.arange(num_frames, dtype=np.int64),
        )
        sample = QASample(
            f"{seed}-{index}", clip, question, tuple(options), LETTERS[letter], kind, scene, events
        )
        check_answerable(sample)
        return sample
    raise RuntimeError(f"could not lay out sample {index} of seed {seed} ({regime} regime)")


# ------------------------------------------------------------------------------------------------------
# The held-out set on disk


def _write_one(args: tuple[Path, int, int, int, int, str]) -> dict[str, Any]:
    from prunevid.synthetic import write_video

    folder, seed, index, size, num_frames, regime = args
    sample = make_sample(seed, index, size=size, num_frames=num_frames, regime=regime)
    name = f"videos/{index:05d}.mp4"
    write_video(sample.frames, folder / name, fps=FPS)
    return sample.record(name)


def write_eval_set(
    folder: str | os.PathLike,
    n: int = 1000,
    seed: int | None = None,
    *,
    size: int | None = None,
    num_frames: int | None = None,
    workers: int | None = None,
    progress: bool = False,
    regime: str = "original",
) -> Path:
    """Write the first ``n`` samples of stream ``seed`` as real video files plus a JSON index (benchmark
    ``synthetic``); a folder that already holds the first ``k`` samples of the same set only gets the
    samples ``k .. n - 1`` (so a run that needs 20 questions writes 20, and a later run extends them).

    Layout: ``folder/videos/<index>.mp4`` (MPEG-4 at :data:`FPS`, through
    :func:`prunevid.synthetic.write_video`) and ``folder/synthetic.json``:
    ``{"format", "regime", "seed", "size", "num_frames", "fps", "samples": [{"id", "video", "question",
    "options", "answer", "type"}, ...]}`` (an index without ``regime`` holds the original regime). Read
    it with ``prunevid.benchmarks_data.read_benchmark("synthetic", folder)`` or ``prunevid eval synthetic
    --data folder``. The index is written last, so a folder with an index
    holds every sample it lists.

    Args:
        seed: the stream; default: the regime's held-out seed (:data:`EVAL_SEED` for the original regime).
        size, num_frames: default: the regime's (224 x 16 or 448 x 32).
        workers: processes to encode with (default: the CPU count, at most 16; 1 runs in this process).
        progress: a progress bar on stderr while writing.
        regime: ``"original"`` or ``"realistic"`` (:data:`REGIMES`).

    Raises:
        ValueError: ``n < 1``; the folder holds another set (other regime, seed, size or frame count).
    """
    if n < 1:
        raise ValueError(f"n must be >= 1, got {n}")
    spec = _regime(regime)
    seed = spec.eval_seed if seed is None else seed
    size = spec.size if size is None else size
    num_frames = spec.num_frames if num_frames is None else num_frames
    folder = Path(folder)
    records = _existing_records(folder, seed, size, num_frames, regime)
    if len(records) >= n:
        return folder
    (folder / "videos").mkdir(parents=True, exist_ok=True)
    jobs = [(folder, seed, i, size, num_frames, regime) for i in range(len(records), n)]
    workers = min(workers or min(16, os.cpu_count() or 1), len(jobs))
    bar = None
    if progress:
        from tqdm.auto import tqdm

        bar = tqdm(
            total=len(jobs), desc=f"writing synthetic questions to {folder}", unit="clip", file=sys.stderr
        )
    try:
        if workers == 1:
            for job in jobs:
                records.append(_write_one(job))
                if bar is not None:
                    bar.update(1)
        else:
            context = multiprocessing.get_context("spawn")  # safe whatever threads the caller runs
            with ProcessPoolExecutor(workers, mp_context=context) as pool:
                chunk = max(1, len(jobs) // (8 * workers))
                for record in pool.map(_write_one, jobs, chunksize=chunk):
                    records.append(record)
                    if bar is not None:
                        bar.update(1)
    finally:
        if bar is not None:
            bar.close()
    index = {
        "format": _FORMAT_VERSION,
        "generator": "prunevid.synthetic_qa",
        "regime": regime,
        "seed": seed,
        "size": size,
        "num_frames": num_frames,
        "fps": FPS,
        "samples": records,
    }
    (folder / INDEX_FILE).write_text(json.dumps(index, indent=1) + "\n", encoding="utf-8")
    return folder


def _read_index(folder: Path) -> dict[str, Any] | None:
    """The folder's index (None without one); a clear error for a broken one."""
    path = folder / INDEX_FILE
    if not path.is_file():
        return None
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except json.JSONDecodeError as error:
        raise ValueError(
            f"{path} is not valid JSON ({error}): delete the folder to write it again"
        ) from error


def check_eval_set(folder: str | os.PathLike, regime: str, seed: int | None = None) -> None:
    """Raise ValueError unless ``folder``'s held-out set is of ``regime`` (and of stream ``seed``, if
    given): the two regimes' sets never mix. A folder without an index passes (it is written later).

    The index's ``regime`` (absent in sets written before the realistic regime: ``"original"``) and
    ``seed`` are compared with the arguments.
    """
    _regime(regime)
    folder = Path(folder)
    index = _read_index(folder)
    if index is None:
        return
    held = index.get("regime", "original")
    if held != regime:
        raise ValueError(
            f"{folder} holds the {held} regime's synthetic set, not the {regime} regime's: give "
            f"--regime {held}, or another folder for the {regime} set"
        )
    if seed is not None and index.get("seed") != seed:
        raise ValueError(
            f"{folder} holds the synthetic set of seed {index.get('seed')}, not of seed {seed}: choose "
            "another folder"
        )


def _existing_records(
    folder: Path, seed: int, size: int, num_frames: int, regime: str = "original"
) -> list[dict[str, Any]]:
    """The samples an existing index of the same set lists (``[]`` without an index)."""
    index = _read_index(folder)
    if index is None:
        return []
    check_eval_set(folder, regime)
    held = tuple(index.get(k) for k in ("format", "seed", "size", "num_frames"))
    if held != (_FORMAT_VERSION, seed, size, num_frames):
        raise ValueError(
            f"{folder} holds another synthetic set (format, seed, size, frames = {held}, wanted "
            f"{(_FORMAT_VERSION, seed, size, num_frames)}): choose another folder"
        )
    return list(index["samples"])


def demo_clip(path: str | os.PathLike = "clip.mp4", sample: int = 0) -> tuple[Path, str]:
    """Write held-out sample ``sample`` as a video file and return it with its multiple-choice prompt.

    What ``prunevid demo`` asks, for trying the bundled model (:data:`MODEL_DIR`) offline: 16 frames of
    224x224 at :data:`FPS`, written with :func:`prunevid.synthetic.write_video`.

    Returns:
        ``(path, prompt)``: the video file, and the question with its options A-D and the answer instruction.
    """
    from prunevid.evaluation import format_prompt
    from prunevid.synthetic import write_video

    qa = make_sample(EVAL_SEED, sample)
    return write_video(qa.frames, path, fps=FPS), format_prompt(qa.question, qa.options)
