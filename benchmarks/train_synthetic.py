"""Train a small Qwen2.5-VL from scratch on synthetic video QA: an offline accuracy signal for pruning.

    python benchmarks/train_synthetic.py --out OUT/synthetic-model            # GPU, ~7 minutes in all
    python benchmarks/train_synthetic.py --smoke --out /tmp/synthetic-smoke   # CPU, well under a minute

The model in ``prunevid/data/synthetic-model`` took several runs, each continued from the one before with
``--init`` (their settings and logs: ``benchmarks/results/train_synthetic_*.json``, docs/synthetic.md).

``--regime realistic`` trains on the generator's realistic regime (448x448, 32 frames: 4096 video tokens,
panning backgrounds; :data:`prunevid.synthetic_qa.REGIMES`) and scores progress on held-out seed
:data:`REALISTIC_PROGRESS_SEED` (none of the accuracy protocol's seeds). The two realistic models were
continued from the shipped one, side by side on one H200 (each with 7 data workers; the GPU was the limit,
about 40 clips/s each), and differ only in ``--token-dropout``:

    python benchmarks/train_synthetic.py --regime realistic --init prunevid/data/synthetic-model --seed 3 \
        --batch-size 16 --lr 3e-4 --final-lr-ratio 0.1 --warmup-steps 40 --open-fraction 0.2 \
        --copy-fraction 0 --no-letters --eval-size 240 --eval-subset 48 --eval-every-s 180 \
        --eval-batch-size 20 --workers 7 --eval-workers 8 --prefetch 2 --time-budget-s 390 \
        [--token-dropout 0.5] --out OUT/synthetic-model-realistic[-dropout]

Every batch is of the realistic regime (no original-regime batches are mixed in): each regime has its
own bundled model, so the realistic ones need not keep the original regime's skill.

The model is the real ``Qwen2_5_VLForConditionalGeneration`` (random init from a hub-layout config written
by :func:`prunevid.tiny.write_model_files`), trained on :mod:`prunevid.synthetic_qa` clips (224x224,
16 frames at 2 fps: 512 video tokens) with the multiple-choice prompt of :mod:`prunevid.evaluation`.

Pipeline:

1. Write the checkpoint's tokenizer / processor / config files to ``--out``; write the held-out set
   (:func:`~prunevid.synthetic_qa.write_eval_set`, real MPEG-4 files, ``--eval-seed``) and decode it
   back with :func:`prunevid.video.load_video`, as users' evaluations do.
2. Worker processes (spawned, ``--workers``) render training batches from ``--seed`` (batch ``k``
   depends only on ``(seed, k)``, whatever the worker count) and tokenize the prompts; frames travel as
   uint8 through shared memory and pinned buffers. Multiple-choice questions are answered "the cross is
   red (B)": the object asked about, the option, its letter (``--no-letters``: without the letter; the
   harness reads the option's text). Some training questions (``--open-fraction``) come without
   options, some (``--copy-fraction``) ask "Which option says red?". Every held-out question is
   multiple choice.
3. On the device: the processor's patchify (an exact equivalent, checked against the processor by the
   tests), half of each batch with mild codec-like degradation (chroma subsampling, noise), with
   ``--token-dropout`` random video tokens hidden from attention (:func:`drop_video_tokens`); positions
   from the model's own ``get_rope_index`` (computed once, sliced per sample: positions depend only on
   the tokens before); the vision tower run once per batch with its per-window attention batched over
   equal windows (training only; checked against the stock forward). Loss on the answer tokens and
   ``<|im_end|>``, plus the token probe's (a linear head on the video tokens naming the colour, shape and
   motion of the object each one shows; not part of the checkpoint). AdamW, linear warmup then cosine,
   bf16 autocast on CUDA. The schedule follows wall-clock progress through ``--time-budget-s`` (or
   ``--steps`` for a step-deterministic run).
4. Held-out accuracy every ``--eval-every-s`` seconds on part of the held-out set; at the end the saved
   checkpoint is reloaded with ``from_pretrained`` / ``AutoProcessor`` and scored on the whole held-out
   set through the real processor: greedy ``generate``, the answer read by ``extract_choice`` as
   ``prunevid eval`` does.

Output in ``--out``: a checkpoint that loads on transformers 4.57 .. 5.x (``model.safetensors`` in
bfloat16 under hub names), ``training_log.json`` (seed, settings, sizes, loss curve, held-out accuracy,
timings, versions) and ``train.log``.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import math
import os
import platform
import re
import shutil
import sys
import tempfile
import time
import types
import warnings
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
import transformers

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from prunevid import synthetic_qa  # noqa: E402
from prunevid.benchmarks_data import read_benchmark  # noqa: E402
from prunevid.evaluation import ANSWER_INSTRUCTION, extract_choice, format_prompt  # noqa: E402
from prunevid.prompt import build_inputs, build_messages  # noqa: E402
from prunevid.tiny import parameter_shapes, write_model_files  # noqa: E402
from prunevid.video import FrameSamplingWarning, VideoClip, load_video  # noqa: E402

V5 = int(transformers.__version__.split(".")[0]) >= 5
LETTERS = "ABCD"

# The model. Vision: 4 blocks (0 and 2 attend in 112-pixel windows, 1 and 3 over the whole frame pair).
# LLM: 6 layers, 4 heads of 64 (mrope 8+12+12 = 32 = head_dim / 2), 2 key-value heads.
# tokens_per_second=1 with clips at 2 fps puts frame pair k at t = k: integer positions (5.17 truncates
# fractional ones), and with T/2 <= H/28 text after the video starts at the same position on 4.57 and 5.x.
TEXT = {
    "hidden_size": 256,
    "num_attention_heads": 4,
    "num_key_value_heads": 2,
    "intermediate_size": 768,
    "mrope_section": [8, 12, 12],
}
VISION = {
    "depth": 4,
    "hidden_size": 128,
    "intermediate_size": 512,
    "num_heads": 4,
    "patch_size": 14,
    "spatial_merge_size": 2,
    "temporal_patch_size": 2,
    "window_size": 112,
    "fullatt_block_indexes": [1, 3],
    "tokens_per_second": 1,
}
NUM_LAYERS = 6
VOCAB_SIZE = 1024
# The realistic regime's held-out stream during training: none of the accuracy protocol's seeds (tuning
# 7001 / 7002, final 20261130), so the models' progress is never read on them.
REALISTIC_PROGRESS_SEED = 20_261_131
MAX_PROMPT_TOKENS = 192
MAX_ANSWER_TOKENS = 16
# Answers restate what was asked, name the option, then give its letter: "the cross is red (B)" (the
# harness reads "(B)"). A bare letter asks for three steps at once (find the object the question names,
# read its colour in the video, find the letter that lists the colour): the first GPU runs, whose vision
# tower had learned every token's colour, shape and motion (token probe 99%), stayed at chance after 3300
# steps with a bare letter and with "red (B)". Written out, each step reads a neighbouring token: the
# object's name is just before its colour, the colour just before the letter. That run named the right
# option for 82-100% of the held-out questions per type, but its letter matched the named option only
# 23-56% of the time; continued with ``--no-letters`` it answers "the cross is red" (87% right after 220
# CPU steps, 95% after another 2883 on the GPU).
RESTATED = {
    "colour": (re.compile(r"What colour is the (\w+)\?"), "the {0} is {answer}"),
    "shape": (re.compile(r"What shape is the (\w+) object\?"), "the {0} object is a {answer}"),
    "direction": (re.compile(r"In which direction does the (\w+ \w+) move\?"), "the {0} moves {answer}"),
}


def answer_text(sample: synthetic_qa.QASample, letter: bool) -> str:
    """The training answer of ``sample``: ``"the cross is red (B)"`` (``letter``) or ``"the cross is
    red"``; count / order / end questions name no object and are answered with the option alone."""
    option = sample.options[LETTERS.index(sample.answer)]
    text = option
    if sample.question_type in RESTATED:
        pattern, template = RESTATED[sample.question_type]
        match = pattern.fullmatch(sample.question)
        if match is None:
            raise ValueError(f"unexpected {sample.question_type} question {sample.question!r}")
        text = template.format(match.group(1), answer=option)
    return f"{text} ({sample.answer})" if letter else text


