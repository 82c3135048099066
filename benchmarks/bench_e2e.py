"""End-to-end benchmark: time to first token, decode speed and memory of every PruneVid preset vs stock.

    python benchmarks/bench_e2e.py --model 7b --frames 16,32,64,128 --out results.json
    python benchmarks/bench_e2e.py --model 3b --out results_3b.json
    python benchmarks/bench_e2e.py --tiny --out /tmp/smoke.json        # CPU smoke test, seconds
    python benchmarks/bench_e2e.py --family qwen3_vl --frames 32,128   # Qwen3-VL-8B (qwen2_vl: Qwen2-VL-7B)

Model. The real Qwen2.5-VL-7B (or ``--model 3b``) *architecture*, built with random weights directly on the
GPU in bf16 with SDPA attention (compute cost does not depend on weight values; the first warm-up checks
that vision features, LLM hidden states and logits stay finite). Sizes are those of the published
``config.json`` of ``Qwen/Qwen2.5-VL-7B-Instruct`` / ``-3B-Instruct`` (see :data:`PUBLISHED_CONFIGS`).
``--family qwen3_vl`` builds the Qwen3-VL-8B architecture and ``--family qwen2_vl`` the Qwen2-VL-7B one
instead (:data:`FAMILY_MODELS`; with the tiny local processor of that family). ``--model-path DIR`` loads a
real local checkpoint and its processor instead.

Processor. No hub access: the tiny local processor of :func:`prunevid.tiny.build_tiny_checkpoint` (real
Qwen2VL image/video processors, patch 14, merge 2, temporal patch 2, max_pixels 448*448; a small BPE
tokenizer with Qwen's special tokens). The random model's special token ids (image/video/vision start/end,
eos, pad) are set to that tokenizer's ids so the prompt's ids mean the same to the model. Text prompts are
therefore a little shorter than with Qwen's tokenizer; video token counts are identical.

Inputs. ``prunevid.synthetic.make_clip`` at 448x448 (textured static background, 6 objects of which 3 move,
a scene cut at the middle) at each frame count, 2 fps; one fixed question. Every row of a frame count gets
the very same processor outputs, moved to the GPU once (TTFT starts from there).

Rows (interleaved in every repeat, in this order): ``stock`` (no PruneVid hook on the model at all), every
preset of ``prunevid.PRESETS`` (attached before the run, detached after), and ``limit``: a perfect pruner with
zero overhead. The limit row runs the stock model on a text-only prompt whose length equals the ``paper``
row's final LLM length (the video span replaced by as many ordinary text tokens as ``paper`` keeps after
Stage 2), so every LLM layer and the decode steps see the kept length from the start; it has no vision
tower cost, which a real pruner still pays: the report adds the stock vision time separately.

Where time goes. The benchmark registers its own hooks around each run (benchmark hooks are on every row,
stock included; they only record a CUDA event the first time they fire in a run):
- ``model.model.visual`` forward pre-hook / hook: vision tower time;
- ``model.model.language_model`` forward pre-hooks registered before AND after ``attach``. PyTorch runs a
  module's hooks in registration order, so the pair brackets PruneVid's own pre-hook (Stage 1): Stage-1
  time = second minus first. The same trick with forward hooks on decoder layer M brackets PruneVid's
  selection hook (Stage 2 scoring, selection, hidden-state gather and KV-cache cut), and on ``model.model``
  and the language model's forward hooks it brackets PruneVid's bookkeeping hooks ("hooks").
- LLM prefill = the language model's forward of the prefill (after every pre-hook; it contains Stage 2);
  ``llm_layers_ms`` = LLM prefill minus Stage 2.
TTFT = host clock from the (synchronised) call of ``model.generate`` to the first new token (a streamer
synchronises when the first token is pushed). Decode ms/token = time from the first to the last of
``--new-tokens`` forced tokens (``min_new_tokens``) divided by their count minus one.

Estimated LLM prefill FLOPs (``flops`` in the JSON; vision tower and Stage 1 not counted)::

    sum over decoder layers l:  2 * P * L_l  +  4 * L_l**2 * H / 2      (+ 2 * C * V for lm_head on 1 row
                                                                          + 2 * R * L_1 * H Stage-2 scoring)

P = weight elements of one layer's q, k, v, o, gate, up, down projections (read from the model), H = heads *
head_dim, C = hidden size, V = vocabulary, R = prompt rows after the video. 4 * L**2 * H counts QK^T and AV;
causal attention computes half of it. L_l = Stage-1 length for layers 0..M, kept length for layers > M
(stock: the prompt length everywhere; limit: the kept length everywhere).

Timing method (.library/device/METHOD.md): a warm-up pass over every row per frame count first (2 new
tokens, so prefill and decode kernels are both warm), then ``--repeats`` TTFT repeats (1 new token) and
``--decode-repeats`` decode repeats (``--new-tokens`` tokens), each repeat running every row once; median
and min over repeats; all raw times are in the JSON with the card, versions and date.

Run time (7B, H100 or H200, defaults). Measured stock 7B on an H200: vision 0.36 s and TTFT 0.42 s at 32
frames, vision 1.22 s at 128 frames. Seven of the eight rows pay the vision tower, so one pass over all rows
is about 2 s (16 frames) + 3 s (32) + 6 s (64) + 11 s (128) = 22 s. Warm-up (~25 s) + 5 TTFT repeats
(~110 s) + 2 decode repeats (~2 x (22 s + 32 runs x 63 steps x ~25 ms) = ~150 s) + imports, model build,
clips (~40 s): about 5.5 minutes. Decode is measured over 64 tokens but repeated only twice because it
dominates the cost and varies little. ``--time-budget`` (default 540 s from process start) skips further
repeats (recorded as skipped) instead of overrunning a 10-minute limit; the JSON is rewritten after every
frame count, so a killed run still leaves its finished frame counts.
"""

from __future__ import annotations

import time

_PROCESS_START = time.perf_counter()  # the time budget counts imports too

import argparse  # noqa: E402
import contextlib  # noqa: E402
import dataclasses  # noqa: E402
import datetime  # noqa: E402
import json  # noqa: E402
import math  # noqa: E402
import os  # noqa: E402
import platform  # noqa: E402
import re  # noqa: E402
import statistics  # noqa: E402
import subprocess  # noqa: E402
import sys  # noqa: E402
import tempfile  # noqa: E402
from collections.abc import Callable, Iterator, Sequence  # noqa: E402
from dataclasses import dataclass, field  # noqa: E402
from pathlib import Path  # noqa: E402
from typing import Any  # noqa: E402

import numpy as np  # noqa: E402
import torch  # noqa: E402
from torch import Tensor, nn  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))  # `import prunevid` from a checkout, without installing the package

import transformers  # noqa: E402
from transformers import AutoProcessor, Qwen2_5_VLForConditionalGeneration  # noqa: E402
from transformers.generation.streamers import BaseStreamer  # noqa: E402

import prunevid  # noqa: E402
from prunevid import fast_decode  # noqa: E402
from prunevid.config import PRESETS, PruneVidConfig  # noqa: E402
from prunevid.prompt import build_inputs  # noqa: E402
from prunevid.qwen2_5_vl import attach, pruner_of  # noqa: E402
from prunevid.stats import PruneStats  # noqa: E402
from prunevid.synthetic import make_clip  # noqa: E402
from prunevid.tiny import build_tiny_checkpoint  # noqa: E402
from prunevid.video import VideoClip  # noqa: E402

SCHEMA_VERSION = 1
QUESTION = "What are the moving shapes doing in this video, and what changes after the scene cut?"
SOURCE_FPS = 2.0  # Qwen2.5-VL's usual sampling rate: second_per_grid_ts = 1.0
NUM_OBJECTS = 6
LIMIT_ROW = "limit"
STOCK_ROW = "stock"
ALL_ROWS: tuple[str, ...] = (STOCK_ROW, *PRESETS, LIMIT_ROW)

# Published config.json fields of Qwen/Qwen2.5-VL-7B-Instruct and -3B-Instruct (hub layout of transformers
# 4.x, which every supported version reads), written from those files as quoted in public code; the models
# built from them have exactly the published parameter counts (PUBLISHED_PARAMETERS, checked by the tests).
# 7B: text 3584 hidden, 28 layers, 28 heads, 4 kv heads, intermediate 18944, vocab 152064, untied embeddings;
# 3B: 2048, 36, 16, 2, 11008, vocab 151936, tied; the same 32-block vision tower.
_PUBLISHED_VISION: dict[str, Any] = {
    "depth": 32,
    "hidden_act": "silu",
    "hidden_size": 1280,
    "intermediate_size": 3420,
    "num_heads": 16,
    "in_chans": 3,
    "patch_size": 14,
    "spatial_patch_size": 14,
    "spatial_merge_size": 2,
    "temporal_patch_size": 2,
    "window_size": 112,
    "fullatt_block_indexes": [7, 15, 23, 31],
    "tokens_per_second": 2,
}


