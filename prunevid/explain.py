"""See what the model still sees: which parts of a video reached the LLM's last layer after pruning.

:func:`explain` answers a question about one or more videos under each method asked for (PruneVid presets,
reference methods) with the model's real ``generate``, reads the pruner's statistics of the prefill and
draws, for every video:

- a contact sheet (PNG): each sampled frame with its LLM tokens drawn as cells. A token that reached the last
  layer is drawn at full brightness (the frame's own pixels); a token merged into another one that reached
  it is tinted with that representative's colour (one colour per merged token); a dropped token is dimmed.
  Under each frame a bar shows how many of its tokens are left after each stage. Methods are rows, side by
  side on the same frames;
- optionally an MP4 of the same overlay at the sampled frame rate (methods side by side in each frame);
- the counts per token frame and stage, in ``explain.json``.

The model family only decides where a video's tokens are in the prompt and their grid
(:func:`read_video_tokens`: one run of video tokens per video, or one run per frame group for Qwen3-VL).
Everything else works on :class:`VideoTokens` and the stats' ``merged_into`` / ``kept_indices`` (prompt
positions), whatever the family.

A temporal token covers 2 sampled frames (``temporal_patch_size``), so both frames of a pair show the same
tokens; the grid is the processor's ``video_grid_thw`` with ``h`` and ``w`` divided by the spatial merge
size: cells of ``28 x 28`` pixels for Qwen2/2.5-VL, ``32 x 32`` for Qwen3-VL (frames the processor resized
are split into the grid's cells as evenly as their pixels allow).
"""

from __future__ import annotations

import colorsys
import json
import os
import sys
import types
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from prunevid.config import PRESETS, PruneVidConfig
from prunevid.stats import PruneStats, VideoStats
from prunevid.video import DEFAULT_MAX_PIXELS, MAX_FRAMES, VideoClip, load_video

if TYPE_CHECKING:  # torch, transformers and Pillow load when a function needs them
    import torch
    from PIL import Image

__all__ = [
    "DROPPED",
    "KEPT",
    "MERGED",
    "Explanation",
    "MethodResult",
    "TokenMap",
    "VideoTokens",
    "explain",
    "overlay_frame",
    "read_video_tokens",
    "video_token_runs",
    "token_map",
]

# State of a video token after the prefill (TokenMap.state).
DROPPED = 0  # removed by Stage 1 (a reference method), Stage 2, or merged into a token that was removed
MERGED = 1  # merged by Stage 1 into another token that reached the last layer
KEPT = 2  # reached the last layer as itself (a merged token is named by its representative)

DIM = 0.3  # a dropped token's pixels are multiplied by this
TINT = 0.5  # a merged token's pixels are mixed with its representative's colour by this much
JSON_NAME = "explain.json"
# prunevid.reference_methods.METHODS, restated: that module imports torch (tests check they agree).
REFERENCE_METHOD_NAMES = ("random", "uniform_frames", "evs", "fastv")


# --------------------------------------------------------------------------------------------------------
# Where a video's tokens are (per model family)


@dataclass(frozen=True)
class VideoTokens:
    """Where one video's LLM tokens are in the prompt.

    Attributes:
        grid: ``(T', h', w')``: token frames and token rows and columns of each.
        positions: ``int64 [T' * h' * w']`` prompt position of each token, in grid order (t, row, col).
        frames_per_step: sampled frames one token frame covers (``temporal_patch_size``: 2).
    """

    grid: tuple[int, int, int]
    positions: np.ndarray
    frames_per_step: int