# Some training questions name the option to pick ("Which option says red?"): the answer needs no video,
# and the letter-copying step is learnt on its own.
COPY_QUESTION = "Which option says {option}?"
# Some training questions come without options and are answered with the option's text: direct
# supervision of what the video shows. Held-out questions are all multiple choice.
OPEN_INSTRUCTION = "Answer with a word or a short phrase."
# The token probe: a linear head on the vision tower's output (the LLM's video tokens) trained to name the
# colour, shape and motion of the object under each token. Without it the model never learns to look:
# a single answer token per clip is too weak a signal to teach the vision tower shapes from scratch, and
# the first GPU run (1000s of steps) stayed at chance on every question type. The probe is a training aid
# only; the checkpoint is the stock model without it.
COLOUR_CLASSES = ("none", *synthetic_qa.COLOURS)
SHAPE_CLASSES = ("none", *synthetic_qa.SHAPES)
MOTION_CLASSES = ("none", "still", *synthetic_qa.DIRECTIONS)
PROBE_CLASSES = (COLOUR_CLASSES, SHAPE_CLASSES, MOTION_CLASSES)
PROBE_NAMES = ("colour", "shape", "motion")
CLIP_MEAN = (0.48145466, 0.4578275, 0.40821073)
CLIP_STD = (0.26862954, 0.26130258, 0.27577711)


# ------------------------------------------------------------------------------------------------------
# Tokenizer corpus and prompt token ids


def tokenizer_corpus() -> str:
    """Every word the prompts use, often enough that the BPE keeps each one whole."""
    qa = synthetic_qa
    lines = [ANSWER_INSTRUCTION, "You are a helpful assistant.", "system user assistant"]
    for shape in qa.SHAPES:
        lines.append(qa.QUESTION_TEMPLATES["colour"].format(shape=shape))
        for colour in qa.COLOURS:
            lines.append(qa.QUESTION_TEMPLATES["direction"].format(colour=colour, shape=shape))
            for kind in ("appears", "disappears"):
                lines.append(f"the {colour} {shape} {kind}")
            lines += [f"the {colour} {shape} turns {other}" for other in qa.COLOURS if other != colour]
    for colour in qa.COLOURS:
        lines.append(qa.QUESTION_TEMPLATES["shape"].format(colour=colour))
    for kind in ("count", "order", "end"):
        lines.append(qa.QUESTION_TEMPLATES[kind])
    words = [*qa.COLOURS, *qa.SHAPES, *qa.DIRECTIONS, *qa.NUMBERS, "the scene changes"]
    lines += [f"{letter}. {word}" for letter in LETTERS for word in words]
    lines += [OPEN_INSTRUCTION, *words]  # open answers start a line
    return "\n".join(lines * 4) + "\n"