def _published_config(
    hidden: int,
    layers: int,
    heads: int,
    kv_heads: int,
    intermediate: int,
    vocab: int,
    window: int,
    tied: bool,
) -> dict[str, Any]:
    return {
        "architectures": ["Qwen2_5_VLForConditionalGeneration"],
        "model_type": "qwen2_5_vl",
        "attention_dropout": 0.0,
        "hidden_act": "silu",
        "hidden_size": hidden,
        "initializer_range": 0.02,
        "intermediate_size": intermediate,
        "max_position_embeddings": 128000,
        "max_window_layers": window,
        "num_attention_heads": heads,
        "num_hidden_layers": layers,
        "num_key_value_heads": kv_heads,
        "rms_norm_eps": 1e-06,
        "rope_scaling": {"type": "mrope", "mrope_section": [16, 24, 24]},
        "rope_theta": 1000000.0,
        "sliding_window": 32768,
        "use_sliding_window": False,
        "tie_word_embeddings": tied,
        "use_cache": True,
        "vocab_size": vocab,
        # The hub's ids; replaced by the tiny tokenizer's ids (see _set_token_ids).
        "bos_token_id": 151643,
        "eos_token_id": 151645,
        "vision_start_token_id": 151652,
        "vision_end_token_id": 151653,
        "vision_token_id": 151654,
        "image_token_id": 151655,
        "video_token_id": 151656,
        "vision_config": {**_PUBLISHED_VISION, "out_hidden_size": hidden},
    }


PUBLISHED_CONFIGS: dict[str, dict[str, Any]] = {
    "7b": _published_config(3584, 28, 28, 4, 18944, 152064, 28, False),
    "3b": _published_config(2048, 36, 16, 2, 11008, 151936, 70, True),
}
PUBLISHED_SOURCE = {
    "7b": "config.json of Qwen/Qwen2.5-VL-7B-Instruct (Hugging Face hub), written out by hand",
    "3b": "config.json of Qwen/Qwen2.5-VL-3B-Instruct (Hugging Face hub), written out by hand",
}
# Published parameter counts, to check the built architecture against.
PUBLISHED_PARAMETERS = {"7b": 8_292_166_656, "3b": 3_754_622_976}


# ------------------------------------------------------------------------------------------------ families
# --family: the published architecture of each other supported family, next to Qwen2.5-VL's (random weights,
# the tiny local processor of that family). Sizes from the published config.json files, checked against
# transformers' config classes; the models built from them have exactly the hub's safetensors parameter
# totals (FAMILY parameters below, checked by tests/test_bench_families.py on the meta device).
def _qwen2_vl_7b_config() -> dict[str, Any]:
    """Qwen/Qwen2-VL-7B-Instruct: the Qwen2.5-VL-7B language model; vision depth 32, embed_dim 1280, 16 heads,
    mlp_ratio 4, no windows, merger to 3584."""
    config = _published_config(3584, 28, 28, 4, 18944, 152064, 28, False)
    config.update(
        {
            "architectures": ["Qwen2VLForConditionalGeneration"],
            "model_type": "qwen2_vl",
            "max_position_embeddings": 32768,
            "vision_config": {
                "depth": 32,
                "embed_dim": 1280,
                "hidden_act": "quick_gelu",
                "hidden_size": 3584,
                "in_chans": 3,
                "mlp_ratio": 4,
                "num_heads": 16,
                "patch_size": 14,
                "spatial_merge_size": 2,
                "spatial_patch_size": 14,
                "temporal_patch_size": 2,
            },
        }
    )
    return config


def _qwen3_vl_8b_config() -> dict[str, Any]:
    """Qwen/Qwen3-VL-8B-Instruct (4.57 layout): text 36 layers, hidden 4096, 32 heads of 128, 8 KV heads,
    intermediate 12288, interleaved mrope [24, 20, 20], theta 5e6; vision depth 27, hidden 1152, 16 heads,
    intermediate 4304, patch 16, 48x48 position grid, DeepStack after blocks 8, 16, 24."""
    return {
        "architectures": ["Qwen3VLForConditionalGeneration"],
        "model_type": "qwen3_vl",
        "tie_word_embeddings": False,
        "image_token_id": 151655,
        "video_token_id": 151656,
        "vision_start_token_id": 151652,
        "vision_end_token_id": 151653,
        "text_config": {
            "model_type": "qwen3_vl_text",
            "attention_bias": False,
            "attention_dropout": 0.0,
            "bos_token_id": 151643,
            "eos_token_id": 151645,
            "head_dim": 128,
            "hidden_act": "silu",
            "hidden_size": 4096,
            "initializer_range": 0.02,
            "intermediate_size": 12288,
            "max_position_embeddings": 262144,
            "num_attention_heads": 32,
            "num_hidden_layers": 36,
            "num_key_value_heads": 8,
            "rms_norm_eps": 1e-06,
            "rope_scaling": {
                "mrope_interleaved": True,
                "mrope_section": [24, 20, 20],
                "rope_type": "default",
            },
            "rope_theta": 5000000.0,
            "tie_word_embeddings": False,
            "use_cache": True,
            "vocab_size": 151936,
        },
        "vision_config": {
            "model_type": "qwen3_vl",
            "deepstack_visual_indexes": [8, 16, 24],
            "depth": 27,
            "hidden_act": "gelu_pytorch_tanh",
            "hidden_size": 1152,
            "in_channels": 3,
            "initializer_range": 0.02,
            "intermediate_size": 4304,
            "num_heads": 16,
            "num_position_embeddings": 2304,
            "out_hidden_size": 4096,
            "patch_size": 16,
            "spatial_merge_size": 2,
            "temporal_patch_size": 2,
        },
    }


# family -> the --model key of its published architecture (Qwen2.5-VL: --model 7b or 3b).
FAMILY_MODELS = {"qwen2_5_vl": "7b", "qwen2_vl": "qwen2-vl-7b", "qwen3_vl": "qwen3-vl-8b"}
PUBLISHED_CONFIGS.update({"qwen2-vl-7b": _qwen2_vl_7b_config(), "qwen3-vl-8b": _qwen3_vl_8b_config()})
PUBLISHED_SOURCE.update(
    {
        "qwen2-vl-7b": "config.json of Qwen/Qwen2-VL-7B-Instruct (Hugging Face hub), written out by hand",
        "qwen3-vl-8b": "config.json of Qwen/Qwen3-VL-8B-Instruct (Hugging Face hub), written out by hand",
    }
)
# The hub's safetensors totals of the two checkpoints.
PUBLISHED_PARAMETERS.update({"qwen2-vl-7b": 8_291_375_616, "qwen3-vl-8b": 8_767_123_696})
# Pixels per LLM token side: --size must be a multiple of it.
FAMILY_TOKEN_PIXELS = {"qwen2_5_vl": 28, "qwen2_vl": 28, "qwen3_vl": 32, "qwen3_vl_moe": 32}


def family_model_key(family: str, model: str) -> str:
    """The ``PUBLISHED_CONFIGS`` key to build for ``--family`` and ``--model`` (Qwen2.5-VL: 7b or 3b)."""
    if family == "qwen2_5_vl":
        if model not in ("7b", "3b"):
            raise ValueError(f"--model {model} is not a Qwen2.5-VL size: use 7b or 3b, or --family")
        return model
    if model not in ("7b", FAMILY_MODELS[family]):
        raise ValueError(
            f"--family {family} builds {FAMILY_MODELS[family]}; --model {model} is another family"
        )
    return FAMILY_MODELS[family]


def architecture_name(model_key: str) -> str:
    """Report name of a published architecture: ``qwen2.5-vl-7b``, ``qwen2-vl-7b``, ``qwen3-vl-8b``."""
    return f"qwen2.5-vl-{model_key}" if model_key in ("7b", "3b") else model_key


def with_token_ids(config_dict: dict[str, Any], token_ids: dict[str, int]) -> dict[str, Any]:
    """``config_dict`` with the tokenizer's special token ids (also in ``text_config`` when nested)."""
    config = {**json.loads(json.dumps(config_dict)), **token_ids}
    if "text_config" in config:
        text_ids = ("bos_token_id", "eos_token_id", "pad_token_id")
        config["text_config"].update({name: token_ids[name] for name in text_ids if name in token_ids})
    return config


def _model_classes(config_dict: dict[str, Any]) -> tuple[type, type]:
    """``(config class, model class)`` of ``config_dict["model_type"]`` (default Qwen2.5-VL)."""
    from prunevid.pipeline import MODEL_CLASSES

    model_type = config_dict.get("model_type", "qwen2_5_vl")
    model_class = getattr(transformers, MODEL_CLASSES[model_type])
    return model_class.config_class, model_class


def processor_note_of(family: str) -> str:
    """What the benchmark's tiny local processor of ``family`` is."""
    if family == "qwen3_vl":
        processors = (
            "Qwen3VLProcessor: Qwen2VLImageProcessor and Qwen3VLVideoProcessor, patch 16, merge 2, "
            "temporal patch 2, a total pixel budget of 768 frames of 448*448 (frames are not resized), "
            "timestamps from the clip's metadata"
        )
    else:
        processors = "Qwen2VL image/video processors: patch 14, merge 2, temporal patch 2, max_pixels 448*448"
    return (
        f"tiny local processor from prunevid.tiny.build_tiny_checkpoint(family={family!r}) ({processors}; "
        "small BPE tokenizer with Qwen's special tokens); the model config's special token ids are set to "
        "that tokenizer's ids"
    )


# Special tokens whose ids the model config must share with the processor's tokenizer.
_TOKEN_FIELDS = {
    "bos_token_id": "<|endoftext|>",
    "pad_token_id": "<|endoftext|>",
    "eos_token_id": "<|im_end|>",
    "vision_start_token_id": "<|vision_start|>",
    "vision_end_token_id": "<|vision_end|>",
    "vision_token_id": "<|vision_pad|>",
    "image_token_id": "<|image_pad|>",
    "video_token_id": "<|video_pad|>",
}