def video_token_runs(
    model_config: Any, inputs: Any, *, frame_groups: bool = False
) -> list[list[VideoTokens]]:
    """The Qwen VL layout: a video's tokens are runs of ``video_token_id`` in the prompt, in grid order; its
    grid is the processor's ``video_grid_thw`` row with ``h`` and ``w`` divided by the spatial merge size.

    Args:
        model_config: ``model.config`` (``video_token_id``, ``vision_config.spatial_merge_size`` and
            ``temporal_patch_size``).
        inputs: processor outputs with ``input_ids [B, L]`` and ``video_grid_thw [V, 3]``.
        frame_groups: False: one run per video (Qwen2-VL, Qwen2.5-VL); True: ``T'`` runs of ``h' * w'``
            tokens per video, one per frame group, between timestamp texts (Qwen3-VL).

    Returns:
        Per sample, per video, its :class:`VideoTokens`.
    """
    input_ids = np.asarray(_to_numpy(inputs["input_ids"]))
    grid_thw = inputs.get("video_grid_thw")
    if grid_thw is None:
        raise ValueError(
            "explain needs the processor's video_grid_thw; pass the processor's outputs unchanged"
        )
    merge = int(model_config.vision_config.spatial_merge_size)
    grids = [
        (int(t), int(h) // merge, int(w) // merge)
        for t, h, w in np.asarray(_to_numpy(grid_thw)).reshape(-1, 3)
    ]
    frames_per_step = int(getattr(model_config.vision_config, "temporal_patch_size", 2))
    is_video = np.pad(input_ids == model_config.video_token_id, ((0, 0), (1, 1)))
    change = np.diff(is_video.astype(np.int8), axis=1)
    runs = [
        (b, start, end)
        for b in range(input_ids.shape[0])
        for start, end in zip(np.flatnonzero(change[b] == 1), np.flatnonzero(change[b] == -1), strict=True)
    ]
    out: list[list[VideoTokens]] = [[] for _ in range(input_ids.shape[0])]
    cursor = 0
    for grid in grids:
        count = grid[0] if frame_groups else 1
        mine = runs[cursor : cursor + count]
        cursor += count
        size = grid[1] * grid[2] * (1 if frame_groups else grid[0])
        if len(mine) != count or any(end - start != size or b != mine[0][0] for b, start, end in mine):
            raise ValueError(
                f"the prompt's runs of video tokens do not match the video grid {grid}; "
                "pass the processor's outputs unchanged"
            )
        positions = np.concatenate([np.arange(start, end, dtype=np.int64) for _, start, end in mine])
        out[mine[0][0]].append(VideoTokens(grid, positions, frames_per_step))
    if cursor != len(runs):
        raise ValueError(
            f"the prompt has {len(runs)} runs of video tokens but video_grid_thw describes {cursor}; "
            "pass the processor's outputs unchanged"
        )
    return out


def read_video_tokens(model_config: Any, inputs: Any) -> list[list[VideoTokens]]:
    """Where every video's tokens are in a batch of processor outputs, by the model family's layout.

    The family (:data:`prunevid.models.registry.FAMILIES`, by ``model_config.model_type``) says whether a
    video is one run of video tokens (Qwen2-VL, Qwen2.5-VL) or one run per frame group (Qwen3-VL,
    ``Family.frame_groups``); :func:`video_token_runs` reads either. A family with another layout would
    add its reader here, and nothing else in this module changes.

    Args:
        model_config: the model's config (``model.config``).
        inputs: the processor's outputs (``input_ids [B, L]``, ``video_grid_thw [V, 3]``...).

    Returns:
        Per sample, per video in prompt order, its :class:`VideoTokens`.

    Raises:
        ValueError: an unsupported model family, or inputs that do not match their grids.
    """
    from prunevid.models.registry import FAMILIES

    model_type = getattr(model_config, "model_type", None)
    family = FAMILIES.get(model_type)
    if family is None:
        raise ValueError(
            f"explain cannot read the video token grid of a {model_type!r} model; "
            f"supported: {', '.join(FAMILIES)}"
        )
    return video_token_runs(model_config, inputs, frame_groups=family.frame_groups)


def _to_numpy(value: Any) -> Any:
    return value.detach().cpu().numpy() if hasattr(value, "detach") else value


# --------------------------------------------------------------------------------------------------------
# Token states from the stats


@dataclass(frozen=True)
class TokenMap:
    """What a prefill left of one video's tokens, on its grid.

    Attributes:
        grid: ``(T', h', w')``.
        state: ``int8 [T', h', w']``: :data:`KEPT`, :data:`MERGED` or :data:`DROPPED`.
        representative: ``int64 [T', h', w']`` grid index (``t * h' * w' + row * w' + col``) of the
            representative of the Stage-1 token that holds each token (its own index when it was not
            merged); -1 for a token a reference method dropped before the LLM.
        frames_per_step: sampled frames one token frame covers.
    """

    grid: tuple[int, int, int]
    state: np.ndarray
    representative: np.ndarray
    frames_per_step: int

    def token_frame(self, frame: int) -> int:
        """The token frame sampled frame ``frame`` belongs to (``frame // frames_per_step``)."""
        return min(frame // self.frames_per_step, self.grid[0] - 1)

    def counts(self) -> list[dict[str, int]]:
        """Per token frame: ``tokens`` (``h' * w'``), ``after_stage1`` (Stage-1 tokens whose representative
        is in this frame), ``after_stage2`` (tokens drawn bright: they reached the last layer),
        ``merged`` (tinted) and ``dropped`` (dimmed)."""
        frames, height, width = self.grid
        flat_rep = self.representative.reshape(frames, -1)
        own = flat_rep == np.arange(frames * height * width).reshape(frames, -1)
        state = self.state.reshape(frames, -1)
        return [
            {
                "tokens": height * width,
                "after_stage1": int(own[t].sum()),
                "after_stage2": int((state[t] == KEPT).sum()),
                "merged": int((state[t] == MERGED).sum()),
                "dropped": int((state[t] == DROPPED).sum()),
            }
            for t in range(frames)
        ]


def token_map(stats: VideoStats, tokens: VideoTokens) -> TokenMap:
    """Place one video's statistics on its token grid.

    A token is :data:`KEPT` when its prompt position is in ``stats.kept_indices``, :data:`MERGED` when
    ``stats.merged_into`` names another token that is kept, else :data:`DROPPED`.

    Args:
        stats: the video's :class:`~prunevid.stats.VideoStats` (``merged_into`` ``[n]`` in grid order and
            ``kept_indices``: prompt positions).
        tokens: where the video's ``n = T' * h' * w'`` tokens are (:func:`read_video_tokens`).

    Raises:
        ValueError: statistics that do not describe this video (another token count, positions outside it).
    """
    frames, height, width = tokens.grid
    n = frames * height * width
    if stats.tokens_in != n or len(tokens.positions) != n:
        raise ValueError(
            f"the stats describe {stats.tokens_in} video tokens but the grid {tokens.grid} has {n}"
        )
    index_of = {int(p): i for i, p in enumerate(tokens.positions.tolist())}
    merged_into = stats.merged_into if stats.merged_into else tokens.positions.tolist()
    if len(merged_into) != n:
        raise ValueError(f"merged_into has {len(merged_into)} entries for {n} video tokens")
    try:
        representative = np.array([index_of[p] if p >= 0 else -1 for p in merged_into], dtype=np.int64)
        kept = np.array([index_of[p] for p in stats.kept_indices], dtype=np.int64)
    except KeyError as error:
        raise ValueError(f"prompt position {error.args[0]} is not one of this video's tokens") from None
    is_kept = np.zeros(n, dtype=bool)
    is_kept[kept] = True
    if not np.all(representative[kept] == kept):
        raise ValueError("a kept token is not its own representative: the stats are inconsistent")
    state = np.full(n, DROPPED, dtype=np.int8)
    state[is_kept[representative.clip(min=0)] & (representative >= 0)] = MERGED
    state[is_kept] = KEPT
    return TokenMap(
        grid=tokens.grid,
        state=state.reshape(tokens.grid),
        representative=representative.reshape(tokens.grid),
        frames_per_step=tokens.frames_per_step,
    )


# --------------------------------------------------------------------------------------------------------
# Drawing


def representative_colour(index: int) -> tuple[int, int, int]:
    """A bright colour for the merged token whose representative has grid index ``index`` (golden-ratio
    hues, so neighbouring indices differ): RGB with one channel at 255."""
    red, green, blue = colorsys.hsv_to_rgb((index * 0.618033988749895) % 1.0, 0.85, 1.0)
    return round(red * 255), round(green * 255), round(blue * 255)


def cell_index(height: int, width: int, rows: int, columns: int) -> np.ndarray:
    """``int64 [height, width]``: the token cell (``row * columns + col``) each pixel of a frame lies in,
    cells split as evenly as the pixel counts allow (exactly 28 or 32 pixels a side for unresized frames)."""
    row_of = (np.arange(height) * rows) // height
    col_of = (np.arange(width) * columns) // width
    return row_of[:, None] * columns + col_of[None, :]


def overlay_frame(frame: np.ndarray, state: np.ndarray, representative: np.ndarray) -> np.ndarray:
    """One frame with its token frame's states drawn on it.

    Args:
        frame: ``uint8 [H, W, 3]`` RGB, the frame as the processor got it.
        state: ``int8 [h', w']`` the token frame's states (:attr:`TokenMap.state` ``[t]``).
        representative: ``int64 [h', w']`` grid index of each token's representative.

    Returns:
        ``uint8 [H, W, 3]``: kept cells exactly the frame's pixels, merged cells mixed with their
        representative's colour (:func:`representative_colour`), dropped cells dimmed.
    """
    rows, columns = state.shape
    cells = cell_index(frame.shape[0], frame.shape[1], rows, columns)
    pixel_state = state.reshape(-1)[cells]
    out = frame.astype(np.float32)
    tint = np.zeros((rows * columns, 3), dtype=np.float32)
    for cell in np.flatnonzero(state.reshape(-1) == MERGED):
        tint[cell] = representative_colour(int(representative.reshape(-1)[cell]))
    merged = pixel_state == MERGED
    out[merged] = (1.0 - TINT) * out[merged] + TINT * tint[cells[merged]]
    out[pixel_state == DROPPED] *= DIM
    result = np.rint(out).astype(np.uint8)
    result[pixel_state == KEPT] = frame[pixel_state == KEPT]
    return result


def overlay_frames(clip_frames: np.ndarray, tokens: TokenMap) -> np.ndarray:
    """Every sampled frame with its token frame's overlay: ``uint8 [T, H, W, 3]`` -> same shape
    (frame ``f`` shows token frame ``f // frames_per_step``)."""
    frames = np.asarray(clip_frames)
    out = np.empty_like(frames)
    for f in range(len(frames)):
        t = tokens.token_frame(f)
        out[f] = overlay_frame(frames[f], tokens.state[t], tokens.representative[t])
    return out


def _font(size: int) -> Any:
    from PIL import ImageFont

    try:
        return ImageFont.load_default(size=size)
    except (TypeError, OSError, ImportError):  # Pillow < 10.1 or without FreeType: the fixed bitmap font
        return ImageFont.load_default()


def _fit(text: str, draw: Any, font: Any, width: int) -> str:
    """``text`` on one line (line breaks become spaces), cut with an ellipsis to fit ``width`` pixels."""
    text = " ".join(text.splitlines())
    if draw.textlength(text, font=font) <= width:
        return text
    while text and draw.textlength(text + "...", font=font) > width:
        text = text[:-1]
    return text + "..."


BAR_COLOURS = ((110, 110, 110), (90, 150, 230), (250, 250, 250))  # tokens, after stage 1, after stage 2


def contact_sheet(
    clip_frames: np.ndarray,
    rows: Sequence[tuple[str, TokenMap]],
    *,
    title: Sequence[str] = (),
    columns: int = 8,
    tile_width: int = 160,
    frame_times: Sequence[float] | None = None,
) -> Image.Image:
    """The contact sheet of one video: frames in bands of ``columns``, one row of overlays per method.

    Args:
        clip_frames: ``uint8 [T, H, W, 3]`` the sampled frames.
        rows: ``(label, TokenMap)`` per method, drawn in this order.
        title: lines written above the frames (question, answers).
        columns: frames per band.
        tile_width: width of one frame on the sheet, in pixels (aspect ratio kept).
        frame_times: seconds of each sampled frame in the source video, for the frame labels.

    Returns:
        A Pillow RGB image. Under each frame, three bars over the frame's token count: all its tokens
        (grey), Stage-1 tokens whose representative is in it (blue), tokens that reached the last layer
        (white), and the numbers.
    """
    from PIL import Image, ImageDraw

    frames = np.asarray(clip_frames)
    count, height, width = frames.shape[:3]
    tile_height = max(1, round(height * tile_width / width))
    font, small = _font(13), _font(11)
    label_width, gap, bar_height, caption = 110, 6, 24, 16
    columns = max(1, min(columns, count))
    bands = -(-count // columns)
    row_height = tile_height + bar_height + gap
    band_height = caption + len(rows) * row_height + gap
    legend = [
        "bright: reached the last layer   tinted: merged into the token of that colour   dim: dropped",
        "bars per frame: its tokens (grey) > after Stage 1 (blue) > after Stage 2 (white)",
    ]
    header = (len(title) + len(legend)) * 17 + gap
    sheet_width = label_width + columns * (tile_width + gap) + gap
    sheet = Image.new("RGB", (sheet_width, header + bands * band_height), (24, 24, 24))
    draw = ImageDraw.Draw(sheet)
    for i, line in enumerate([*title, *legend]):
        colour = (235, 235, 235) if i < len(title) else (170, 170, 170)
        draw.text((gap, gap + 17 * i), _fit(line, draw, font, sheet_width - 2 * gap), fill=colour, font=font)
    all_counts = [tokens.counts() for _, tokens in rows]
    for f in range(count):
        band, column = divmod(f, columns)
        x = label_width + column * (tile_width + gap)
        top = header + band * band_height
        when = f" ({frame_times[f]:.1f} s)" if frame_times is not None else ""
        draw.text((x, top), f"frame {f}{when}", fill=(200, 200, 200), font=small)
        for r, (label, tokens) in enumerate(rows):
            y = top + caption + r * row_height
            if column == 0:
                draw.text(
                    (gap, y + 2), _fit(label, draw, font, label_width - 2 * gap), fill=(235,) * 3, font=font
                )
            t = tokens.token_frame(f)
            drawn = overlay_frame(frames[f], tokens.state[t], tokens.representative[t])
            sheet.paste(
                Image.fromarray(drawn).resize((tile_width, tile_height), Image.Resampling.BOX), (x, y)
            )
            numbers = all_counts[r][t]
            values = (numbers["tokens"], numbers["after_stage1"], numbers["after_stage2"])
            for k, (value, colour) in enumerate(zip(values, BAR_COLOURS, strict=True)):
                length = round(tile_width * 0.5 * value / max(1, numbers["tokens"]))
                bar_y = y + tile_height + 2 + 6 * k
                draw.rectangle((x, bar_y, x + max(length, 1) - 1, bar_y + 4), fill=colour)
            draw.text(
                (x + round(tile_width * 0.53), y + tile_height + 3),
                " > ".join(str(v) for v in values),
                fill=(220, 220, 220),
                font=small,
            )
    return sheet


def side_by_side_video(
    clip_frames: np.ndarray, rows: Sequence[tuple[str, TokenMap]], path: str | os.PathLike, fps: float
) -> Path:
    """Write the overlay of every method side by side, one MP4 frame per sampled frame, at ``fps``.

    Args:
        clip_frames: ``uint8 [T, H, W, 3]``.
        rows: ``(label, TokenMap)`` per method, left to right.
        path: the ``.mp4`` file (OpenCV's ``mp4v`` writer, :func:`prunevid.synthetic.write_video`).
        fps: frames per second of the file (the clip's sampled rate).

    Returns:
        ``path``; the file has ``T`` frames of ``H + 20`` x ``len(rows) * W`` (each labelled on top).
    """
    from PIL import Image, ImageDraw

    from prunevid.synthetic import write_video

    frames = np.asarray(clip_frames)
    count, height, width = frames.shape[:3]
    strip = Image.new("RGB", (width * len(rows), 20), (24, 24, 24))
    draw = ImageDraw.Draw(strip)
    for r, (label, _) in enumerate(rows):
        draw.text(
            (r * width + 4, 3), _fit(label, draw, _font(12), width - 8), fill=(235,) * 3, font=_font(12)
        )
    labels = np.asarray(strip)
    out = np.empty((count, height + 20, width * len(rows), 3), dtype=np.uint8)
    for f in range(count):
        out[f, :20] = labels
        for r, (_, tokens) in enumerate(rows):
            t = tokens.token_frame(f)
            drawn = overlay_frame(frames[f], tokens.state[t], tokens.representative[t])
            out[f, 20:, r * width : (r + 1) * width] = drawn
    if out.shape[1] % 2 or out.shape[2] % 2:  # the codec wants even sides
        out = np.pad(out, ((0, 0), (0, out.shape[1] % 2), (0, out.shape[2] % 2), (0, 0)))
    return write_video(out, path, fps=fps)


# --------------------------------------------------------------------------------------------------------
# Running the methods


@dataclass
class MethodResult:
    """One method's pruned prefill and answer.

    Attributes:
        name: the preset or reference method name (or ``"config N"`` for an unnamed config).
        config: what was attached.
        answer: the model's greedy answer under it.
        stats: the pruner's statistics of the prefill.
        token_maps: per video of the prompt, its :class:`TokenMap`.
    """

    name: str
    config: PruneVidConfig
    answer: str
    stats: PruneStats
    token_maps: list[TokenMap]


@dataclass
class Explanation:
    """What :func:`explain` found and wrote.

    Attributes:
        question: the question asked.
        clips: the sampled videos, in prompt order.
        sources: where each video came from (its path, or ``"clip"`` for a given :class:`VideoClip`).
        methods: one :class:`MethodResult` per method, in the order asked.
        files: paths written: ``"json"``, ``"sheets"`` (one PNG per video), ``"videos"`` (one MP4 per video
            with ``video=True``); empty without an output folder.
    """

    question: str
    clips: list[VideoClip]
    sources: list[str]
    methods: list[MethodResult]
    files: dict[str, Any] = field(default_factory=dict)

    def to_dict(self) -> dict[str, Any]:
        """The JSON record (what ``explain.json`` holds): per video its frames and grid; per method its
        answer, totals and, per video and token frame, the sampled frames it covers and its counts."""
        videos = []
        for v, clip in enumerate(self.clips):
            grid = self.methods[0].token_maps[v].grid
            videos.append(
                {
                    "source": self.sources[v],
                    "num_frames": int(clip.frames.shape[0]),
                    "frame_width": int(clip.frames.shape[2]),
                    "frame_height": int(clip.frames.shape[1]),
                    "sampled_fps": clip.sampled_fps,
                    "source_frame_indices": [int(i) for i in clip.frame_indices],
                    "token_grid": list(grid),
                    "notes": list(clip.notes),
                }
            )
        methods = {}
        for method in self.methods:
            per_video = []
            for v, tokens in enumerate(method.token_maps):
                stats = method.stats.samples[0].videos[v]
                frames = []
                for t, counts in enumerate(tokens.counts()):
                    first = t * tokens.frames_per_step
                    covered = list(
                        range(first, min(first + tokens.frames_per_step, len(self.clips[v].frames)))
                    )
                    frames.append({"token_frame": t, "frames": covered, **counts})
                per_video.append(
                    {
                        "tokens_in": stats.tokens_in,
                        "tokens_after_stage1": stats.tokens_after_stage1,
                        "tokens_after_stage2": stats.tokens_after_stage2,
                        "retention": stats.retention,
                        "token_frames": frames,
                    }
                )
            methods[method.name] = {
                "answer": method.answer,
                "retention": method.stats.retention,
                "videos": per_video,
            }
        files = {k: [str(p) for p in v] if isinstance(v, list) else str(v) for k, v in self.files.items()}
        return {"question": self.question, "videos": videos, "methods": methods, "files": files}


def check_methods(names: Sequence[str], retention: float | None = None) -> list[str]:
    """Check preset and reference-method names before anything loads; returns them without duplicates.

    Raises:
        ValueError: an unknown name (naming the allowed ones), a retention outside (0, 1], or a reference
            method with no retention to match (no ``retention`` and no preset that prunes).
    """
    allowed = (*PRESETS, *REFERENCE_METHOD_NAMES)
    out: list[str] = []
    for name in names:
        if name not in allowed:
            raise ValueError(
                f"unknown method {name!r}: choose presets or reference methods from {', '.join(allowed)}"
            )
        if name not in out:
            out.append(name)
    if not out:
        raise ValueError("no method to explain: give at least one preset or reference method")
    if retention is not None and not (isinstance(retention, (int, float)) and 0.0 < retention <= 1.0):
        raise ValueError(f"retention={retention!r} is invalid: allowed is a number in (0, 1]")
    references = [name for name in out if name in REFERENCE_METHOD_NAMES]
    prunes = any(PRESETS[n].enable_stage1 or PRESETS[n].enable_stage2 for n in out if n in PRESETS)
    if references and retention is None and not prunes:
        raise ValueError(
            f"{references[0]} keeps a given share of the video tokens: give a retention (--retention 0.1), "
            "or add a preset that prunes (paper) whose retention it then matches"
        )
    return out


def _config_name(config: PruneVidConfig, index: int) -> str:
    method = getattr(config, "method", None)
    if method is not None:
        return str(method)
    return next((name for name, preset in PRESETS.items() if preset == config), f"config {index}")


def build_video_inputs(
    processor: Any, clips: Sequence[VideoClip], question: str, *, system_prompt: str | None = None
) -> Any:
    """One conversation with every clip then the question, as processor outputs (batch 1).

    One clip: exactly :func:`prunevid.prompt.build_inputs`. Several: the same chat template and processor
    options (:func:`prunevid.prompt.video_kwargs`), the videos one after another in the user turn.

    Returns:
        The processor's ``BatchFeature``: ``input_ids [1, L]``, ``pixel_values_videos``,
        ``video_grid_thw [V, 3]``...
    """
    from prunevid.prompt import build_inputs, build_messages, video_kwargs

    if len(clips) == 1:
        return build_inputs(processor, clips[0], question, system_prompt=system_prompt)
    if not isinstance(question, str) or not question.strip():
        raise ValueError("the question must be a non-empty string: PruneVid selects tokens by the question")
    for i, clip in enumerate(clips):
        if not isinstance(clip, VideoClip):
            raise TypeError(f"clip {i}: expected a VideoClip, got {type(clip).__name__}")
    messages = build_messages(question, system_prompt=system_prompt)
    messages[-1]["content"] = [*({"type": "video"} for _ in clips), {"type": "text", "text": question}]
    text = processor.apply_chat_template(messages, add_generation_prompt=True, tokenize=False)
    kwargs = video_kwargs(processor, clips)  # each family's timing, as build_inputs passes it
    return processor(text=[text], videos=[c.frames for c in clips], return_tensors="pt", **kwargs)


def _run_method(model: Any, inputs: Any, max_new_tokens: int, processor: Any) -> tuple[str, PruneStats]:
    """generate() with the attached pruner: ``(answer, stats of the prefill)``."""
    import torch

    from prunevid.models import pruner_of

    with torch.inference_mode():
        output = model.generate(**inputs, max_new_tokens=max_new_tokens, do_sample=False)
    text = processor.batch_decode(
        [output[0, inputs["input_ids"].shape[1] :].tolist()], skip_special_tokens=True
    )
    return text[0].strip(), pruner_of(model).last_stats


def explain(
    model: torch.nn.Module,
    processor: Any,
    videos: str | os.PathLike | VideoClip | Sequence[str | os.PathLike | VideoClip],
    question: str,
    out_dir: str | os.PathLike | None = None,
    *,
    methods: Sequence[str | PruneVidConfig] | None = None,
    retention: float | None = None,
    video: bool = False,
    fps: float | None = None,
    num_frames: int | None = None,
    max_frames: int = MAX_FRAMES,
    max_pixels: int | None = DEFAULT_MAX_PIXELS,
    max_new_tokens: int = 32,
    system_prompt: str | None = None,
    columns: int = 8,
    tile_width: int = 160,
    sources: Sequence[str] | None = None,
    progress: Callable[[str], Any] | None = None,
) -> Explanation:
    """Answer ``question`` about ``videos`` under each method and draw what reached the LLM's last layer.

    Every method runs one ``generate`` (greedy, its prefill pruned) on the same frames and prompt; the
    pruner's statistics of the prefill give each video token's fate (:func:`token_map`).

    Args:
        model: a supported model (Qwen2.5-VL, Qwen2-VL, Qwen3-VL, Qwen3-VL-MoE). With ``methods=None`` the
            pruner attached to it is used (:func:`prunevid.load` attaches one); otherwise no pruner may be
            attached: each method is attached in turn and detached after.
        processor: its processor.
        videos: one video (file, frame folder, or :class:`VideoClip`) or several, all in one prompt.
        question: asked after the videos in one user turn.
        out_dir: folder for ``explain.json``, ``video<i>.png`` (one contact sheet per video) and, with
            ``video=True``, ``video<i>.mp4``; None writes nothing.
        methods: presets (``"paper"``...), reference methods (``"random"``, ``"uniform_frames"``,
            ``"evs"``, ``"fastv"``) or configs, drawn side by side in this order.
        retention: video-token retention of the reference methods; None: the retention the first
            PruneVid method reached on this prompt.
        video: also write the MP4 of the overlays (methods side by side) at the sampled frame rate.
        fps / num_frames / max_frames / max_pixels: frame sampling of a file, as :func:`prunevid.ask`.
        max_new_tokens: answer length.
        system_prompt: optional system message.
        columns / tile_width: frames per band of a sheet, and the width of one frame on it (pixels).
        sources: names of the videos for ``explain.json`` (default their paths; ``"clip"`` for a
            :class:`VideoClip`).
        progress: called with a short line as each method starts (the CLI prints it).

    Returns:
        An :class:`Explanation` (answers, stats, token maps, files written).

    Raises:
        ValueError: an empty question, an unknown method, a reference method without a retention to
            match, a pruner attached while ``methods`` is given (or none attached without it), bad frames.
        FileNotFoundError / RuntimeError: a video that does not exist or does not decode.
    """
    from prunevid.models import attach, pruner_of
    from prunevid.reference_methods import METHODS, reference_config

    if not isinstance(question, str) or not question.strip():
        raise ValueError("the question must be a non-empty string: PruneVid selects tokens by the question")
    items = list(videos) if isinstance(videos, (list, tuple)) else [videos]
    if not items:
        raise ValueError("no video to explain")
    attached = pruner_of(model)
    if methods is None:
        if attached is None:
            raise ValueError(
                "no pruner is attached to the model: attach one (prunevid.load or prunevid.attach) "
                "or pass methods=['paper', ...]"
            )
        wanted: list[str | PruneVidConfig] = [attached.config]
    else:
        if attached is not None:
            raise ValueError(
                "explain attaches each method in turn, but a pruner is attached to the model: "
                "call pruner.detach() first, or pass methods=None to explain the attached one"
            )
        wanted = list(methods)
        check_methods([m for m in wanted if isinstance(m, str)] or ["baseline"], retention)
        if not wanted:
            raise ValueError("no method to explain: give at least one preset or reference method")
    clips, names = [], []
    for item in items:
        if isinstance(item, VideoClip):
            clips.append(item)
            names.append("clip")
        else:
            clips.append(
                load_video(item, fps=fps, num_frames=num_frames, max_frames=max_frames, max_pixels=max_pixels)
            )
            names.append(os.fspath(item))
    inputs = build_video_inputs(processor, clips, question, system_prompt=system_prompt).to(model.device)
    positions = read_video_tokens(model.config, inputs)[0]

    # PruneVid presets first: a reference method without a retention matches theirs.
    order = sorted(range(len(wanted)), key=lambda i: isinstance(wanted[i], str) and wanted[i] in METHODS)
    results: dict[int, MethodResult] = {}
    for i in order:
        item = wanted[i]
        if isinstance(item, str) and item in METHODS:
            if retention is None:
                pruned = [r for r in results.values() if r.stats.retention < 1.0]
                if not pruned:
                    raise ValueError(
                        f"{item} prunes to a given retention: pass retention=... (--retention), or add a "
                        "PruneVid preset that prunes (paper) to match its retention"
                    )
                chosen = pruned[0].stats.retention
            else:
                chosen = retention
            config: PruneVidConfig = reference_config(item, chosen)
        elif isinstance(item, str):
            config = PruneVidConfig.preset(item)
        elif isinstance(item, PruneVidConfig):
            config = item
        else:
            raise TypeError(f"a method is a name or a PruneVidConfig, got {type(item).__name__}")
        name = item if isinstance(item, str) else _config_name(config, i)
        if progress is not None:
            progress(f"answering ({name})")
        if methods is None:
            answer, stats = _run_method(model, inputs, max_new_tokens, processor)
        else:
            with attach(model, config):
                answer, stats = _run_method(model, inputs, max_new_tokens, processor)
        maps = [token_map(s, p) for s, p in zip(stats.samples[0].videos, positions, strict=True)]
        results[i] = MethodResult(name, config, answer, stats, maps)
    if sources is not None:
        if len(sources) != len(clips):
            raise ValueError(f"{len(sources)} source names for {len(clips)} videos")
        names = [str(source) for source in sources]
    explanation = Explanation(question, clips, names, [results[i] for i in range(len(wanted))])
    if out_dir is not None:
        if progress is not None:
            progress(f"drawing into {out_dir}")
        write(explanation, out_dir, video=video, columns=columns, tile_width=tile_width)
    return explanation


def _method_line(method: MethodResult, v: int) -> str:
    """One method on video ``v``: tokens per stage, retention and answer (a title line of the sheet)."""
    stats = method.stats.samples[0].videos[v]
    return (
        f"{method.name}: {stats.tokens_in} tokens -> {stats.tokens_after_stage1} after stage 1 -> "
        f"{stats.tokens_after_stage2} after stage 2 ({stats.retention:.1%} kept); answer: {method.answer!r}"
    )


def write(
    explanation: Explanation,
    out_dir: str | os.PathLike,
    *,
    video: bool = False,
    columns: int = 8,
    tile_width: int = 160,
) -> dict[str, Any]:
    """Write ``explain.json``, one contact sheet ``video<i>.png`` per video and, with ``video=True``,
    ``video<i>.mp4``, into ``out_dir`` (created); records and returns the paths in ``explanation.files``.

    Raises:
        FileExistsError: ``out_dir`` is a file.
    """
    out = Path(out_dir)
    if out.exists() and not out.is_dir():
        raise FileExistsError(f"{out} is a file: the output must be a folder")
    out.mkdir(parents=True, exist_ok=True)
    sheets, movies = [], []
    for v, clip in enumerate(explanation.clips):
        rows = [(m.name, m.token_maps[v]) for m in explanation.methods]
        prefix = f"video {v}: " if len(explanation.clips) > 1 else ""
        title = [f"{prefix}{explanation.question}"] + [_method_line(m, v) for m in explanation.methods]
        times = (np.asarray(clip.frame_indices, dtype=np.float64) / clip.source_fps).tolist()
        sheet = contact_sheet(
            clip.frames, rows, title=title, columns=columns, tile_width=tile_width, frame_times=times
        )
        sheets.append(out / f"video{v}.png")
        sheet.save(sheets[-1], optimize=True)
        if video:
            movies.append(side_by_side_video(clip.frames, rows, out / f"video{v}.mp4", fps=clip.sampled_fps))
    explanation.files = {"json": out / JSON_NAME, "sheets": sheets}
    if video:
        explanation.files["videos"] = movies
    record = explanation.to_dict()
    (out / JSON_NAME).write_text(json.dumps(record, indent=1) + "\n", encoding="utf-8")
    return explanation.files


class _CallableModule(types.ModuleType):
    """``prunevid.explain(...)`` calls :func:`explain` even once this module has been imported as
    ``prunevid.explain`` (the import system then sets the package attribute to the module)."""

    def __call__(self, *args: Any, **kwargs: Any) -> Explanation:
        return explain(*args, **kwargs)


sys.modules[__name__].__class__ = _CallableModule