class PromptIds:
    """Token ids of a training sequence, assembled the way the processor tokenizes it.

    ``prefix`` = chat template up to and including ``<|vision_end|>`` with the video's ``<|video_pad|>``
    run, ``suffix`` = ``<|im_end|>\\n<|im_start|>assistant\\n``. The prompt text sits between two special
    tokens, so ``prefix + encode(prompt) + suffix`` equals the processor's ``input_ids`` (tested).
    """

    def __init__(self, processor: Any, num_video_tokens: int) -> None:
        marker = "\x00"
        text = processor.apply_chat_template(
            build_messages(marker), add_generation_prompt=True, tokenize=False
        )
        head, tail = text.split(marker)
        head = head.replace("<|video_pad|>", "<|video_pad|>" * num_video_tokens)
        tokenizer = processor.tokenizer
        self.prefix = tokenizer(head, add_special_tokens=False)["input_ids"]
        self.suffix = tokenizer(tail, add_special_tokens=False)["input_ids"]
        self.im_end = tokenizer.convert_tokens_to_ids("<|im_end|>")
        self.pad = tokenizer.pad_token_id

    def batch(
        self, prompts: Sequence[Sequence[int]], answers: Sequence[Sequence[int]] | None
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """Left-padded ``input_ids`` / ``attention_mask`` ``int64 [B, L]`` and each row's length ``[B]``.

        With ``answers`` (token ids: a letter, or an open answer's text) every row ends
        ``answer <|im_end|>`` (training); without, it ends at the generation prompt (evaluation).
        """
        rows = []
        for i, prompt in enumerate(prompts):
            tail = [] if answers is None else [*answers[i], self.im_end]
            rows.append(self.prefix + list(prompt) + self.suffix + tail)
        length = max(len(r) for r in rows)
        ids = torch.full((len(rows), length), self.pad, dtype=torch.long)
        mask = torch.zeros((len(rows), length), dtype=torch.long)
        for i, row in enumerate(rows):
            ids[i, length - len(row) :] = torch.tensor(row)
            mask[i, length - len(row) :] = 1
        return ids, mask, torch.tensor([len(r) for r in rows])


def answer_targets(answers: Sequence[Sequence[int]], im_end: int) -> torch.Tensor:
    """Loss targets ``int64 [B, k]`` for rows built by :meth:`PromptIds.batch` with ``answers``: the last
    ``k = longest answer + 1`` tokens of each row where they are its answer and ``<|im_end|>``, -100 before
    (ignored). Logit row ``m`` of the last ``k + 1`` positions predicts target column ``m``."""
    k = max(len(a) for a in answers) + 1
    targets = torch.full((len(answers), k), -100, dtype=torch.long)
    for i, answer in enumerate(answers):
        targets[i, k - len(answer) - 1 :] = torch.tensor([*answer, im_end], dtype=torch.long)
    return targets


# ------------------------------------------------------------------------------------------------------
# Token probe targets


def token_targets(scene: synthetic_qa.Scene, merge: int = 28, min_fraction: float = 0.15) -> np.ndarray:
    """What each video token shows: ``int8 [T/2, S/merge, S/merge, 3]`` indices into ``COLOUR_CLASSES``,
    ``SHAPE_CLASSES`` and ``MOTION_CLASSES`` of the object with the most pixels in the token's
    ``merge x merge`` cell over its two frames, if it covers at least ``min_fraction`` of them; 0 (none)
    otherwise. Tokens are in the vision tower's output order (frame pair, row, column)."""
    t, s = scene.num_frames, scene.size
    g = s // merge
    out = np.zeros((t // 2, g, g, 3), dtype=np.int8)
    if not scene.shapes:
        return out
    per_frame = synthetic_qa.cell_counts(scene, merge)  # [objects, T, g, g]
    counts = per_frame.reshape(len(scene.shapes), t // 2, 2, g, g).sum(2)  # [objects, T/2, g, g]
    best, covered = counts.argmax(0), counts.max(0) >= min_fraction * 2 * merge * merge
    for k, obj in enumerate(scene.shapes):
        sign = (int(np.sign(obj.velocity[0])), int(np.sign(obj.velocity[1])))
        motion = {(0, 0): "still", (0, -1): "left", (0, 1): "right", (-1, 0): "up", (1, 0): "down"}[sign]
        for pair in range(t // 2):
            chosen = covered[pair] & (best[pair] == k)
            out[pair][chosen] = (
                COLOUR_CLASSES.index(obj.colour_at(2 * pair)),
                SHAPE_CLASSES.index(obj.shape),
                MOTION_CLASSES.index(motion),
            )
    return out


# ------------------------------------------------------------------------------------------------------
# Training data: worker processes render batches into shared memory


class TrainStream(torch.utils.data.IterableDataset):
    """Endless training batches; worker ``w`` of ``W`` makes batches ``w, w + W, ...`` (a DataLoader
    yields them in order 0, 1, 2, ...). Batch ``k`` depends only on ``(seed, k)``.

    Samples are drawn at random indices of the generator's stream ``seed``: consecutive indices cycle
    through (type, letter) pairs, and batches of consecutive indices would teach batch-to-batch priors.
    Each batch: ``frames`` uint8 ``[B, T, S, S, 3]``; ``prompt_ids`` int32 ``[B, MAX_PROMPT_TOKENS]`` and
    ``answer_ids`` int32 ``[B, MAX_ANSWER_TOKENS]`` with their lengths ``[B]``; ``letters`` ``[B]`` (the
    gold letter's index, -1 for an open question, -2 for a "Which option says" one), ``types`` ``[B]``
    (index in QUESTION_TYPES) and ``token_labels`` int8 ``[B, T/2, S/28, S/28, 3]`` (:func:`token_targets`).
    """

    def __init__(
        self,
        seed: int,
        batch_size: int,
        size: int,
        num_frames: int,
        tokenizer_file: str,
        open_fraction: float,
        copy_fraction: float = 0.0,
        letters: bool = True,
        regime: str = "original",
    ) -> None:
        self.seed, self.batch_size, self.size, self.num_frames = seed, batch_size, size, num_frames
        self.tokenizer_file, self.open_fraction = tokenizer_file, open_fraction
        self.copy_fraction, self.letters, self.regime = copy_fraction, letters, regime

    def __iter__(self) -> Iterator[dict[str, torch.Tensor]]:
        from tokenizers import Tokenizer

        info = torch.utils.data.get_worker_info()
        worker, workers = (info.id, info.num_workers) if info is not None else (0, 1)
        tokenizer = Tokenizer.from_file(self.tokenizer_file)
        number = worker
        while True:
            yield self.batch(number, tokenizer)
            number += workers

    def batch(self, number: int, tokenizer: Any) -> dict[str, torch.Tensor]:
        b, t, s = self.batch_size, self.num_frames, self.size
        rng = np.random.default_rng([self.seed, number])
        indices = rng.integers(0, 2**62, size=b)
        draw = rng.random(b)
        open_questions = draw < self.open_fraction
        copy_questions = (draw >= self.open_fraction) & (draw < self.open_fraction + self.copy_fraction)
        frames = torch.empty((b, t, s, s, 3), dtype=torch.uint8).share_memory_()
        pixels = frames.numpy()
        prompt_ids = torch.zeros((b, MAX_PROMPT_TOKENS), dtype=torch.int32)
        answer_ids = torch.zeros((b, MAX_ANSWER_TOKENS), dtype=torch.int32)
        prompt_lengths = torch.zeros(b, dtype=torch.int32)
        answer_lengths = torch.zeros(b, dtype=torch.int32)
        letters = torch.zeros(b, dtype=torch.int64)
        kinds = torch.zeros(b, dtype=torch.int64)
        labels = torch.zeros((b, t // 2, s // 28, s // 28, 3), dtype=torch.int8)
        for j in range(b):
            sample = synthetic_qa.make_sample(
                self.seed, int(indices[j]), size=s, num_frames=t, out=pixels[j], regime=self.regime
            )
            labels[j] = torch.from_numpy(token_targets(sample.scene))
            letter = LETTERS.index(sample.answer)
            if open_questions[j]:
                text = f"{sample.question}\n{OPEN_INSTRUCTION}"
                answer = tokenizer.encode(answer_text(sample, letter=False), add_special_tokens=False).ids
                letters[j] = -1
            elif copy_questions[j]:
                option = sample.options[letter]
                text = format_prompt(COPY_QUESTION.format(option=option), sample.options)
                answer = tokenizer.encode(f"{option} ({sample.answer})", add_special_tokens=False).ids
                letters[j] = -2
            else:
                text = format_prompt(sample.question, sample.options)
                answer = tokenizer.encode(
                    answer_text(sample, letter=self.letters), add_special_tokens=False
                ).ids
                letters[j] = letter
            ids = tokenizer.encode(text, add_special_tokens=False).ids
            if len(ids) > MAX_PROMPT_TOKENS or len(answer) > MAX_ANSWER_TOKENS:
                raise RuntimeError(f"prompt of {len(ids)} or answer of {len(answer)} tokens is too long")
            prompt_ids[j, : len(ids)] = torch.tensor(ids, dtype=torch.int32)
            answer_ids[j, : len(answer)] = torch.tensor(answer, dtype=torch.int32)
            prompt_lengths[j], answer_lengths[j] = len(ids), len(answer)
            kinds[j] = synthetic_qa.QUESTION_TYPES.index(sample.question_type)
        return {
            "number": torch.tensor(number),
            "frames": frames,
            "prompt_ids": prompt_ids,
            "prompt_lengths": prompt_lengths,
            "answer_ids": answer_ids,
            "answer_lengths": answer_lengths,
            "letters": letters,
            "types": kinds,
            "token_labels": labels,
        }


# ------------------------------------------------------------------------------------------------------
# Device-side preprocessing


def patchify(frames: torch.Tensor, patch: int = 14, merge: int = 2, temporal: int = 2) -> torch.Tensor:
    """The Qwen2-VL video processor's ``pixel_values_videos`` for frames that need no resize.

    ``frames``: uint8 (or float in 0..255) ``[B, T, H, W, 3]``, ``T`` a multiple of ``temporal``, ``H``
    and ``W`` multiples of ``patch * merge``. Returns float32 ``[B * T/2 * H/14 * W/14, 3 * 2 * 14 * 14]``,
    rows ordered (video, t, h/2, w/2, 2, 2) and each row (channel, frame, y, x), normalised with the CLIP
    mean / std as ``(x - 255 * mean) / (255 * std)`` (the processors' fused rescale-and-normalise).
    """
    b, t, h, w, c = frames.shape
    mean = torch.tensor(CLIP_MEAN, device=frames.device) * 255
    std = torch.tensor(CLIP_STD, device=frames.device) * 255
    x = (frames.float() - mean) / std  # [B, T, H, W, 3]
    x = x.permute(0, 1, 4, 2, 3)  # [B, T, 3, H, W]
    gt, gh, gw = t // temporal, h // patch, w // patch
    x = x.reshape(b, gt, temporal, c, gh // merge, merge, patch, gw // merge, merge, patch)
    x = x.permute(0, 1, 4, 7, 5, 8, 3, 2, 6, 9)
    return x.reshape(b * gt * gh * gw, c * temporal * patch * patch)


def degrade(frames: torch.Tensor, generator: torch.Generator, fraction: float = 0.5) -> torch.Tensor:
    """Codec-like damage on a random ``fraction`` of the clips: 2x2 chroma subsampling (as yuv420 does)
    and Gaussian noise (sigma 2). ``frames`` uint8 ``[B, T, H, W, 3]`` -> same shape, float in 0..255."""
    x = frames.float()
    chosen = torch.rand(x.shape[0], generator=generator, device=generator.device) < fraction
    if not bool(chosen.any()):
        return x
    part = x[chosen]
    r, g, bl = part.unbind(-1)
    y = 0.299 * r + 0.587 * g + 0.114 * bl
    chroma = torch.stack([bl - y, r - y], dim=-1)  # [n, T, H, W, 2]
    n, t, h, w, _ = chroma.shape
    pooled = F.avg_pool2d(chroma.permute(0, 1, 4, 2, 3).reshape(n * t, 2, h, w), 2)
    chroma = F.interpolate(pooled, size=(h, w), mode="bilinear", align_corners=False)
    cb, cr = chroma.reshape(n, t, 2, h, w).permute(0, 1, 3, 4, 2).unbind(-1)
    rgb = torch.stack([y + cr, y - (0.299 * cr + 0.114 * cb) / 0.587, y + cb], dim=-1)
    noise = torch.randn(rgb.shape, generator=generator, device=generator.device)
    x[chosen] = (rgb + 2.0 * noise).clamp(0, 255)
    return x


def drop_video_tokens(
    ids: torch.Tensor,
    mask: torch.Tensor,
    video_token_id: int,
    generator: torch.Generator,
    fraction: float,
    max_rate: float = 0.95,
) -> torch.Tensor:
    """Hide random video tokens from attention, so the model does not rely on every token being there
    (large pretrained models do not, which is what every pruning method counts on).

    On a random ``fraction`` of the rows, each video token is hidden with probability ``r``, ``r`` drawn
    uniformly in ``[0, max_rate)`` per row. Positions are explicit, so a hidden key is as if the token were
    removed from the sequence, as pruning before the LLM does (tested); the answer rows never attend to it.
    Nothing here is specific to PruneVid: every method, random dropping included, removes tokens.

    ``ids`` / ``mask`` int64 ``[B, L]`` (CPU) -> the new mask ``[B, L]``; ``generator`` a CPU generator.
    """
    rows = torch.rand(ids.shape[0], generator=generator) < fraction
    rate = torch.rand(ids.shape[0], generator=generator) * max_rate
    hidden = torch.rand(ids.shape, generator=generator) < rate[:, None]
    return mask.masked_fill(hidden & rows[:, None] & (ids == video_token_id), 0)


def rope_positions(ids: torch.Tensor, lengths: torch.Tensor, canonical: torch.Tensor) -> torch.Tensor:
    """``[3, B, L]`` positions of a left-padded batch, each row the first ``length`` columns of
    ``canonical`` (the model's positions for the longest row): positions depend only on earlier tokens.
    Padding gets position 1 (masked out anyway)."""
    b, length = ids.shape
    positions = torch.ones((3, b, length), dtype=torch.long)
    for i, n in enumerate(lengths.tolist()):
        positions[:, i, length - n :] = canonical[:, :n]
    return positions


def canonical_positions(
    model: Any, ids: torch.Tensor, grid: torch.Tensor, second_per_grid: float
) -> torch.Tensor:
    """The installed ``get_rope_index``'s ``[3, L]`` positions of one unpadded row ``ids`` ``[L]``."""
    kwargs: dict[str, Any] = {
        "video_grid_thw": grid.reshape(1, 3),
        "second_per_grid_ts": torch.tensor([second_per_grid]),
        "attention_mask": torch.ones(1, ids.numel(), dtype=torch.long),
    }
    if V5:
        kwargs["mm_token_type_ids"] = (ids == model.config.video_token_id).long().reshape(1, -1) * 2
    positions, _ = model.model.get_rope_index(ids.reshape(1, -1), **kwargs)
    return positions[:, 0]


def _batched_vision_attention(
    self: Any, hidden_states: torch.Tensor, cu_seqlens: torch.Tensor, *args: Any, **kwargs: Any
) -> torch.Tensor:
    """``Qwen2_5_VLVisionAttention.forward`` with one SDPA call over equal windows instead of a loop.

    Same projections, rotary embedding and scale as the stock SDPA path; windows of unequal length (other
    frame sizes) fall back to the stock forward.
    """
    from transformers.models.qwen2_5_vl.modeling_qwen2_5_vl import apply_rotary_pos_emb_vision

    lengths = (cu_seqlens[1:] - cu_seqlens[:-1]).tolist()
    position_embeddings = kwargs.get("position_embeddings")
    if position_embeddings is None or len(set(lengths)) != 1 or self.config._attn_implementation != "sdpa":
        return type(self).forward(self, hidden_states, cu_seqlens, *args, **kwargs)
    seq, heads = hidden_states.shape[0], self.num_heads
    q, k, v = self.qkv(hidden_states).reshape(seq, 3, heads, -1).permute(1, 0, 2, 3).unbind(0)
    cos, sin = position_embeddings
    q, k = apply_rotary_pos_emb_vision(q, k, cos, sin)
    windows, length = len(lengths), lengths[0]
    q, k, v = (x.reshape(windows, length, heads, -1).transpose(1, 2) for x in (q, k, v))
    out = F.scaled_dot_product_attention(q, k, v, scale=self.scaling)  # [windows, heads, length, dim]
    return self.proj(out.transpose(1, 2).reshape(seq, -1))


@contextlib.contextmanager
def batched_vision_attention(model: Any) -> Iterator[None]:
    """Within the block, every vision attention module uses :func:`_batched_vision_attention`."""
    from transformers.models.qwen2_5_vl.modeling_qwen2_5_vl import Qwen2_5_VLVisionAttention

    patched = [m for m in model.modules() if isinstance(m, Qwen2_5_VLVisionAttention)]
    for module in patched:
        module.forward = types.MethodType(_batched_vision_attention, module)
    try:
        yield
    finally:
        for module in patched:
            del module.forward


# ------------------------------------------------------------------------------------------------------
# Model, checkpoint


def write_processor_files(out: Path) -> dict:
    """Config, tokenizer and processor files of the model into ``out``."""
    return write_model_files(
        out,
        num_hidden_layers=NUM_LAYERS,
        text=TEXT,
        vision=VISION,
        extra_corpus=tokenizer_corpus(),
        vocab_size=VOCAB_SIZE,
        torch_dtype="bfloat16",
    )


def hub_name(name: str) -> str:
    """Module-tree parameter name -> hub checkpoint name (``model.visual.x`` -> ``visual.x``,
    ``model.language_model.x`` -> ``model.x``)."""
    if name.startswith("model.visual."):
        return name.removeprefix("model.")
    if name.startswith("model.language_model."):
        return "model." + name.removeprefix("model.language_model.")
    return name


def save_weights(model: Any, out: Path, vocab_size: int) -> int:
    """Write ``model.safetensors`` (bfloat16, hub names); returns its size in bytes."""
    from safetensors.torch import save_file

    state = {
        hub_name(n): t.detach().to("cpu", torch.bfloat16).contiguous() for n, t in model.state_dict().items()
    }
    expected = parameter_shapes(vocab_size, NUM_LAYERS, TEXT, VISION)
    shapes = {n: tuple(t.shape) for n, t in state.items()}
    if shapes != expected:
        raise RuntimeError(
            f"parameters differ from the hub layout: {sorted(set(shapes) ^ set(expected))[:5]}"
        )
    save_file(state, str(out / "model.safetensors"), metadata={"format": "pt"})
    return (out / "model.safetensors").stat().st_size


def load_weights(model: Any, checkpoint: Path) -> None:
    """Copy ``checkpoint/model.safetensors`` (hub names, as :func:`save_weights` writes) into ``model``."""
    from safetensors.torch import load_file

    state = load_file(str(checkpoint / "model.safetensors"))
    names = {hub_name(n): n for n in model.state_dict()}
    if set(state) != set(names):
        raise ValueError(f"{checkpoint} does not hold this model's parameters")
    model.load_state_dict({names[n]: t.float() for n, t in state.items()})


def build_model(out: Path, seed: int) -> Any:
    """The real class, randomly initialised (``initializer_range`` 0.02) from the config in ``out``."""
    from transformers import AutoConfig, Qwen2_5_VLForConditionalGeneration

    config = AutoConfig.from_pretrained(out)
    torch.manual_seed(seed)
    model = Qwen2_5_VLForConditionalGeneration._from_config(
        config, attn_implementation="sdpa", dtype=torch.float32
    )
    model.config.use_cache = False
    return model.float()  # 4.57 builds parts in the config's bfloat16 even when told float32


# ------------------------------------------------------------------------------------------------------
# Held-out set


def load_eval_set(folder: Path, workers: int) -> tuple[list[Any], list[VideoClip]]:
    """Samples of benchmark ``synthetic`` in ``folder`` and their decoded clips (every frame)."""
    from concurrent.futures import ThreadPoolExecutor

    samples = read_benchmark("synthetic", folder)
    paths = [str(s.video) for s in samples]
    with ThreadPoolExecutor(max(1, workers)) as pool:  # OpenCV decodes without the GIL
        clips = list(pool.map(_decode, paths))
    return samples, clips


def _decode(path: str) -> VideoClip:
    # The evaluation harness's default (32 frames): every frame of a 16- or 32-frame file.
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", FrameSamplingWarning)  # shorter smoke clips: every frame
        return load_video(path, num_frames=32)


def forward_batch(
    model: Any,
    frames: torch.Tensor,
    ids: torch.Tensor,
    mask: torch.Tensor,
    lengths: torch.Tensor,
    canonical: torch.Tensor,
    keep: int,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Logits ``[B, keep, V]`` of the last ``keep`` positions for a batch of same-size clips on the device,
    and the video features ``[B * T/2 * (S/28)**2, hidden]`` the LLM read (the vision tower's output).

    ``frames`` uint8 or float ``[B, T, S, S, 3]`` on the model's device; ``ids`` / ``mask`` int64 ``[B, L]``
    left-padded (CPU), each row with ``T/2 * (S/28)**2`` ``<|video_pad|>`` tokens; ``lengths`` ``[B]`` and
    ``canonical`` ``[3, >= L]`` (CPU). The model's own modules on
    the model's own inputs, with the per-video Python loops of the stock path collapsed: the vision tower
    runs once on the batch as one video of ``B * T/2`` frame pairs (attention never crosses a frame pair
    and every position id repeats per pair, so the features are those of each video in turn), the
    features replace the ``<|video_pad|>`` embeddings as in the stock forward, and positions come from
    :func:`rope_positions`. Equal to the processor + stock forward (tested).
    """
    device = frames.device
    b, t, s = frames.shape[0], frames.shape[1], frames.shape[2]
    positions = rope_positions(ids, lengths, canonical).to(device, non_blocking=True)
    ids, mask = ids.to(device, non_blocking=True), mask.to(device, non_blocking=True)
    grid = torch.tensor([[b * (t // 2), s // 14, s // 14]], device=device)
    features = model.model.visual(patchify(frames), grid_thw=grid)
    features = getattr(features, "pooler_output", features)  # 5.x returns an output object, 4.57 a tensor
    embeds = model.get_input_embeddings()(ids)
    video = (ids == model.config.video_token_id).unsqueeze(-1).expand_as(embeds)
    embeds = embeds.masked_scatter(video, features.to(embeds.dtype))
    logits = model(
        inputs_embeds=embeds,
        attention_mask=mask,
        position_ids=positions,
        use_cache=False,
        logits_to_keep=keep,
    ).logits
    return logits, features


def _accuracy(correct: list[bool], types: list[str]) -> dict[str, Any]:
    by_type: dict[str, list[bool]] = {}
    for ok, kind in zip(correct, types, strict=True):
        by_type.setdefault(kind, []).append(ok)
    return {
        "accuracy": sum(correct) / max(1, len(correct)),
        "count": len(correct),
        "by_type": {k: sum(v) / len(v) for k, v in sorted(by_type.items())},
    }


def _autocast(device: torch.device) -> Any:
    if device.type == "cuda":
        return torch.autocast("cuda", dtype=torch.bfloat16)
    return contextlib.nullcontext()


@torch.no_grad()
def evaluate_generate(
    model: Any, processor: Any, samples: list[Any], clips: list[VideoClip], batch: int
) -> dict[str, Any]:
    """Score ``samples`` the way ``prunevid eval`` does: the real processor, greedy ``generate`` and
    :func:`~prunevid.evaluation.extract_choice` on the answer text."""
    was_training = model.training
    model.eval()
    device = next(model.parameters()).device
    correct, unparsed, examples = [], 0, []
    for start in range(0, len(samples), batch):
        chunk = samples[start : start + batch]
        prompts = [format_prompt(s.question, s.options) for s in chunk]
        inputs = build_inputs(processor, clips[start : start + batch], prompts).to(device)
        with _autocast(device):
            output = model.generate(**inputs, max_new_tokens=MAX_ANSWER_TOKENS, do_sample=False)
        texts = processor.batch_decode(output[:, inputs["input_ids"].shape[1] :], skip_special_tokens=True)
        for text, sample in zip(texts, chunk, strict=True):
            letter = extract_choice(text, sample.options)
            correct.append(letter == sample.gold)
            unparsed += letter is None
            if len(examples) < 12:
                examples.append({"id": sample.id, "gold": sample.gold, "answer": text})
    model.train(was_training)
    return {
        **_accuracy(correct, [s.group for s in samples]),
        "unparsed": unparsed,
        "examples": examples,
    }


def reload_and_evaluate(
    out: Path, samples: list[Any], clips: list[VideoClip], device: torch.device, batch: int
) -> dict[str, Any]:
    """Reload the written checkpoint the way users do (``from_pretrained``, ``AutoProcessor``) and score
    every held-out sample with :func:`evaluate_generate`."""
    from transformers import AutoProcessor, Qwen2_5_VLForConditionalGeneration

    dtype = torch.bfloat16 if device.type == "cuda" else torch.float32
    model = Qwen2_5_VLForConditionalGeneration.from_pretrained(out, dtype=dtype, attn_implementation="sdpa")
    model.to(device)
    return {
        **evaluate_generate(model, AutoProcessor.from_pretrained(out), samples, clips, batch),
        "dtype": str(dtype),
    }


# ------------------------------------------------------------------------------------------------------
# Training


@contextlib.contextmanager
def single_threaded_children() -> Iterator[None]:
    """Processes started inside the block run their math libraries on one thread: 14 data workers with a
    thread pool each would oversubscribe 16 cores. This process keeps its own pools."""
    names = ("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS")
    saved = {name: os.environ.get(name) for name in names}
    os.environ.update(dict.fromkeys(names, "1"))
    try:
        yield
    finally:
        for name, value in saved.items():
            if value is None:
                os.environ.pop(name, None)
            else:
                os.environ[name] = value


class Log:
    """Lines to stdout and ``train.log``."""

    def __init__(self, path: Path) -> None:
        self.file = path.open("w", encoding="utf-8")
        self.start = time.perf_counter()

    def __call__(self, message: str) -> None:
        line = f"[{time.perf_counter() - self.start:7.1f}s] {message}"
        print(line, flush=True)
        self.file.write(line + "\n")
        self.file.flush()


def learning_rate(progress: float, step: int, args: argparse.Namespace) -> float:
    """Linear warmup over ``--warmup-steps``, then cosine from ``--lr`` to ``--lr * --final-lr-ratio``."""
    if step < args.warmup_steps:
        return args.lr * (step + 1) / args.warmup_steps
    cosine = 0.5 * (1 + math.cos(math.pi * min(1.0, progress)))
    return args.lr * (args.final_lr_ratio + (1 - args.final_lr_ratio) * cosine)


def train(args: argparse.Namespace) -> dict[str, Any]:
    timings: dict[str, float] = {}
    started = time.perf_counter()
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    log = Log(out / "train.log")
    device = torch.device(args.device or ("cuda" if torch.cuda.is_available() else "cpu"))
    log(f"device {device}; torch {torch.__version__}; transformers {transformers.__version__}")
    log(f"settings {vars(args)}")

    info = write_processor_files(out)
    from transformers import AutoProcessor

    processor = AutoProcessor.from_pretrained(out)
    num_video_tokens = (args.frames // 2) * (args.size // 28) ** 2
    prompt_ids = PromptIds(processor, num_video_tokens)

    # Training data workers first: they start while the held-out set is written.
    if args.workers:
        # Batches in flight wait in shared memory (/dev/shm): keep them well inside it.
        batch_bytes = args.batch_size * args.frames * args.size**2 * 3
        free = shutil.disk_usage("/dev/shm").free if os.path.isdir("/dev/shm") else 1 << 40
        fit = int(0.5 * free) // (batch_bytes * args.workers)
        if fit < args.prefetch:
            log(f"/dev/shm has {free / 2**30:.1f} GiB free: {max(1, fit)} batch(es) in flight per worker")
            args.prefetch = max(1, fit)
            args.workers = min(args.workers, max(1, int(0.5 * free) // batch_bytes))
    stream = TrainStream(
        args.seed,
        args.batch_size,
        args.size,
        args.frames,
        str(out / "tokenizer.json"),
        args.open_fraction,
        args.copy_fraction,
        args.letters,
        args.regime,
    )
    loader = torch.utils.data.DataLoader(
        stream,
        batch_size=None,
        num_workers=args.workers,
        pin_memory=device.type == "cuda",
        prefetch_factor=args.prefetch if args.workers else None,
        persistent_workers=args.workers > 0,
        multiprocessing_context="spawn" if args.workers else None,
    )
    with single_threaded_children():
        batches = iter(loader)  # the workers start here

    temporary = None if args.eval_dir else tempfile.TemporaryDirectory(prefix="synthetic-eval-")
    eval_dir = Path(args.eval_dir) if args.eval_dir else Path(temporary.name)
    index_file = eval_dir / synthetic_qa.INDEX_FILE
    synthetic_qa.check_eval_set(eval_dir, args.regime)  # never the other regime's set
    if index_file.is_file():
        index = json.loads(index_file.read_text(encoding="utf-8"))
        if (index["size"], index["num_frames"]) != (args.size, args.frames):
            raise ValueError(
                f"{eval_dir} holds {index['size']}px x {index['num_frames']}-frame clips, not ours"
            )
        if index["seed"] != args.eval_seed:  # a given set is used as is: record the seed it holds
            log(f"{eval_dir} holds held-out seed {index['seed']}, not {args.eval_seed}: scoring that set")
            args.eval_seed = index["seed"]
    else:
        with single_threaded_children():
            synthetic_qa.write_eval_set(
                eval_dir,
                args.eval_size,
                args.eval_seed,
                size=args.size,
                num_frames=args.frames,
                workers=args.eval_workers,
                regime=args.regime,
            )
    samples, clips = load_eval_set(eval_dir, args.eval_workers)
    timings["held_out_set_s"] = time.perf_counter() - started
    log(f"held-out set: {len(samples)} samples in {eval_dir} ({timings['held_out_set_s']:.1f}s since start)")

    model = build_model(out, args.seed)
    if args.init:
        load_weights(model, Path(args.init))
        log(f"weights from {args.init}")
    model.to(device).train()
    hidden = model.get_input_embeddings().embedding_dim
    probe = torch.nn.Linear(hidden, sum(len(c) for c in PROBE_CLASSES)).to(device)
    parameters = sum(p.numel() for p in model.parameters())
    log(f"model: {parameters / 1e6:.2f}M parameters, {num_video_tokens} video tokens per clip")
    longest = prompt_ids.prefix + [prompt_ids.pad] * (MAX_PROMPT_TOKENS + MAX_ANSWER_TOKENS + 1)
    canonical = canonical_positions(
        model,
        torch.tensor(longest),
        torch.tensor([args.frames // 2, args.size // 14, args.size // 14]),
        2.0 / synthetic_qa.FPS,
    )

    parameters_trained = [*model.parameters(), *probe.parameters()]
    decay = [p for p in parameters_trained if p.ndim >= 2]
    no_decay = [p for p in parameters_trained if p.ndim < 2]
    optimizer = torch.optim.AdamW(
        [{"params": decay, "weight_decay": args.weight_decay}, {"params": no_decay, "weight_decay": 0.0}],
        lr=args.lr,
        betas=(0.9, 0.95),
        fused=device.type == "cuda",
    )
    generator = torch.Generator(device=device).manual_seed(args.seed)
    drop_generator = torch.Generator().manual_seed(args.seed)  # CPU: the masks are built there
    video_token_id = model.config.video_token_id
    if device.type == "cuda":
        torch.backends.cuda.matmul.allow_tf32 = True
        torch.backends.cudnn.allow_tf32 = True

    curve: list[dict[str, Any]] = []
    evals: list[dict[str, Any]] = []
    step, seen, waited, logged = 0, 0, 0.0, 0
    # Sums since the last log line, kept on the device: no host sync per step.
    loss_sum = torch.zeros((), device=device)
    probe_loss_sum = torch.zeros((), device=device)
    probe_correct = torch.zeros(len(PROBE_CLASSES), device=device)  # on tokens that show an object
    probe_count = torch.zeros((), device=device)
    correct_by_type = torch.zeros(len(synthetic_qa.QUESTION_TYPES), device=device)
    count_by_type = torch.zeros(len(synthetic_qa.QUESTION_TYPES), device=device)
    train_started = time.perf_counter()
    timings["setup_s"] = train_started - started
    last_eval = train_started
    log(f"training starts ({timings['setup_s']:.1f}s of setup)")
    with batched_vision_attention(model):
        while True:
            elapsed = time.perf_counter() - train_started
            progress = step / args.steps if args.steps else elapsed / args.time_budget_s
            if progress >= 1.0:
                break
            lr = learning_rate(progress, step, args)
            for group in optimizer.param_groups:
                group["lr"] = lr
            fetch = time.perf_counter()
            batch = next(batches)
            waited += time.perf_counter() - fetch
            if int(batch["number"]) != step:
                raise RuntimeError(f"batch {int(batch['number'])} arrived at step {step}")
            prompts = [
                batch["prompt_ids"][i, :n].tolist() for i, n in enumerate(batch["prompt_lengths"].tolist())
            ]
            answers = [
                batch["answer_ids"][i, :n].tolist() for i, n in enumerate(batch["answer_lengths"].tolist())
            ]
            ids, mask, rows = prompt_ids.batch(prompts, answers)
            if args.token_dropout:
                mask = drop_video_tokens(ids, mask, video_token_id, drop_generator, args.token_dropout)
            targets = answer_targets(answers, prompt_ids.im_end).to(device, non_blocking=True)
            k = targets.shape[1]
            frames = batch["frames"].to(device, non_blocking=True)
            frames = degrade(frames, generator) if args.augment else frames
            kinds = batch["types"].to(device, non_blocking=True)
            token_labels = batch["token_labels"].to(device, non_blocking=True).reshape(-1, 3).long()
            with _autocast(device):
                # k + 1 rows: row m predicts the token at position L - k + m.
                logits, features = forward_batch(model, frames, ids, mask, rows, canonical, k + 1)
                probe_logits = probe(features).float().split([len(c) for c in PROBE_CLASSES], dim=-1)
            loss = F.cross_entropy(logits[:, :k].float().flatten(0, 1), targets.flatten())
            probe_loss = sum(
                F.cross_entropy(part, token_labels[:, i]) for i, part in enumerate(probe_logits)
            ) / len(PROBE_CLASSES)
            optimizer.zero_grad(set_to_none=True)
            (loss + args.probe_weight * probe_loss).backward()
            torch.nn.utils.clip_grad_norm_(parameters_trained, args.clip)
            optimizer.step()
            step += 1
            seen += len(answers)
            with torch.no_grad():  # multiple-choice rows: is every answer token right (teacher-forced)?
                loss_sum += loss.detach()
                probe_loss_sum += probe_loss.detach()
                shown = token_labels[:, 0] > 0
                for i, part in enumerate(probe_logits):
                    probe_correct[i] += (part.argmax(-1) == token_labels[:, i])[shown].float().sum()
                probe_count += shown.sum()
                exact = ((logits[:, :k].argmax(-1) == targets) | (targets == -100)).all(-1)
                mc = (batch["letters"].to(device) >= 0).float()
                correct_by_type.index_add_(0, kinds, exact.float() * mc)
                count_by_type.index_add_(0, kinds, mc)
            if step % args.log_every == 0 or step == 1:
                counts = count_by_type.tolist()
                by_type = {
                    name: round(c / n, 3)
                    for name, c, n in zip(
                        synthetic_qa.QUESTION_TYPES, correct_by_type.tolist(), counts, strict=True
                    )
                    if n
                }
                point = {
                    "step": step,
                    "time_s": round(time.perf_counter() - train_started, 2),
                    "loss": round(float(loss_sum) / (step - logged), 4),
                    "probe_loss": round(float(probe_loss_sum) / (step - logged), 4),
                    "probe_accuracy": dict(
                        zip(PROBE_NAMES, (probe_correct / probe_count).tolist(), strict=True)
                    ),
                    "train_accuracy": round(float(correct_by_type.sum()) / max(1.0, sum(counts)), 4),
                    "train_accuracy_by_type": by_type,
                    "lr": lr,
                    "samples": seen,
                }
                curve.append(point)
                loss_sum.zero_()
                probe_loss_sum.zero_()
                probe_correct.zero_()
                probe_count.zero_()
                correct_by_type.zero_()
                count_by_type.zero_()
                logged = step
                rate = seen / max(1e-9, time.perf_counter() - train_started)
                log(
                    f"step {step} loss {point['loss']:.4f} probe {point['probe_loss']:.3f} "
                    f"{ {k: round(v, 2) for k, v in point['probe_accuracy'].items()} } "
                    f"train acc {point['train_accuracy']:.3f} "
                    f"lr {lr:.2e} {rate:.0f} samples/s, waited for data {waited:.1f}s {by_type}"
                )
            if time.perf_counter() - last_eval >= args.eval_every_s:
                subset = slice(0, args.eval_subset)
                result = evaluate_generate(
                    model, processor, samples[subset], clips[subset], args.eval_batch_size
                )
                del result["examples"]
                evals.append(
                    {"step": step, "time_s": round(time.perf_counter() - train_started, 2), **result}
                )
                log(f"held-out ({result['count']}) accuracy {result['accuracy']:.3f} {result['by_type']}")
                last_eval = time.perf_counter()
    timings["train_s"] = time.perf_counter() - train_started
    del batches, loader  # stop the workers
    log(f"trained {step} steps, {seen} samples in {timings['train_s']:.1f}s ({waited:.1f}s waiting for data)")

    size = save_weights(model, out, info["vocab_size"])
    log(f"model.safetensors: {size / 2**20:.2f} MiB")
    del model, optimizer
    if device.type == "cuda":
        torch.cuda.empty_cache()
    evaluation_started = time.perf_counter()
    final = reload_and_evaluate(out, samples, clips, device, args.eval_batch_size)
    timings["final_eval_s"] = time.perf_counter() - evaluation_started
    log(f"held-out accuracy (reloaded, processor, greedy generate): {final['accuracy']:.4f}")
    log(f"by type: {final['by_type']}; unparsed {final['unparsed']}; e.g. {final['examples'][:3]}")
    timings["total_s"] = time.perf_counter() - started

    record = {
        "regime": args.regime,
        "seed": args.seed,
        "eval_seed": args.eval_seed,
        "settings": {k: v for k, v in vars(args).items() if k != "out"},
        "model": {
            "class": "Qwen2_5_VLForConditionalGeneration",
            "parameters": parameters,
            "text": TEXT,
            "vision": VISION,
            "num_hidden_layers": NUM_LAYERS,
            "vocab_size": info["vocab_size"],
            "safetensors_bytes": size,
            "video_tokens_per_clip": num_video_tokens,
        },
        "steps": step,
        "samples_seen": seen,
        "data_wait_s": round(waited, 2),
        "loss_curve": curve,
        "held_out_during_training": evals,
        "held_out": final,
        "timings_s": {k: round(v, 2) for k, v in timings.items()},
        "versions": {
            "python": platform.python_version(),
            "torch": torch.__version__,
            "transformers": transformers.__version__,
            "numpy": np.__version__,
            "device": torch.cuda.get_device_name(device)
            if device.type == "cuda"
            else platform.processor() or "cpu",
        },
    }
    (out / "training_log.json").write_text(json.dumps(record, indent=1) + "\n", encoding="utf-8")
    log(f"wrote {out} in {timings['total_s']:.1f}s")
    if temporary is not None:
        temporary.cleanup()
    return record


def parse_args(argv: Sequence[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--out", required=True, help="checkpoint directory to write")
    parser.add_argument(
        "--regime",
        choices=tuple(synthetic_qa.REGIMES),
        default="original",
        help="the generator's regime: original (224x224x16) or realistic (448x448x32, 4096 video tokens)",
    )
    parser.add_argument("--seed", type=int, default=synthetic_qa.TRAIN_SEED)
    parser.add_argument(
        "--eval-seed",
        type=int,
        help=f"held-out stream scored during and after training (default: original {synthetic_qa.EVAL_SEED}, "
        f"realistic {REALISTIC_PROGRESS_SEED}: not a seed of the accuracy protocol)",
    )
    parser.add_argument(
        "--eval-dir", help="held-out set folder (written there if it has no index; default: temp)"
    )
    parser.add_argument("--eval-size", type=int, default=1000, help="held-out questions")
    parser.add_argument(
        "--eval-subset", type=int, default=300, help="held-out questions scored during training"
    )
    parser.add_argument("--eval-every-s", type=float, default=60.0)
    parser.add_argument("--eval-batch-size", type=int, default=100)
    parser.add_argument("--size", type=int, help="frame side (multiple of 28; default: the regime's)")
    parser.add_argument("--frames", type=int, help="frames per clip (default: the regime's)")
    parser.add_argument("--batch-size", type=int, default=64)
    parser.add_argument("--lr", type=float, default=1e-3)
    parser.add_argument("--final-lr-ratio", type=float, default=0.05)
    parser.add_argument("--warmup-steps", type=int, default=200)
    parser.add_argument("--weight-decay", type=float, default=0.05)
    parser.add_argument("--clip", type=float, default=1.0, help="gradient norm clip")
    parser.add_argument(
        "--time-budget-s", type=float, default=360.0, help="wall-clock budget of the training loop"
    )
    parser.add_argument(
        "--steps", type=int, help="train exactly this many steps (schedule by step, no time limit)"
    )
    parser.add_argument("--no-augment", dest="augment", action="store_false")
    parser.add_argument(
        "--probe-weight", type=float, default=1.0, help="weight of the token probe's loss (0: no probe)"
    )
    parser.add_argument("--init", help="start from this checkpoint's model.safetensors (a continued run)")
    parser.add_argument(
        "--open-fraction", type=float, default=0.25, help="training questions asked without options"
    )
    parser.add_argument(
        "--copy-fraction", type=float, default=0.15, help='training questions "Which option says ...?"'
    )
    parser.add_argument(
        "--no-letters",
        dest="letters",
        action="store_false",
        help='multiple-choice answers name the option without its letter ("the cross is red")',
    )
    parser.add_argument(
        "--token-dropout",
        type=float,
        default=0.0,
        help="training rows with random video tokens hidden (each row: a rate in [0, 0.95))",
    )
    parser.add_argument("--workers", type=int, default=max(1, min(14, (os.cpu_count() or 2) - 2)))
    parser.add_argument("--eval-workers", type=int, default=min(16, os.cpu_count() or 1))
    parser.add_argument("--prefetch", type=int, default=3, help="batches in flight per worker")
    parser.add_argument("--log-every", type=int, default=25)
    parser.add_argument("--device", help="default: cuda if available")
    parser.add_argument(
        "--smoke",
        action="store_true",
        help="CPU check: 112x112 clips of 8 frames (realistic: 24), 12 steps, 24 held-out questions",
    )
    args = parser.parse_args(argv)
    regime = synthetic_qa.REGIMES[args.regime]
    if args.eval_seed is None:
        args.eval_seed = synthetic_qa.EVAL_SEED if args.regime == "original" else REALISTIC_PROGRESS_SEED
    args.size = args.size or regime.size
    args.frames = args.frames or regime.num_frames
    if args.smoke:
        torch.set_num_threads(1)  # robust on a small shared CPU (thread pools spin under contention)
        args.size, args.frames, args.batch_size = 112, max(8, regime.min_frames), 4
        args.steps = args.steps or 12
        args.eval_size, args.eval_subset, args.eval_every_s, args.eval_batch_size = 24, 24, 1e9, 12
        args.warmup_steps, args.log_every, args.workers, args.eval_workers = 4, 4, min(args.workers, 2), 1
    if args.size % 28 or args.frames % 2 or args.frames < regime.min_frames:
        parser.error(f"--size must be a multiple of 28 and --frames even (>= {regime.min_frames})")
    return args


def main(argv: Sequence[str] | None = None) -> int:
    train(parse_args(argv))
    return 0


if __name__ == "__main__":
    sys.exit(main())