# ------------------------------------------------------------------------------------------------ model
def special_token_ids(tokenizer: Any) -> dict[str, int]:
    """The ids of the special tokens the model config names (``_TOKEN_FIELDS``) in ``tokenizer``."""
    ids = {name: tokenizer.convert_tokens_to_ids(token) for name, token in _TOKEN_FIELDS.items()}
    unknown = [name for name, value in ids.items() if value is None or value == tokenizer.unk_token_id]
    if unknown:
        raise ValueError(f"the tokenizer lacks the special tokens for {unknown}")
    return ids


def build_random_model(
    config_dict: dict[str, Any], device: torch.device, dtype: torch.dtype, seed: int = 0
) -> Qwen2_5_VLForConditionalGeneration:
    """A Qwen2.5-VL of ``config_dict``'s architecture with random weights, built directly on ``device``.

    The weights are allocated and initialised where they live (no CPU copy, no checkpoint) with the model's
    own initialiser (normal, std ``initializer_range``), in ``dtype``, SDPA attention, eval mode.
    """
    config_class, model_class = _model_classes(config_dict)  # Qwen2.5-VL, Qwen2-VL or Qwen3-VL
    config = config_class.from_dict(json.loads(json.dumps(config_dict)))  # deep copy: from_dict mutates
    torch.manual_seed(seed)
    with torch.device(device):
        model = model_class._from_config(config, dtype=dtype, attn_implementation="sdpa")
    # A no-op for what the device context placed; catches any buffer a version builds on the CPU regardless.
    return model.to(device).eval()


def load_real_model(
    path: str, device: torch.device, dtype: torch.dtype
) -> Qwen2_5_VLForConditionalGeneration:
    """A local checkpoint via the stock ``from_pretrained`` (SDPA, eval mode), then moved to ``device``.

    No ``device_map``: transformers needs ``accelerate`` for it, which the GPU machine does not have.
    """
    _, model_class = _model_classes(transformers.AutoConfig.from_pretrained(path).to_dict())  # any family
    model = model_class.from_pretrained(path, dtype=dtype, attn_implementation="sdpa")
    return model.to(device).eval()


def _check_token_ids(model: nn.Module, token_ids: dict[str, int]) -> None:
    """The ids the model's position and placeholder code read must be the processor's."""
    for name in ("video_token_id", "image_token_id", "vision_start_token_id"):
        value = getattr(model.config, name)
        if value != token_ids[name]:
            raise RuntimeError(f"model config {name}={value} but the tokenizer has {token_ids[name]}")


@dataclass(frozen=True)
class LlmDims:
    """Sizes of the language model that the FLOPs estimate needs."""

    layers: int
    hidden: int
    attention_width: int  # heads * head_dim
    vocab: int
    layer_weights: int  # weight elements of one decoder layer's linear projections

    @classmethod
    def of(cls, model: nn.Module) -> LlmDims:
        language_model = model.model.language_model
        config = language_model.config
        heads = config.num_attention_heads
        head_dim = getattr(config, "head_dim", None) or config.hidden_size // heads
        linear = [m for m in language_model.layers[0].modules() if isinstance(m, nn.Linear)]
        return cls(
            layers=len(language_model.layers),
            hidden=config.hidden_size,
            attention_width=heads * head_dim,
            vocab=config.vocab_size,
            layer_weights=sum(m.weight.numel() for m in linear),
        )


def prefill_flops(dims: LlmDims, layer_lengths: Sequence[int], scoring: tuple[int, int] | None) -> float:
    """Estimated FLOPs of one LLM prefill (see the module docstring).

    ``layer_lengths[l]`` is the number of tokens decoder layer ``l`` processes; ``scoring`` is
    ``(question rows R, keys L_1)`` when Stage 2 scores, else None.
    """
    flops = 0.0
    for length in layer_lengths:
        flops += 2.0 * dims.layer_weights * length  # every weight: one multiply-add per token
        flops += 4.0 * length**2 * dims.attention_width / 2  # QK^T + AV, causal: half the pairs
    flops += 2.0 * dims.hidden * dims.vocab  # lm_head on the last row only (generate keeps 1 logit row)
    if scoring is not None:
        rows, keys = scoring
        flops += 2.0 * rows * keys * dims.attention_width
    return flops


# ------------------------------------------------------------------------------------------------ timing
def _synchronize(device: torch.device) -> float:
    if device.type == "cuda":
        torch.cuda.synchronize(device)
    return time.perf_counter()


class Probe:
    """Timestamps recorded by benchmark hooks: a CUDA event (GPU) or a host clock (CPU) per mark.

    Only the first time a mark fires in an armed run counts, so decode steps do not overwrite the prefill.
    """

    def __init__(self, device: torch.device) -> None:
        self.cuda = device.type == "cuda"
        self.armed = False
        self.marks: dict[str, Any] = {}

    def hook(self, name: str) -> Callable[..., None]:
        """A hook for ``register_forward_pre_hook`` or ``register_forward_hook`` that records ``name``."""

        def record(*_: Any) -> None:
            if self.armed and name not in self.marks:
                if self.cuda:
                    event = torch.cuda.Event(enable_timing=True)
                    event.record()
                    self.marks[name] = event
                else:
                    self.marks[name] = time.perf_counter()

        return record

    def start(self) -> None:
        self.marks = {}
        self.armed = True

    def stop(self) -> None:
        self.armed = False

    def ms(self, first: str, second: str) -> float | None:
        """Milliseconds from mark ``first`` to ``second`` (after a synchronise); None if one is missing."""
        if first not in self.marks or second not in self.marks:
            return None
        a, b = self.marks[first], self.marks[second]
        return float(a.elapsed_time(b)) if self.cuda else (b - a) * 1e3


@contextlib.contextmanager
def instrumented(
    model: nn.Module, probe: Probe, config: PruneVidConfig | None, layer_m: int
) -> Iterator[tuple[Any, int]]:
    """Benchmark hooks around an optional PruneVid pruner; yields ``(pruner or None, benchmark hook count)``.

    Hooks of one module run in registration order, so a hook registered before ``attach`` runs before
    PruneVid's hook on the same module and one registered after runs after it: each ``*_a`` / ``*_b`` pair
    brackets exactly PruneVid's work there (nothing, without a pruner).
    """
    inner = model.model
    llm = inner.language_model
    layer = llm.layers[layer_m]
    before = [
        inner.register_forward_pre_hook(probe.hook("model_pre_a")),
        inner.visual.register_forward_pre_hook(probe.hook("vision_start")),
        inner.visual.register_forward_hook(probe.hook("vision_end")),
        llm.register_forward_pre_hook(probe.hook("llm_pre_a")),
        llm.register_forward_hook(probe.hook("llm_post_a")),
        layer.register_forward_hook(probe.hook("layer_m_a")),
    ]
    pruner = None
    after: list[Any] = []
    try:
        pruner = attach(model, config) if config is not None else None
        after = [
            inner.register_forward_pre_hook(probe.hook("model_pre_b")),
            llm.register_forward_pre_hook(probe.hook("llm_pre_b")),
            llm.register_forward_hook(probe.hook("llm_post_b")),
            layer.register_forward_hook(probe.hook("layer_m_b")),
        ]
        yield pruner, len(before) + len(after)
    finally:
        for handle in after:
            handle.remove()
        if pruner is not None:
            pruner.detach()
        for handle in before:
            handle.remove()


def count_hooks(model: nn.Module) -> int:
    """Forward (pre-)hooks registered on any module of ``model``."""
    return sum(len(m._forward_pre_hooks) + len(m._forward_hooks) for m in model.modules())


class TokenClock(BaseStreamer):
    """A generate() streamer that records the (synchronised) host time at which each new token exists."""

    def __init__(self, device: torch.device) -> None:
        self.device = device
        self.times: list[float] = []
        self._prompt_seen = False

    def put(self, value: Tensor) -> None:
        if not self._prompt_seen:  # generate() pushes the prompt first
            self._prompt_seen = True
            return
        self.times.append(_synchronize(self.device))

    def end(self) -> None:
        pass


def _tensor_of(output: Any) -> Tensor | None:
    if isinstance(output, Tensor):
        return output
    for name in ("pooler_output", "last_hidden_state"):  # 5.x vision tower / language model outputs
        value = getattr(output, name, None)
        if isinstance(value, Tensor):
            return value
    if isinstance(output, (tuple, list)) and output and isinstance(output[0], Tensor):
        return output[0]
    return None


@contextlib.contextmanager
def health_hooks(model: nn.Module, record: dict[str, Any] | None) -> Iterator[None]:
    """When ``record`` is a dict, note finiteness and scale of vision features, LLM output and logits."""
    if record is None:
        yield
        return

    def note(name: str) -> Callable[..., None]:
        def hook(_module: nn.Module, _args: Any, output: Any) -> None:
            tensor = _tensor_of(output)
            if name in record or tensor is None:
                return
            values = tensor.detach().float()
            record[name] = {
                "finite": bool(torch.isfinite(values).all()),
                "absmax": float(values.abs().max()),
                "std": float(values.std()),
            }

        return hook

    handles = [
        model.model.visual.register_forward_hook(note("vision_features")),
        model.model.language_model.register_forward_hook(note("llm_hidden")),
        model.lm_head.register_forward_hook(note("logits")),
    ]
    try:
        yield
    finally:
        for handle in handles:
            handle.remove()


def cache_size(cache: Any) -> tuple[int, list[int]]:
    """``(bytes of every cached key and value, cached length per layer)`` of a generate() cache."""
    if cache is None:
        return 0, []
    if hasattr(cache, "layers"):
        pairs = [
            (layer.keys, layer.values) for layer in cache.layers if getattr(layer, "keys", None) is not None
        ]
    elif hasattr(cache, "key_cache"):
        pairs = list(zip(cache.key_cache, cache.value_cache, strict=True))
    else:  # legacy tuple of (key, value) per layer
        pairs = [(layer[0], layer[1]) for layer in cache]
    total = sum(k.numel() * k.element_size() + v.numel() * v.element_size() for k, v in pairs)
    return total, [int(k.shape[-2]) for k, _ in pairs]


# ------------------------------------------------------------------------------------------------ rows
@dataclass(frozen=True)
class Row:
    """One configuration to time: stock (no pruner), a preset, or the zero-overhead limit."""

    name: str
    config: PruneVidConfig | None = None  # None: no pruner attached at all

    @property
    def kind(self) -> str:
        if self.name == LIMIT_ROW:
            return "limit"
        return "stock" if self.config is None else "preset"


def make_rows(names: Sequence[str]) -> list[Row]:
    """Rows in the canonical interleaving order (stock, presets, limit), keeping only ``names``."""
    unknown = sorted(set(names) - set(ALL_ROWS))
    if unknown:
        raise ValueError(f"unknown rows {unknown}: choose from {', '.join(ALL_ROWS)}")
    return [Row(name, PRESETS.get(name)) for name in ALL_ROWS if name in names]


@dataclass
class Shape:
    """One frame count: the processor outputs every row shares, and what the prompt holds."""

    frames: int
    inputs: Any  # BatchFeature on the device
    prompt_length: int
    video_tokens: int
    video_span: tuple[int, int]  # [start, end) of the video tokens in the prompt
    grid_thw: list[int]
    clip_s: float
    processor_s: float
    limit_inputs: dict[str, Tensor] | None = None
    limit_video_tokens: int | None = None


@dataclass
class Bench:
    """Everything the runs share."""

    model: Qwen2_5_VLForConditionalGeneration
    processor: Any
    device: torch.device
    token_ids: dict[str, int]
    filler_id: int
    dims: LlmDims
    default_layer: int
    base_hooks: int
    size: int
    seed: int
    question: str
    answer_batch: int = 0
    probe: Probe = field(init=False)

    def __post_init__(self) -> None:
        self.probe = Probe(self.device)

    @property
    def cuda(self) -> bool:
        return self.device.type == "cuda"


def make_benchmark_clip(frames: int, size: int, seed: int) -> VideoClip:
    """``frames`` square synthetic frames: static texture, 6 objects (3 moving), a scene cut halfway."""
    pixels = make_clip(frames, size, size, seed=seed, num_objects=NUM_OBJECTS, scene_cut_at=frames // 2)
    return VideoClip(
        frames=pixels,
        source_fps=SOURCE_FPS,
        total_num_frames=frames,
        frame_indices=np.arange(frames, dtype=np.int64),
    )


def prepare_shape(bench: Bench, frames: int) -> Shape:
    """Clip -> processor outputs on the device (once per frame count, shared by every row)."""
    started = time.perf_counter()
    clip = make_benchmark_clip(frames, bench.size, bench.seed)
    made = time.perf_counter()
    inputs = build_inputs(bench.processor, clip, bench.question)
    processed = time.perf_counter()
    inputs = inputs.to(bench.device)
    ids = inputs["input_ids"][0]
    where = torch.nonzero(ids == bench.token_ids["video_token_id"]).flatten().tolist()
    _check_video_runs(bench, inputs, where)
    return Shape(
        frames=frames,
        inputs=inputs,
        prompt_length=int(ids.shape[0]),
        video_tokens=len(where),
        video_span=(where[0], where[-1] + 1),
        grid_thw=[int(v) for v in inputs["video_grid_thw"][0].tolist()],
        clip_s=made - started,
        processor_s=processed - made,
    )


def _check_video_runs(bench: Bench, inputs: Any, where: list[int]) -> None:
    """One contiguous video span (Qwen2/2.5-VL), or t runs of h*w/4 tokens between timestamps (Qwen3-VL)."""
    from prunevid.prompt import processor_family

    t, h, w = (int(v) for v in inputs["video_grid_thw"][0].tolist())
    runs = 1 + sum(1 for a, b in zip(where[:-1], where[1:], strict=True) if b != a + 1) if where else 0
    expected = t if processor_family(bench.processor) == "qwen3_vl" else 1
    if runs != expected or len(where) != t * h * w // 4:
        raise RuntimeError(
            f"expected {expected} run(s) of video tokens ({t * h * w // 4} in all), got {runs}"
        )


def set_limit_inputs(bench: Bench, shape: Shape, kept_video_tokens: int) -> None:
    """The limit row's prompt: the video span replaced by ``kept_video_tokens`` ordinary text tokens.

    Same text around it, so its length is the pruned row's final LLM length; no pixels, so no vision tower.
    """
    ids = shape.inputs["input_ids"][0]
    start, end = shape.video_span
    text_inside = (
        end - start
    ) - shape.video_tokens  # Qwen3-VL's timestamps and frame wrappers, kept by pruning
    filler = torch.full(
        (kept_video_tokens + text_inside,), bench.filler_id, dtype=ids.dtype, device=ids.device
    )
    limit_ids = torch.cat([ids[:start], filler, ids[end:]])[None]
    shape.limit_inputs = {"input_ids": limit_ids, "attention_mask": torch.ones_like(limit_ids)}
    shape.limit_video_tokens = kept_video_tokens


def pruning_layer(bench: Bench, row: Row) -> int:
    config = row.config
    if config is not None and config.enable_stage2:
        return config.resolve_pruning_layer(bench.dims.layers)
    return bench.default_layer


def measure(
    bench: Bench, shape: Shape, row: Row, new_tokens: int, health: dict | None = None
) -> dict[str, Any]:
    """One generate() of ``new_tokens`` forced tokens for ``row`` on ``shape``: times, memory, statistics."""
    model, device, probe = bench.model, bench.device, bench.probe
    inputs = shape.limit_inputs if row.kind == "limit" else shape.inputs
    if inputs is None:
        raise RuntimeError("the limit row needs the pruned length: run the limit preset first")
    input_length = int(inputs["input_ids"].shape[1])
    _synchronize(device)
    memory_before = None
    if bench.cuda:
        torch.cuda.reset_peak_memory_stats(device)
        memory_before = torch.cuda.memory_allocated(device)
    clock = TokenClock(device)
    with instrumented(model, probe, row.config, pruning_layer(bench, row)) as (pruner, own_hooks):
        foreign_hooks = count_hooks(model) - bench.base_hooks - own_hooks
        attached = pruner_of(model) is not None
        if row.config is None and (attached or foreign_hooks):
            raise RuntimeError(
                f"row {row.name} must run the stock model, but it carries {foreign_hooks} hooks"
            )
        with health_hooks(model, health):
            probe.start()
            started = _synchronize(device)
            with torch.inference_mode():
                out = model.generate(
                    **inputs,
                    max_new_tokens=new_tokens,
                    min_new_tokens=new_tokens,
                    do_sample=False,
                    eos_token_id=bench.token_ids["eos_token_id"],
                    pad_token_id=bench.token_ids["pad_token_id"],
                    streamer=clock,
                    return_dict_in_generate=True,
                )
            finished = _synchronize(device)
            probe.stop()
        stats: PruneStats | None = pruner.last_stats if pruner is not None else None
    peak = torch.cuda.max_memory_allocated(device) if bench.cuda else None
    cache = getattr(out, "cache", None)
    if cache is None:
        cache = getattr(out, "past_key_values", None)
    kv_bytes, kv_lengths = cache_size(cache)
    generated = int(out.sequences.shape[1]) - input_length
    del out, cache

    times = clock.times
    ttft = (times[0] - started) * 1e3 if times else (finished - started) * 1e3
    vision = probe.ms("vision_start", "vision_end")
    stage1 = probe.ms("llm_pre_a", "llm_pre_b") or 0.0
    llm = probe.ms("llm_pre_b", "llm_post_a") or 0.0
    stage2 = probe.ms("layer_m_a", "layer_m_b") or 0.0
    hooks = (probe.ms("model_pre_a", "model_pre_b") or 0.0) + (probe.ms("llm_post_a", "llm_post_b") or 0.0)
    result: dict[str, Any] = {
        "ttft_ms": ttft,
        "total_ms": (finished - started) * 1e3,
        "vision_ms": vision,
        "stage1_ms": stage1,
        "stage2_ms": stage2,
        "llm_prefill_ms": llm,
        "llm_layers_ms": llm - stage2,
        "hooks_ms": hooks,
        "overhead_ms": stage1 + stage2 + hooks,
        "other_ms": ttft - (vision or 0.0) - stage1 - llm - hooks,
        "peak_memory_bytes": peak,
        "memory_before_bytes": memory_before,
        "kv_cache_bytes": kv_bytes,
        "kv_cache_length": kv_lengths,
        "generated_tokens": generated,
        "prunevid_hooks": foreign_hooks,
        "pruner_attached": attached,
        "stats": stats,
    }
    if len(times) > 1:
        steps = np.diff(np.asarray(times)) * 1e3
        result["decode_ms_per_token"] = float((times[-1] - times[0]) * 1e3 / (len(times) - 1))
        result["decode_step_median_ms"] = float(np.median(steps))
        result["decode_step_max_ms"] = float(steps.max())
    return result


# ------------------------------------------------------------------------------------------------ bookkeeping
# Raw series kept per row: (JSON key, key in measure()'s result); TTFT runs and decode runs separately.
_TTFT_SERIES = (
    "ttft_ms",
    "vision_ms",
    "stage1_ms",
    "stage2_ms",
    "llm_prefill_ms",
    "llm_layers_ms",
    "hooks_ms",
    "overhead_ms",
    "other_ms",
    "peak_memory_bytes",
    "total_ms",
)
_DECODE_SERIES = (
    ("decode_ms_per_token", "decode_ms_per_token"),
    ("decode_step_median_ms", "decode_step_median_ms"),
    ("decode_run_ttft_ms", "ttft_ms"),
    ("decode_peak_memory_bytes", "peak_memory_bytes"),
)


def _row_entry(bench: Bench, row: Row) -> dict[str, Any]:
    config = row.config
    return {
        "kind": row.kind,
        "config": None if config is None else dataclasses.asdict(config),
        "pruning_layer": pruning_layer(bench, row) if config is not None and config.enable_stage2 else None,
        "raw": {name: [] for name in (*_TTFT_SERIES, *(key for key, _ in _DECODE_SERIES), "warmup_ttft_ms")},
    }


def _record_static(bench: Bench, shape: Shape, row: Row, entry: dict[str, Any], run: dict[str, Any]) -> None:
    """Token counts, lengths, KV and FLOPs of a row (the same in every run; checked on each)."""
    stats: PruneStats | None = run["stats"]
    length0 = shape.prompt_length
    if row.kind == "limit":
        # A perfect pruner of the stock video: every layer sees the kept count from the start.
        kept = shape.limit_video_tokens or 0
        video = (shape.video_tokens, kept, kept)
        length0 = length1 = length2 = int(shape.limit_inputs["input_ids"].shape[1])
    else:
        video = (shape.video_tokens,) * 3
        if stats is not None:
            video = (stats.video_tokens_in, stats.video_tokens_after_stage1, stats.video_tokens_after_stage2)
        length1 = length0 - video[0] + video[1]
        length2 = length0 - video[0] + video[2]
    layer_m = entry["pruning_layer"]
    layers = bench.dims.layers
    if layer_m is None:
        lengths = [length1] * layers
        scoring = None
    else:
        lengths = [length1] * (layer_m + 1) + [length2] * (layers - layer_m - 1)
        scoring = (length0 - shape.video_span[1], length1)
    tokens = {
        "prompt_length": length0,
        "llm_length_stage1": length1,
        "llm_length_final": length2,
        "video_in": video[0],
        "video_after_stage1": video[1],
        "video_after_stage2": video[2],
        "retention": video[2] / video[0] if video[0] else 1.0,
        "stage2_skipped": [s.stage2_skipped for s in stats.samples] if stats is not None else None,
    }
    previous = entry.get("tokens")
    if previous is not None and previous != tokens:
        entry["tokens_varied_between_runs"] = True  # a non-deterministic selection would show here
    entry["tokens"] = tokens
    entry["prefill_flops"] = prefill_flops(bench.dims, lengths, scoring)
    entry["layer_lengths"] = {"layers_0_to_M": length1, "layers_after_M": length2, "M": layer_m}
    entry["prunevid_hooks"] = run["prunevid_hooks"]
    entry["pruner_attached"] = run["pruner_attached"]
    if run["generated_tokens"] == 1:  # the returned cache then holds the prefill only
        entry["kv_cache_bytes"] = run["kv_cache_bytes"]
        entry["kv_cache_length"] = sorted(set(run["kv_cache_length"]))
        if stats is not None:
            entry["kv_cache_bytes_prunevid_stats"] = stats.kv_cache_bytes
            entry["kv_cache_bytes_unpruned"] = stats.kv_cache_bytes_unpruned
    if run["memory_before_bytes"] is not None:
        entry["memory_before_bytes"] = run["memory_before_bytes"]


def _summary(values: Sequence[float | None]) -> dict[str, float | int] | None:
    present = [float(v) for v in values if v is not None]
    if not present:
        return None
    return {"median": statistics.median(present), "min": min(present), "max": max(present), "n": len(present)}


def finalize_shape(entry: dict[str, Any]) -> None:
    """Medians/mins per series, and FLOPs relative to the stock row of the same frame count."""
    rows = entry["rows"]
    stock_flops = rows.get(STOCK_ROW, {}).get("prefill_flops")
    for row in rows.values():
        row["summary"] = {name: _summary(values) for name, values in row["raw"].items()}
        if stock_flops and row.get("prefill_flops") is not None:
            row["prefill_flops_relative_to_stock"] = row["prefill_flops"] / stock_flops


# ------------------------------------------------------------------------------------------------ the run
class Budget:
    """Wall-clock budget from process start: decides whether the next unit of work still fits."""

    def __init__(self, seconds: float) -> None:
        self.deadline = _PROCESS_START + seconds if seconds > 0 else math.inf

    def allows(self, estimate_s: float) -> bool:
        return time.perf_counter() + estimate_s <= self.deadline

    def left(self) -> float:
        return self.deadline - time.perf_counter()


def _fmt(value: float | None, digits: int = 1) -> str:
    return "-" if value is None else f"{value:.{digits}f}"


# ------------------------------------------------------------------------------------------------ answers
@dataclass(frozen=True)
class AnswerRow:
    """One way to answer: stock or a preset, with the eager decode or fast decode (``+fd``; ``+fdc``: fast
    decode with ``compile_step=True``)."""

    name: str
    base: str  # "stock" or a preset name
    fast_decode: bool = False
    compile_step: bool = False

    @property
    def config(self) -> PruneVidConfig | None:
        return None if self.base == STOCK_ROW else PRESETS[self.base]


def answer_rows(bases: Sequence[str], compiled: Sequence[str]) -> list[AnswerRow]:
    """Each base with and without fast decode (and with a compiled step for the bases in ``compiled``)."""
    unknown = sorted(set(bases) - {STOCK_ROW, *PRESETS})
    if unknown:
        raise ValueError(f"unknown answer rows {unknown}: choose from stock, {', '.join(PRESETS)}")
    rows = []
    for base in bases:
        rows += [AnswerRow(base, base), AnswerRow(f"{base}+fd", base, True)]
        if base in compiled:
            rows.append(AnswerRow(f"{base}+fdc", base, True, True))
    return rows


def measure_answer(bench: Bench, inputs: Any, row: AnswerRow, new_tokens: int) -> dict[str, Any]:
    """One whole answer of ``new_tokens`` forced tokens: wall time, first token, decode rate, memory."""
    model, device = bench.model, bench.device
    prompt = int(inputs["input_ids"].shape[1])
    batch = int(inputs["input_ids"].shape[0])
    _synchronize(device)
    memory_before = None
    if bench.cuda:
        torch.cuda.reset_peak_memory_stats(device)
        memory_before = torch.cuda.memory_allocated(device)
    clock = TokenClock(device)
    kwargs = dict(
        max_new_tokens=new_tokens,
        min_new_tokens=new_tokens,
        do_sample=False,
        eos_token_id=bench.token_ids["eos_token_id"],
        pad_token_id=bench.token_ids["pad_token_id"],
        streamer=clock,
        return_dict_in_generate=True,
    )
    pruner = attach(model, row.config) if row.config is not None else None
    try:
        started = _synchronize(device)
        with torch.inference_mode():
            if row.fast_decode:
                out = fast_decode.generate(model, **inputs, **kwargs, compile_step=row.compile_step)
            else:
                out = model.generate(**inputs, **kwargs)
        finished = _synchronize(device)
        stats = pruner.last_stats if pruner is not None else None
    finally:
        if pruner is not None:
            pruner.detach()
    peak = torch.cuda.max_memory_allocated(device) if bench.cuda else None
    generated = int(out.sequences.shape[1]) - prompt
    result: dict[str, Any] = {
        "answer_ms": (finished - started) * 1e3,
        "peak_memory_bytes": peak,
        "memory_before_bytes": memory_before,
        "generated_tokens": generated,
        "batch": batch,
        "kept_video_tokens": None if stats is None else stats.video_tokens_after_stage2,
    }
    times = clock.times
    if times:
        result["ttft_ms"] = (times[0] - started) * 1e3
    if len(times) > 1:
        result["decode_ms_per_token"] = (times[-1] - times[0]) * 1e3 / (len(times) - 1)
        result["decode_tokens_per_s"] = batch * (len(times) - 1) / (times[-1] - times[0])
    result["answer_tokens_per_s"] = batch * generated / (finished - started)
    if row.fast_decode:
        decoded = fast_decode.last_stats(model)
        result.update(
            cache_bytes=decoded.cache_bytes,
            cache_rows=decoded.cache_rows,
            prefill_rows=decoded.prefill_rows,
            captured=decoded.captured,
            capture_s=decoded.capture_s,
        )
    else:
        cache = getattr(out, "cache", None) or getattr(out, "past_key_values", None)
        result["cache_bytes"], lengths = cache_size(cache)
        result["cache_rows"] = max(lengths) if lengths else None
    del out
    return result


_ANSWER_SERIES = (
    "answer_ms",
    "ttft_ms",
    "decode_ms_per_token",
    "decode_tokens_per_s",
    "answer_tokens_per_s",
    "peak_memory_bytes",
    "cache_bytes",
    "cache_rows",
    "capture_s",
)


def run_answers(
    bench: Bench,
    shape: Shape,
    args: argparse.Namespace,
    budget: Budget,
    batch_inputs: Any | None,
    save: Callable[[], None] = lambda: None,
) -> dict[str, Any]:
    """Whole-answer latency of every answer row at every ``--answer-tokens`` count (rows interleaved).

    A warm-up run of each (row, tokens) comes first: for fast decode it builds the static buffers of that
    answer length and captures the graph, which is recorded as ``first_call`` (capture cost); the timed runs
    then reuse them, as a later question of a similar length does.
    """
    rows = answer_rows(args.answer_rows, args.answer_compile_rows)
    tag = f"[{shape.frames:>3}f]"
    entry: dict[str, Any] = {"tokens": args.answer_tokens, "rows": {}, "skipped": []}
    for row in rows:
        entry["rows"][row.name] = {
            "base": row.base,
            "fast_decode": row.fast_decode,
            "compile_step": row.compile_step,
            "first_call": {},
            "raw": {str(n): {k: [] for k in _ANSWER_SERIES} for n in args.answer_tokens},
        }
    cases = [(n, shape.inputs, "rows") for n in args.answer_tokens]
    if batch_inputs is not None:
        n = args.answer_tokens[0]
        entry["batch"] = {"size": int(batch_inputs["input_ids"].shape[0]), "tokens": n, "rows": {}}
        for row in rows:
            entry["batch"]["rows"][row.name] = {
                "base": row.base,
                "fast_decode": row.fast_decode,
                "compile_step": row.compile_step,
                "first_call": {},
                "raw": {str(n): {k: [] for k in _ANSWER_SERIES}},
            }
        cases.append((n, batch_inputs, "batch"))
    for n, inputs, where in cases:  # warm-up and capture, per answer length
        for row in rows:
            if not row.fast_decode and where == "rows" and n != args.answer_tokens[0]:
                continue  # the eager decode has nothing to build per length
            result = measure_answer(bench, inputs, row, n if row.fast_decode else 2)
            target = entry["rows"] if where == "rows" else entry["batch"]["rows"]
            target[row.name]["first_call"][str(n)] = {
                k: result.get(k) for k in ("answer_ms", "captured", "capture_s", "cache_bytes")
            }
        print(f"{tag} answers: warm-up {where} {n} tokens done ({budget.left():.0f} s left)", flush=True)
    for r in range(args.answer_repeats):
        for n, inputs, where in cases:
            if where == "batch" and r > 0:
                continue  # one timed batch run
            estimate = sum(
                (n * 0.03 + 2.0) * (8 if where == "batch" else 1) for _ in rows
            )  # generous: 30 ms/token eager
            if not budget.allows(estimate):
                entry["skipped"].append(f"repeat {r + 1} of {where} {n} tokens (time budget)")
                continue
            line = []
            for row in rows:
                result = measure_answer(bench, inputs, row, n)
                target = entry["rows"] if where == "rows" else entry["batch"]["rows"]
                raw = target[row.name]["raw"][str(n)]
                for key in _ANSWER_SERIES:
                    raw[key].append(result.get(key))
                line.append(f"{row.name} {result['answer_ms']:.0f}")
            save()
            print(f"{tag} answer ms, {where} {n} tokens, repeat {r + 1}: {', '.join(line)}", flush=True)
    for group in [entry["rows"]] + ([entry["batch"]["rows"]] if "batch" in entry else []):
        for row_entry in group.values():
            row_entry["summary"] = {
                n: {key: _summary(values) for key, values in series.items()}
                for n, series in row_entry["raw"].items()
            }
    fast_decode.release(bench.model)
    return entry


def make_batch_inputs(bench: Bench, frames: int, size: int) -> Any:
    """``--answer-batch`` clips of ``frames`` frames with different seeds (so different kept lengths), one
    question each, left padded, on the device."""
    clips = [make_benchmark_clip(frames, size, bench.seed + 1 + i) for i in range(bench.answer_batch)]
    return build_inputs(bench.processor, clips, [bench.question] * len(clips)).to(bench.device)


def run_shape(
    bench: Bench,
    shape: Shape,
    rows: list[Row],
    args: argparse.Namespace,
    budget: Budget,
    state: dict[str, Any],
    save: Callable[[dict[str, Any]], None] = lambda entry: None,
) -> dict[str, Any]:
    """Warm-up, TTFT repeats and decode repeats of every row on one frame count (rows interleaved).

    ``save`` gets the frame count's entry after every repeat, so a run killed midway keeps its repeats.
    """
    tag = f"[{shape.frames:>3}f]"
    entry: dict[str, Any] = {
        "frames": shape.frames,
        "height": bench.size,
        "width": bench.size,
        "grid_thw": shape.grid_thw,
        "prompt_length": shape.prompt_length,
        "video_tokens": shape.video_tokens,
        "question_rows_after_video": shape.prompt_length - shape.video_span[1],
        "clip_s": shape.clip_s,
        "processor_s": shape.processor_s,
        "rows": {row.name: _row_entry(bench, row) for row in rows},
        "skipped": [],
        "activation_check": {},
        "in_progress": True,
    }
    started = time.perf_counter()
    limit_preset = args.limit_preset

    def run(row: Row, new_tokens: int, health: dict | None = None) -> dict[str, Any]:
        if row.kind == "limit" and shape.limit_inputs is None:
            if limit_preset not in state["kept"]:  # the emulated preset is not among the rows: ask it once
                probe_row = Row(limit_preset, PRESETS[limit_preset])
                stats = measure(bench, shape, probe_row, 1)["stats"]
                state["kept"][limit_preset] = stats.video_tokens_after_stage2
            set_limit_inputs(bench, shape, state["kept"][limit_preset])
        result = measure(bench, shape, row, new_tokens, health)
        _record_static(bench, shape, row, entry["rows"][row.name], result)
        if row.name == limit_preset and result["stats"] is not None:
            state["kept"][limit_preset] = result["stats"].video_tokens_after_stage2
        return result

    # Warm-up: every row once per pass; the first pass also checks activations (stock and paper).
    state["kept"] = {}
    steps: list[float] = []  # warm-up decode steps, for the decode repeats' time estimate
    for w in range(args.warmup):
        t0 = time.perf_counter()
        for row in rows:
            health = {} if w == 0 and row.name in (STOCK_ROW, "paper") else None
            result = run(row, args.warmup_new_tokens, health)
            entry["rows"][row.name]["raw"]["warmup_ttft_ms"].append(result["ttft_ms"])
            if health is not None:
                entry["activation_check"][row.name] = health
            if "decode_step_median_ms" in result:
                steps.append(result["decode_step_median_ms"] / 1e3)
        pass_s = time.perf_counter() - t0
        print(f"{tag} warm-up pass {w + 1}/{args.warmup}: {pass_s:.1f} s", flush=True)
    state["pass_s"] = pass_s

    estimate = pass_s
    for r in range(args.repeats):
        if not budget.allows(estimate):
            entry["skipped"].append(f"TTFT repeats {r + 1}..{args.repeats} (time budget)")
            print(f"{tag} time budget: skipping TTFT repeats {r + 1}..{args.repeats}", flush=True)
            break
        t0 = time.perf_counter()
        line = []
        for row in rows:
            result = run(row, 1)
            raw = entry["rows"][row.name]["raw"]
            for name in _TTFT_SERIES:
                raw[name].append(result[name])
            line.append(f"{row.name} {result['ttft_ms']:.0f}")
        estimate = time.perf_counter() - t0
        save(entry)
        print(
            f"{tag} TTFT ms, repeat {r + 1}/{args.repeats} ({estimate:.1f} s): {', '.join(line)}", flush=True
        )

    # The median, not the max: the very first decode step of a process can include one-off set-up.
    step_s = statistics.median(steps) if steps else 0.05
    estimate = estimate + len(rows) * (args.new_tokens - 1) * step_s
    for r in range(args.decode_repeats if args.new_tokens > 1 else 0):
        if not budget.allows(estimate):
            entry["skipped"].append(f"decode repeats {r + 1}..{args.decode_repeats} (time budget)")
            print(f"{tag} time budget: skipping decode repeats {r + 1}..{args.decode_repeats}", flush=True)
            break
        t0 = time.perf_counter()
        line = []
        for row in rows:
            result = run(row, args.new_tokens)
            raw = entry["rows"][row.name]["raw"]
            for key, name in _DECODE_SERIES:
                raw[key].append(result.get(name))
            line.append(f"{row.name} {_fmt(result.get('decode_ms_per_token'), 2)}")
        estimate = time.perf_counter() - t0
        save(entry)
        print(f"{tag} decode ms/token, repeat {r + 1} ({estimate:.1f} s): {', '.join(line)}", flush=True)

    if args.answer_tokens:
        batch_inputs = None
        if args.answer_batch and shape.frames == args.frames[0]:
            batch_inputs = make_batch_inputs(bench, shape.frames, bench.size)
        entry["answer"] = run_answers(bench, shape, args, budget, batch_inputs, lambda: save(entry))
        del batch_inputs
    entry["elapsed_s"] = time.perf_counter() - started
    entry["in_progress"] = False
    finalize_shape(entry)
    return entry


def environment(device: torch.device) -> dict[str, Any]:
    """Card, versions, date: what a timing needs to be compared with another."""
    env: dict[str, Any] = {
        "date_utc": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
        "python": platform.python_version(),
        "torch": torch.__version__,
        "transformers": transformers.__version__,
        "numpy": np.__version__,
        "prunevid": prunevid.__version__,
        "cuda": torch.version.cuda,
        "device": str(device),
        "platform": platform.platform(),
        "git_commit": _git_commit(),
    }
    if device.type == "cuda":
        props = torch.cuda.get_device_properties(device)
        env.update(
            card=props.name,
            card_memory_gib=round(props.total_memory / 2**30, 1),
            compute_capability=f"{props.major}.{props.minor}",
            cudnn=torch.backends.cudnn.version(),
            sdpa_backends={
                "flash": torch.backends.cuda.flash_sdp_enabled(),
                "mem_efficient": torch.backends.cuda.mem_efficient_sdp_enabled(),
                "math": torch.backends.cuda.math_sdp_enabled(),
            },
        )
    else:
        env.update(card=f"CPU ({platform.machine()})", cpu_threads=torch.get_num_threads())
    return env


def _git_commit() -> str | None:
    try:
        out = subprocess.run(
            ["git", "rev-parse", "HEAD"], cwd=ROOT, capture_output=True, text=True, timeout=10, check=True
        )
    except (OSError, subprocess.SubprocessError):
        return None  # a copy of the tree without .git
    return out.stdout.strip() or None


def _write_json(report: dict[str, Any], path: Path) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(json.dumps(report, indent=1, default=_json_default) + "\n")
    os.replace(tmp, path)  # a reader (or a kill) never sees half a file


def _json_default(value: Any) -> Any:
    if isinstance(value, (np.integer, np.floating)):
        return value.item()
    if isinstance(value, (torch.dtype, torch.device, Path)):
        return str(value)
    raise TypeError(f"cannot write {type(value).__name__} to JSON")


def _slug(text: str) -> str:
    return re.sub(r"[^a-z0-9]+", "-", text.lower()).strip("-")


def print_table(report: dict[str, Any]) -> None:
    """A short table last, so the tail of the output carries the result."""
    print(f"\n== {report['model']['name']} on {report['environment']['card']} (medians) ==")
    header = (
        f"{'frames':>6} {'row':<13} {'TTFT ms':>8} {'x stock':>7} {'vision':>7} {'S1':>6} {'S2':>6} "
        f"{'LLM':>7} {'dec ms/t':>8} {'peak GiB':>8} {'tokens in>S1>S2':>17} {'FLOPs':>6}"
    )
    print(header)
    for shape in report["results"]:
        rows = shape["rows"]
        stock = _median(rows.get(STOCK_ROW, {}), "ttft_ms")
        for name, row in rows.items():
            ttft = _median(row, "ttft_ms")
            speedup = stock / ttft if stock and ttft else None
            peak = _median(row, "peak_memory_bytes")
            t = row.get("tokens", {})
            tokens = ">".join(
                str(t.get(k, "-")) for k in ("video_in", "video_after_stage1", "video_after_stage2")
            )
            print(
                f"{shape['frames']:>6} {name:<13} {_fmt(ttft):>8} {_fmt(speedup, 2):>7} "
                f"{_fmt(_median(row, 'vision_ms')):>7} {_fmt(_median(row, 'stage1_ms')):>6} "
                f"{_fmt(_median(row, 'stage2_ms')):>6} {_fmt(_median(row, 'llm_prefill_ms')):>7} "
                f"{_fmt(_median(row, 'decode_ms_per_token'), 2):>8} "
                f"{_fmt(peak / 2**30 if peak else None, 2):>8} "
                f"{tokens:>17} {_fmt(row.get('prefill_flops_relative_to_stock'), 2):>6}"
            )


def _median(row: dict[str, Any], key: str) -> float | None:
    return ((row.get("summary") or {}).get(key) or {}).get("median")


# ------------------------------------------------------------------------------------------------ main
def parse_args(argv: Sequence[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument(
        "--model", choices=sorted(PUBLISHED_CONFIGS), default="7b", help="architecture to build"
    )
    parser.add_argument(
        "--model-path", help="a local checkpoint (any supported family) to load instead of random weights"
    )
    parser.add_argument(
        "--family",
        choices=sorted(FAMILY_MODELS),
        default="qwen2_5_vl",
        help="model family: qwen2_5_vl (--model 7b or 3b), qwen2_vl (Qwen2-VL-7B), qwen3_vl (Qwen3-VL-8B)",
    )
    parser.add_argument(
        "--tiny", action="store_true", help="smoke test: the tiny checkpoint, small clips, 1 repeat"
    )
    parser.add_argument("--frames", help="comma-separated frame counts (default 16,32,64,128; tiny: 8,16)")
    parser.add_argument(
        "--size", type=int, help="frame side in pixels, a multiple of 28 (default 448; tiny: 112)"
    )
    parser.add_argument(
        "--rows", default=",".join(ALL_ROWS), help=f"comma-separated subset of {','.join(ALL_ROWS)}"
    )
    parser.add_argument("--repeats", type=int, help="TTFT repeats per frame count (default 5; tiny: 1)")
    parser.add_argument(
        "--decode-repeats", type=int, help="decode repeats per frame count (default 2; tiny: 1)"
    )
    parser.add_argument(
        "--new-tokens", type=int, help="forced new tokens per decode run (default 64; tiny: 4)"
    )
    parser.add_argument("--warmup", type=int, default=1, help="warm-up passes over every row per frame count")
    parser.add_argument("--warmup-new-tokens", type=int, default=2, help="new tokens in warm-up runs")
    parser.add_argument(
        "--limit-preset", default="paper", choices=sorted(PRESETS), help="kept length for 'limit'"
    )
    parser.add_argument(
        "--time-budget", type=float, help="seconds from start; later repeats are skipped (0: none)"
    )
    parser.add_argument("--device", help="cuda, cuda:N or cpu (default: cuda if available)")
    parser.add_argument(
        "--dtype", choices=("bfloat16", "float16", "float32"), help="default bf16 (CPU: fp32)"
    )
    parser.add_argument("--seed", type=int, default=0, help="seed of the weights and the clips")
    parser.add_argument(
        "--answer-tokens",
        default="",
        help="whole-answer rows: comma-separated new-token counts (e.g. 64,256)",
    )
    parser.add_argument(
        "--answer-rows",
        default="stock,fast,paper",
        help="bases of the answer rows (each with and without +fd)",
    )
    parser.add_argument(
        "--answer-compile-rows", default="", help="bases also answered with fast decode + compile_step (+fdc)"
    )
    parser.add_argument("--answer-repeats", type=int, default=2, help="timed repeats of the answer rows")
    parser.add_argument(
        "--answer-batch", type=int, default=0, help="also answer a batch of N clips at the first frame count"
    )
    parser.add_argument(
        "--out", type=Path, help="JSON path (default benchmarks/results/e2e_<model>_<card>_<date>.json)"
    )
    args = parser.parse_args(argv)

    tiny = args.tiny
    defaults = {
        "frames": "8,16" if tiny else "16,32,64,128",
        "size": (4 * FAMILY_TOKEN_PIXELS[args.family] if tiny else 448),
        "repeats": 1 if tiny else 5,
        "decode_repeats": 1 if tiny else 2,
        "new_tokens": 4 if tiny else 64,
        "time_budget": 0.0 if tiny else 540.0,
    }
    for name, value in defaults.items():
        if getattr(args, name) is None:
            setattr(args, name, value)
    args.frames = [int(f) for f in str(args.frames).split(",") if f.strip()]
    args.rows = [r.strip() for r in args.rows.split(",") if r.strip()]
    args.answer_tokens = [int(n) for n in str(args.answer_tokens).split(",") if n.strip()]
    args.answer_rows = [r.strip() for r in args.answer_rows.split(",") if r.strip()]
    args.answer_compile_rows = [r.strip() for r in args.answer_compile_rows.split(",") if r.strip()]
    if any(n < 2 for n in args.answer_tokens):
        parser.error("--answer-tokens must be >= 2 (a decode rate needs two tokens)")
    if any(f < 2 or f % 2 for f in args.frames):
        parser.error("--frames must be even numbers >= 2 (Qwen2.5-VL pairs frames)")
    unit = FAMILY_TOKEN_PIXELS[args.family]
    if args.size % unit:
        parser.error(f"--size must be a multiple of {unit} (patches of {unit // 2} pixels merged 2x2)")
    try:
        args.model = family_model_key(args.family, args.model)
    except ValueError as error:
        parser.error(str(error))
    if args.repeats < 0 or args.decode_repeats < 0 or args.warmup < 1 or args.new_tokens < 1:
        parser.error(
            "need --warmup >= 1 (discarded runs first), --repeats/--decode-repeats >= 0, --new-tokens >= 1"
        )
    if args.warmup_new_tokens < 2:
        parser.error("--warmup-new-tokens must be >= 2 so decode kernels are warm too")
    return args


def run_benchmark(args: argparse.Namespace) -> dict[str, Any]:
    """Build the model and processor, run every frame count, write and return the report."""
    device = torch.device(args.device or ("cuda" if torch.cuda.is_available() else "cpu"))
    if device.type != "cuda" and not args.tiny:
        raise SystemExit("the real-size benchmark needs a CUDA device; use --tiny for a CPU smoke test")
    dtype = (
        getattr(torch, args.dtype)
        if args.dtype
        else (torch.bfloat16 if device.type == "cuda" else torch.float32)
    )
    budget = Budget(args.time_budget)
    rows = make_rows(args.rows)
    if args.answer_tokens:
        # Every (row, answer length) keeps its static buffers for the whole frame count, so timed answers
        # reuse them (run_answers releases them after each frame count).
        fast_decode.MAX_ENGINES_PER_MODEL = 32
    env = environment(device)
    name = (
        "tiny"
        if args.tiny
        else (Path(args.model_path).name if args.model_path else architecture_name(args.model))
    )
    date = datetime.datetime.now(datetime.timezone.utc).strftime("%Y%m%d-%H%M%S")
    out = args.out or ROOT / "benchmarks" / "results" / f"e2e_{_slug(name)}_{_slug(env['card'])}_{date}.json"

    with tempfile.TemporaryDirectory(prefix="prunevid-bench-") as tmp:
        built = time.perf_counter()
        if args.model_path:
            processor = AutoProcessor.from_pretrained(args.model_path)
            token_ids = special_token_ids(processor.tokenizer)
            model = load_real_model(args.model_path, device, dtype)
            source = f"checkpoint {args.model_path}"
            processor_note = "the checkpoint's own processor"
        else:
            checkpoint = build_tiny_checkpoint(Path(tmp) / f"tiny-{args.family}", family=args.family)
            processor = AutoProcessor.from_pretrained(checkpoint)
            token_ids = special_token_ids(processor.tokenizer)
            if args.tiny:
                config_dict = json.loads((checkpoint / "config.json").read_text())
                source = "random weights, architecture of the tiny test checkpoint (prunevid.tiny)"
            else:
                config_dict = with_token_ids(PUBLISHED_CONFIGS[args.model], token_ids)
                source = f"random weights, architecture from {PUBLISHED_SOURCE[args.model]}"
            model = build_random_model(config_dict, device, dtype, args.seed)
            processor_note = processor_note_of(args.family)
        _synchronize(device)
        build_s = time.perf_counter() - built
        _check_token_ids(model, token_ids)
        dims = LlmDims.of(model)
        filler_id = processor.tokenizer(" frame", add_special_tokens=False)["input_ids"][0]
        bench = Bench(
            model=model,
            processor=processor,
            device=device,
            token_ids=token_ids,
            filler_id=int(filler_id),
            dims=dims,
            default_layer=PruneVidConfig().resolve_pruning_layer(dims.layers),
            base_hooks=count_hooks(model),
            size=args.size,
            seed=args.seed,
            question=QUESTION,
            answer_batch=args.answer_batch,
        )
        parameters = sum(p.numel() for p in model.parameters())  # shared (tied) tensors count once
        expected = None if (args.tiny or args.model_path) else PUBLISHED_PARAMETERS[args.model]
        print(
            f"{name}: {parameters / 1e9:.3f} B parameters"
            + (f" (published {expected / 1e9:.3f} B)" if expected else "")
            + f", {dtype}, built in {build_s:.1f} s on {env['card']}",
            flush=True,
        )
        report: dict[str, Any] = {
            "benchmark": "prunevid end-to-end (bench_e2e.py)",
            "schema": SCHEMA_VERSION,
            "complete": False,
            "model": {
                "name": name,
                "source": source,
                "architecture": None if args.tiny or args.model_path else PUBLISHED_CONFIGS[args.model],
                "parameters": parameters,
                "published_parameters": expected,
                "dtype": str(dtype).replace("torch.", ""),
                "attn_implementation": model.config._attn_implementation,
                "build_s": build_s,
                "llm": dataclasses.asdict(dims),
                "default_pruning_layer": bench.default_layer,
            },
            "processor": {"note": processor_note, "token_ids": token_ids, "filler_token_id": bench.filler_id},
            "environment": env,
            "settings": {
                "frames": args.frames,
                "size": args.size,
                "rows": [row.name for row in rows],
                "repeats": args.repeats,
                "decode_repeats": args.decode_repeats,
                "new_tokens": args.new_tokens,
                "warmup": args.warmup,
                "warmup_new_tokens": args.warmup_new_tokens,
                "time_budget_s": args.time_budget,
                "seed": args.seed,
                "question": QUESTION,
                "clip": f"prunevid.synthetic.make_clip(T, {args.size}, {args.size}, seed={args.seed}, "
                f"num_objects={NUM_OBJECTS}, scene_cut_at=T//2) at {SOURCE_FPS} fps",
                "limit_preset": args.limit_preset,
                "answer_tokens": args.answer_tokens,
                "answer_rows": [row.name for row in answer_rows(args.answer_rows, args.answer_compile_rows)]
                if args.answer_tokens
                else [],
                "answer_repeats": args.answer_repeats,
                "answer_batch": args.answer_batch,
                "fast_decode_reuse_slack_rows": fast_decode.REUSE_SLACK_ROWS,
            },
            "method": {
                "ttft": "host clock, synchronised, from generate() call (processor outputs already on the "
                "device) to the first new token; 1 new token in TTFT runs",
                "decode": "(time of last - time of first new token) / (new_tokens - 1); min_new_tokens "
                "forces all",
                "breakdown": "CUDA events in benchmark hooks; *_a hooks registered before attach(), *_b "
                "after, so each pair brackets PruneVid's own hook on that module (hooks run in registration "
                "order)",
                "llm_layers_ms": "language-model forward minus Stage-2 selection",
                "other_ms": "TTFT - vision - Stage 1 - LLM forward - hooks: embedding, M-RoPE index, "
                "generate() bookkeeping, lm_head, sampling",
                "limit": f"stock model on a text-only prompt of the '{args.limit_preset}' row's final LLM "
                "length (video span replaced by as many plain tokens as it keeps): all layers and decode at "
                "the kept length, no pruning overhead, no vision tower (add the stock vision time for a full "
                "TTFT)",
                "flops": "sum_l [2*P*L_l + 4*L_l^2*H/2] + 2*C*V + 2*R*L_1*H; P = linear weight elements per "
                "layer, H = heads*head_dim, C = hidden, V = vocab, R = rows after the video; L_l = Stage-1 "
                "length for layers <= M, kept length after M; vision tower and Stage 1 not counted",
                "peak_memory": "torch.cuda.max_memory_allocated after reset_peak_memory_stats before each "
                "run (weights included)",
                "kv_cache_bytes": "keys+values of the cache generate() returns after a 1-token run (prefill "
                "only)",
                "answer": "whole generate() call with N forced new tokens (min_new_tokens), "
                "synchronised host clock; ttft and decode ms/token from a streamer that synchronises per "
                "token; '+fd' rows call prunevid.fast_decode.generate (static buffers, CUDA graph), '+fdc' "
                "with compile_step=True; a warm-up call per (row, answer length) first builds buffers and "
                "captures the graph (first_call.capture_s), timed calls reuse them; cache_bytes: static "
                "buffers (fd) or the dynamic cache returned after the answer (eager); batch rows: "
                "--answer-batch clips of different seeds, left padded",
            },
            "results": [],
        }
        state: dict[str, Any] = {}
        try:
            for frames in args.frames:
                previous = report["results"][-1] if report["results"] else None
                if previous is not None and "pass_s" in state:
                    # A pass costs roughly in proportion to the video tokens.
                    estimate = state["pass_s"] * frames / previous["frames"]
                    if not budget.allows(estimate):
                        print(f"[{frames:>3}f] time budget: skipped", flush=True)
                        report.setdefault("skipped_frames", []).append(frames)
                        continue
                shape = prepare_shape(bench, frames)
                print(
                    f"[{frames:>3}f] {shape.video_tokens} video tokens, prompt {shape.prompt_length}; clip "
                    f"{shape.clip_s:.1f} s, processor {shape.processor_s:.1f} s; "
                    f"{budget.left():.0f} s of budget left",
                    flush=True,
                )
                finished = list(report["results"])

                def save(entry: dict[str, Any], finished: list = finished) -> None:
                    finalize_shape(entry)
                    _write_json({**report, "results": [*finished, entry]}, out)

                report["results"].append(run_shape(bench, shape, rows, args, budget, state, save))
                del shape
                _write_json(report, out)
            report["complete"] = True
        except BaseException as error:  # keep what finished, then fail loudly
            report["error"] = f"{type(error).__name__}: {error}"
            raise
        finally:
            report["elapsed_s"] = time.perf_counter() - _PROCESS_START
            _write_json(report, out)
            print(f"wrote {out}", flush=True)
    print_table(report)
    print(f"total {report['elapsed_s']:.0f} s", flush=True)
    return report


def main(argv: Sequence[str] | None = None) -> dict[str, Any]:
    """Command-line entry point; returns the report (for in-process use by the smoke test)."""
    return run_benchmark(parse_args(argv))


if __name__ == "__main__":
    main()
