"""Tiny random Qwen VL checkpoints (Qwen2.5-VL, Qwen2-VL, Qwen3-VL, Qwen3-VL-MoE), written with no hub access.

Each directory mimics a hub checkpoint of its family (``Qwen/Qwen2.5-VL-7B-Instruct``,
``Qwen/Qwen2-VL-7B-Instruct``, ``Qwen/Qwen3-VL-8B-Instruct``, ``Qwen/Qwen3-VL-30B-A3B-Instruct``): a 4.x-era
``config.json`` (``rope_scaling``, which 5.x converts to ``rope_parameters``), safetensors under the hub's
parameter names, tokenizer and processor files in the 4.57 layout, because that is the layout every
supported transformers version (4.57 .. 5.x) must accept. Every file is written by this module itself (JSON
with sorted keys, safetensors by hand), so the same family and seed give byte-identical files whichever
transformers version is installed, and so bit-identical weights on each. All families share one locally
trained BPE tokenizer and the Qwen2.5-VL chat template; they differ in the config, the parameter names and
shapes, and the processor files (see :data:`FAMILIES`).

Used by the tests, the benchmarks' local processors and the offline ``prunevid demo``.
"""

from __future__ import annotations

import json
import struct
from pathlib import Path

import numpy as np
from tokenizers import (
    AddedToken,
    Regex,
    Tokenizer,
    decoders,
    models,
    normalizers,
    pre_tokenizers,
    processors,
    trainers,
)

__all__ = [
    "SPECIAL_TOKENS",
    "CHAT_TEMPLATE",
    "DEFAULT_NUM_LAYERS",
    "FAMILIES",
    "TEXT_SIZES",
    "VISION_SIZES",
    "build_tiny_checkpoint",
    "family_sizes",
    "parameter_shapes",
    "write_model_files",
]

# Bump when the files written change, so cached checkpoints of an older layout are not reused.
_FORMAT_VERSION = 1

# Added after the BPE vocabulary in this order, so their ids are contiguous (as in Qwen2's tokenizer).
SPECIAL_TOKENS: tuple[str, ...] = (
    "<|endoftext|>",
    "<|im_start|>",
    "<|im_end|>",
    "<|object_ref_start|>",
    "<|object_ref_end|>",
    "<|box_start|>",
    "<|box_end|>",
    "<|quad_start|>",
    "<|quad_end|>",
    "<|vision_start|>",
    "<|vision_end|>",
    "<|vision_pad|>",
    "<|image_pad|>",
    "<|video_pad|>",
)

# Qwen2's pre-tokenizer split pattern (public, part of every Qwen2 tokenizer.json).
_SPLIT_PATTERN = (
    r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}"
    r"| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+"
)

# The Qwen2.5-VL chat template (as published with the instruct checkpoints).
CHAT_TEMPLATE = (
    "{% set image_count = namespace(value=0) %}{% set video_count = namespace(value=0) %}"
    "{% for message in messages %}{% if loop.first and message['role'] != 'system' %}"
    "<|im_start|>system\nYou are a helpful assistant.<|im_end|>\n{% endif %}"
    "<|im_start|>{{ message['role'] }}\n"
    "{% if message['content'] is string %}{{ message['content'] }}<|im_end|>\n"
    "{% else %}{% for content in message['content'] %}"
    "{% if content['type'] == 'image' or 'image' in content or 'image_url' in content %}"
    "{% set image_count.value = image_count.value + 1 %}"
    "{% if add_vision_id %}Picture {{ image_count.value }}: {% endif %}"
    "<|vision_start|><|image_pad|><|vision_end|>"
    "{% elif content['type'] == 'video' or 'video' in content %}"
    "{% set video_count.value = video_count.value + 1 %}"
    "{% if add_vision_id %}Video {{ video_count.value }}: {% endif %}"
    "<|vision_start|><|video_pad|><|vision_end|>"
    "{% elif 'text' in content %}{{ content['text'] }}{% endif %}{% endfor %}<|im_end|>\n"
    "{% endif %}{% endfor %}{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}"
)

# A small English corpus for the BPE: enough merges that prompts and questions tokenize into words.
_CORPUS = """\
The video shows a small red ball rolling across a wooden table from the left side to the right side.
A blue square stays still in the corner of the frame while the green circle moves slowly upward.
What happens in the video? Describe the scene in one sentence. How many objects are there?
Which object moves the fastest, and in which direction does it move? Is anything static?
The camera does not move. The background is a striped wall with soft light from a window.
At the start of the clip a person walks into the room, picks up a cup, and puts it on the shelf.
Then the scene changes: a car drives along a road next to a river under a cloudy sky.
There are three people in the picture. One of them is holding a yellow umbrella in the rain.
Answer the question about the video. Answer with a single word or a short phrase.
Question: what colour is the moving shape? Answer: the moving shape is red.
Question: does the square move? Answer: no, the square is static for the whole video.
Question: how many scenes are in the video? Answer: there are two scenes and one cut.
You are a helpful assistant. Please watch the video carefully and answer the question.
The dog runs after the ball in the garden, jumps over a small fence and comes back to the house.
A bird flies from one tree to another while the wind moves the leaves and the grass.
The first frame is dark, the middle frames are bright, and the last frame is dark again.
Objects can be rectangles, discs, circles, squares, lines, or stars with different colours.
Red, green, blue, yellow, orange, purple, black, white, grey, pink, brown and cyan.
Left, right, up, down, top, bottom, centre, middle, front, back, near, far, inside, outside.
Before, after, during, while, when, then, first, second, third, last, finally, again.
The time is about ten seconds, and the frames are sampled at two frames per second.
One, two, three, four, five, six, seven, eight, nine, ten, eleven, twelve, sixteen, thirty two.
This is a test of a tiny model. The model has random weights, so its answers are not meaningful.
Token pruning removes redundant video tokens that do not change over time, and merges similar ones.
The static background is the same in every frame, so many of its tokens can be merged into one.
Moving objects change their position, so the tokens that cover them are kept for each frame.
The question decides which tokens matter: tokens with high attention from the question are kept.
A cat sleeps on the sofa. A man reads a book. A woman opens the door and says hello to the child.
The chef cuts the vegetables, puts them in a pan, and cooks them over a high flame for a minute.
Players kick the ball across the field; the goalkeeper catches it and throws it back to the team.
The sun sets behind the mountains and the sky turns orange, then purple, then dark blue at night.
In the kitchen there is a table, four chairs, a lamp, a clock on the wall and a plant near the sink.
Is the red ball bigger than the blue square? Yes. Is the green circle to the left of it? No.
The video begins with a close view of a hand, then the view zooms out to show the whole room.
"""


# ----------------------------------------------------------------------------------------------
# Sizes
# ----------------------------------------------------------------------------------------------

TEXT_SIZES = {
    "hidden_size": 64,
    "num_attention_heads": 4,
    "num_key_value_heads": 2,
    "intermediate_size": 128,
    "mrope_section": [2, 3, 3],  # sums to head_dim / 2 = 8
}
VISION_SIZES = {
    "depth": 2,
    "hidden_size": 32,
    "intermediate_size": 64,
    "num_heads": 2,
    "patch_size": 14,
    "spatial_merge_size": 2,
    "temporal_patch_size": 2,
    "window_size": 112,
    "fullatt_block_indexes": [1],
    "tokens_per_second": 2,
}
# Qwen2-VL: the Qwen2.5-VL language model; a vision tower without windows (LayerNorm blocks, fc1/fc2 MLP,
# width embed_dim, MLP embed_dim * mlp_ratio), patch 14.
QWEN2_VL_VISION_SIZES = {
    "depth": 2,
    "embed_dim": 32,
    "mlp_ratio": 2,
    "num_heads": 2,
    "patch_size": 14,
    "spatial_merge_size": 2,
    "temporal_patch_size": 2,
}
# Qwen3-VL: explicit head_dim 16 with mrope_section [4, 2, 2], which gives the published interleaved
# pattern (T H W T H W T T over the 8 frequencies, as [24, 20, 20] over 64 does: THW x 20 then TTTT); q/k
# norms, no attention bias. 6 layers so that the default pruning layer round(10/28 * 6) = 2 is >= the 2
# DeepStack levels (the stages need M >= K, see the Qwen3-VL spec, DeepStack).
QWEN3_VL_TEXT_SIZES = {
    "hidden_size": 64,
    "num_attention_heads": 4,
    "num_key_value_heads": 2,
    "head_dim": 16,
    "intermediate_size": 128,
    "mrope_section": [4, 2, 2],
}
# Qwen3-VL-MoE: every layer sparse, 4 experts, top 2. moe_intermediate_size 48 keeps the fused expert
# matrices non-square (hidden 64 x 96, 48 x 64), so 5.x's load-time transpose of the 4.57 layout applies.
QWEN3_VL_MOE_TEXT_SIZES = {
    **QWEN3_VL_TEXT_SIZES,
    "num_experts": 4,
    "num_experts_per_tok": 2,
    "moe_intermediate_size": 48,
}
# Qwen3-VL vision: patch 16 (32 pixels per LLM token), learned position embedding on an 8 x 8 grid
# (num_position_embeddings must be a square; 2304 = 48 x 48 published), DeepStack features after blocks 0
# and 1 (published: 8, 16, 24 of 27 blocks).
QWEN3_VL_VISION_SIZES = {
    "depth": 3,
    "hidden_size": 32,
    "intermediate_size": 64,
    "num_heads": 2,
    "patch_size": 16,
    "spatial_merge_size": 2,
    "temporal_patch_size": 2,
    "num_position_embeddings": 64,
    "deepstack_visual_indexes": [0, 1],
}

# The families this module builds: model_type -> (architecture, processor class, text sizes, vision sizes).
FAMILIES: dict[str, tuple[str, str, dict, dict]] = {
    "qwen2_5_vl": ("Qwen2_5_VLForConditionalGeneration", "Qwen2_5_VLProcessor", TEXT_SIZES, VISION_SIZES),
    "qwen2_vl": ("Qwen2VLForConditionalGeneration", "Qwen2VLProcessor", TEXT_SIZES, QWEN2_VL_VISION_SIZES),
    "qwen3_vl": (
        "Qwen3VLForConditionalGeneration",
        "Qwen3VLProcessor",
        QWEN3_VL_TEXT_SIZES,
        QWEN3_VL_VISION_SIZES,
    ),
    "qwen3_vl_moe": (
        "Qwen3VLMoeForConditionalGeneration",
        "Qwen3VLProcessor",
        QWEN3_VL_MOE_TEXT_SIZES,
        QWEN3_VL_VISION_SIZES,
    ),
}
# Decoder layers of each family's tiny checkpoint by default.
DEFAULT_NUM_LAYERS = {"qwen2_5_vl": 4, "qwen2_vl": 4, "qwen3_vl": 6, "qwen3_vl_moe": 6}
# Qwen3-VL's video processor budgets the pixels of all frames together (t * h * w, sides multiples of 32):
# clips of up to 768 frames with sides of 32..448 pixels that are multiples of 32 are not resized (as the
# Qwen2/2.5-VL processors leave frames of up to 448 x 448 alone), so benchmarks see full-size frames.
_QWEN3_VIDEO_MIN_PIXELS = 2 * 32 * 32
_QWEN3_VIDEO_MAX_PIXELS = 768 * 448 * 448
_QWEN3_MEAN_STD = [0.5, 0.5, 0.5]


def family_sizes(family: str) -> tuple[dict, dict]:
    """The tiny ``(text, vision)`` sizes of ``family`` (copies; keys as the module's ``*_SIZES`` dicts).

    Raises:
        ValueError: ``family`` is not one of :data:`FAMILIES`.
    """
    _check_family(family)
    _, _, text, vision = FAMILIES[family]
    return dict(text), dict(vision)


def _check_family(family: str) -> None:
    if family not in FAMILIES:
        raise ValueError(f"unknown model family {family!r}: choose one of {', '.join(FAMILIES)}")


def _is_qwen3(family: str) -> bool:
    return family in ("qwen3_vl", "qwen3_vl_moe")


# BPE vocabulary + special tokens (the corpus yields enough merges for this many).
_VOCAB_SIZE = 768
# Frames of 56x56 .. 448x448 with sides a multiple of 28 are not resized by the processors.
_MIN_PIXELS = 56 * 56
_MAX_PIXELS = 448 * 448
_CLIP_MEAN = [0.48145466, 0.4578275, 0.40821073]
_CLIP_STD = [0.26862954, 0.26130258, 0.27577711]


# ----------------------------------------------------------------------------------------------
# Tokenizer
# ----------------------------------------------------------------------------------------------


def _train_tokenizer(vocab_size: int = _VOCAB_SIZE - len(SPECIAL_TOKENS), corpus: str = _CORPUS) -> dict:
    """Train the byte-level BPE on ``corpus``; returns the parsed ``tokenizer.json`` content."""
    tok = Tokenizer(models.BPE())
    tok.normalizer = normalizers.NFC()
    tok.pre_tokenizer = pre_tokenizers.Sequence(
        [
            pre_tokenizers.Split(Regex(_SPLIT_PATTERN), behavior="isolated", invert=False),
            pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=False),
        ]
    )
    tok.decoder = decoders.ByteLevel()
    tok.post_processor = processors.ByteLevel(trim_offsets=False)
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size,
        min_frequency=1,
        show_progress=False,
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        special_tokens=[],
    )
    tok.train_from_iterator(corpus.splitlines(), trainer=trainer)
    tok.add_special_tokens([AddedToken(t, special=True, normalized=False) for t in SPECIAL_TOKENS])
    return json.loads(tok.to_str())


def _tokenizer_json(trained: dict) -> dict:
    """Normalise the trained tokenizer to a fixed layout, independent of the `tokenizers` version."""
    model = trained["model"]
    vocab: dict[str, int] = dict(sorted(model["vocab"].items(), key=lambda kv: kv[1]))
    merges = [m if isinstance(m, str) else " ".join(m) for m in model["merges"]]
    added = [
        {
            "id": t["id"],
            "content": t["content"],
            "single_word": False,
            "lstrip": False,
            "rstrip": False,
            "normalized": False,
            "special": True,
        }
        for t in trained["added_tokens"]
    ]
    byte_level = {"type": "ByteLevel", "add_prefix_space": False, "trim_offsets": False, "use_regex": False}
    return {
        "version": "1.0",
        "truncation": None,
        "padding": None,
        "added_tokens": added,
        "normalizer": {"type": "NFC"},
        "pre_tokenizer": {
            "type": "Sequence",
            "pretokenizers": [
                {
                    "type": "Split",
                    "pattern": {"Regex": _SPLIT_PATTERN},
                    "behavior": "Isolated",
                    "invert": False,
                },
                byte_level,
            ],
        },
        "post_processor": byte_level,
        "decoder": byte_level,
        "model": {
            "type": "BPE",
            "dropout": None,
            "unk_token": None,
            "continuing_subword_prefix": "",
            "end_of_word_suffix": "",
            "fuse_unk": False,
            "byte_fallback": False,
            "ignore_merges": False,
            "vocab": vocab,
            "merges": [m.split(" ") for m in merges],
        },
    }


def _tokenizer_files(tokenizer_json: dict) -> dict[str, str]:
    """Text of every tokenizer file of a hub Qwen2.5-VL checkpoint (4.x layout)."""
    ids = {t["content"]: t["id"] for t in tokenizer_json["added_tokens"]}
    added_decoder = {
        str(ids[t]): {
            "content": t,
            "lstrip": False,
            "normalized": False,
            "rstrip": False,
            "single_word": False,
            "special": True,
        }
        for t in SPECIAL_TOKENS
    }
    extra = [t for t in SPECIAL_TOKENS if t not in ("<|endoftext|>",)]
    tokenizer_config = {
        "add_bos_token": False,
        "add_prefix_space": False,
        "added_tokens_decoder": added_decoder,
        "additional_special_tokens": extra,
        "bos_token": None,
        "chat_template": CHAT_TEMPLATE,
        "clean_up_tokenization_spaces": False,
        "eos_token": "<|im_end|>",
        "errors": "replace",
        "model_max_length": 32768,
        "pad_token": "<|endoftext|>",
        "split_special_tokens": False,
        "tokenizer_class": "Qwen2Tokenizer",
        "unk_token": None,
    }
    vocab = tokenizer_json["model"]["vocab"]
    merges = ["#version: 0.2"] + [" ".join(m) for m in tokenizer_json["model"]["merges"]]
    return {
        "tokenizer.json": _dumps(tokenizer_json, sort_keys=False),
        "tokenizer_config.json": _dumps(tokenizer_config),
        "vocab.json": json.dumps(vocab, ensure_ascii=False, separators=(",", ":")),
        "merges.txt": "\n".join(merges) + "\n",
    }


# ----------------------------------------------------------------------------------------------
# Config and processor files
# ----------------------------------------------------------------------------------------------


def _config(
    token_ids: dict[str, int],
    vocab_size: int,
    num_hidden_layers: int,
    text: dict = TEXT_SIZES,
    vision_sizes: dict = VISION_SIZES,
    rope_theta: float = 1000000.0,
    torch_dtype: str = "float32",
    family: str = "qwen2_5_vl",
) -> dict:
    """A hub-style (transformers 4.x era) ``config.json`` of ``family`` for the given sizes."""
    if _is_qwen3(family):
        return _qwen3_config(
            token_ids, vocab_size, num_hidden_layers, text, vision_sizes, torch_dtype, family
        )
    vision = dict(vision_sizes)
    if family == "qwen2_vl":
        vision.update(
            {
                "hidden_size": text["hidden_size"],
                "in_chans": 3,
                "model_type": "qwen2_vl",
                "spatial_patch_size": vision_sizes["patch_size"],
            }
        )
    else:
        vision.update(
            {
                "hidden_act": "silu",
                "in_chans": 3,
                "out_hidden_size": text["hidden_size"],
                "spatial_patch_size": vision_sizes["patch_size"],
            }
        )
    architecture = FAMILIES[family][0]
    return {
        "architectures": [architecture],
        "attention_dropout": 0.0,
        "bos_token_id": token_ids["<|endoftext|>"],
        "eos_token_id": token_ids["<|im_end|>"],
        "vision_start_token_id": token_ids["<|vision_start|>"],
        "vision_end_token_id": token_ids["<|vision_end|>"],
        "vision_token_id": token_ids["<|vision_pad|>"],
        "image_token_id": token_ids["<|image_pad|>"],
        "video_token_id": token_ids["<|video_pad|>"],
        "hidden_act": "silu",
        "hidden_size": text["hidden_size"],
        "initializer_range": 0.02,
        "intermediate_size": text["intermediate_size"],
        "max_position_embeddings": 32768,
        "max_window_layers": num_hidden_layers,
        "model_type": family,
        "num_attention_heads": text["num_attention_heads"],
        "num_hidden_layers": num_hidden_layers,
        "num_key_value_heads": text["num_key_value_heads"],
        "rms_norm_eps": 1e-06,
        "rope_scaling": {"type": "mrope", "mrope_section": list(text["mrope_section"])},
        "rope_theta": rope_theta,
        "sliding_window": 32768,
        "tie_word_embeddings": False,
        "torch_dtype": torch_dtype,
        "transformers_version": "4.49.0",
        "use_cache": True,
        "use_sliding_window": False,
        "vision_config": vision,
        "vocab_size": vocab_size,
    }


def _qwen3_config(
    token_ids: dict[str, int],
    vocab_size: int,
    num_hidden_layers: int,
    text: dict,
    vision_sizes: dict,
    torch_dtype: str,
    family: str,
) -> dict:
    """A Qwen3-VL(-MoE) ``config.json`` in the published (4.57) nested layout.

    ``text_config.rope_scaling`` is always written (4.57 fails to build the model without it; 5.x reads it
    with ``rope_theta`` into ``rope_parameters``).
    """
    text_config = {
        "attention_bias": False,
        "attention_dropout": 0.0,
        "bos_token_id": token_ids["<|endoftext|>"],
        "eos_token_id": token_ids["<|im_end|>"],
        "head_dim": text["head_dim"],
        "hidden_act": "silu",
        "hidden_size": text["hidden_size"],
        "initializer_range": 0.02,
        "intermediate_size": text["intermediate_size"],
        "max_position_embeddings": 32768,
        "model_type": f"{family}_text",
        "num_attention_heads": text["num_attention_heads"],
        "num_hidden_layers": num_hidden_layers,
        "num_key_value_heads": text["num_key_value_heads"],
        "rms_norm_eps": 1e-06,
        "rope_scaling": {
            "mrope_interleaved": True,
            "mrope_section": list(text["mrope_section"]),
            "rope_type": "default",
        },
        "rope_theta": 5000000.0,
        "tie_word_embeddings": False,
        "torch_dtype": torch_dtype,
        "use_cache": True,
        "vocab_size": vocab_size,
    }
    if family == "qwen3_vl_moe":
        text_config.update(
            {
                "decoder_sparse_step": 1,
                "mlp_only_layers": [],
                "moe_intermediate_size": text["moe_intermediate_size"],
                "norm_topk_prob": True,
                "num_experts": text["num_experts"],
                "num_experts_per_tok": text["num_experts_per_tok"],
            }
        )
    vision = dict(vision_sizes)
    vision.update(
        {
            "hidden_act": "gelu_pytorch_tanh",
            "in_channels": 3,
            "initializer_range": 0.02,
            "model_type": family,
            "out_hidden_size": text["hidden_size"],
        }
    )
    return {
        "architectures": [FAMILIES[family][0]],
        "image_token_id": token_ids["<|image_pad|>"],
        "model_type": family,
        "text_config": dict(sorted(text_config.items())),
        "tie_word_embeddings": False,
        "transformers_version": "4.57.0",
        "video_token_id": token_ids["<|video_pad|>"],
        "vision_config": dict(sorted(vision.items())),
        "vision_end_token_id": token_ids["<|vision_end|>"],
        "vision_start_token_id": token_ids["<|vision_start|>"],
    }


def _generation_config(token_ids: dict[str, int]) -> dict:
    """Greedy by default (the hub file's sampling settings would make the demo non-deterministic)."""
    return {
        "bos_token_id": token_ids["<|endoftext|>"],
        "eos_token_id": [token_ids["<|im_end|>"], token_ids["<|endoftext|>"]],
        "pad_token_id": token_ids["<|endoftext|>"],
        "transformers_version": "4.49.0",
    }


def _image_processor_config(family: str = "qwen2_5_vl") -> dict:
    """``preprocessor_config.json``: ``Qwen2VLImageProcessor`` with the family's patch size and mean/std."""
    vision = FAMILIES[family][3]
    factor = vision["patch_size"] * vision["spatial_merge_size"]
    mean, std = (_QWEN3_MEAN_STD, _QWEN3_MEAN_STD) if _is_qwen3(family) else (_CLIP_MEAN, _CLIP_STD)
    min_pixels = _MIN_PIXELS if factor == 28 else (2 * factor) ** 2
    return {
        "do_convert_rgb": True,
        "do_normalize": True,
        "do_rescale": True,
        "do_resize": True,
        "image_mean": mean,
        "image_processor_type": "Qwen2VLImageProcessor",
        "image_std": std,
        "max_pixels": _MAX_PIXELS,
        "merge_size": vision["spatial_merge_size"],
        "min_pixels": min_pixels,
        "patch_size": vision["patch_size"],
        "processor_class": FAMILIES[family][1],
        "resample": 3,
        "rescale_factor": 1 / 255,
        "size": {"longest_edge": _MAX_PIXELS, "shortest_edge": min_pixels},
        "temporal_patch_size": vision["temporal_patch_size"],
    }


def _video_processor_config(family: str = "qwen2_5_vl") -> dict:
    """``video_preprocessor_config.json``.

    Qwen2/2.5-VL: ``Qwen2VLVideoProcessor``, per-frame budget as the images, no frame sampling. Qwen3-VL:
    ``Qwen3VLVideoProcessor`` with its published defaults (samples 2 fps unless told
    ``do_sample_frames=False``, 4..768 frames) and a total pixel budget over all frames suited to tiny
    clips (see ``_QWEN3_VIDEO_MIN_PIXELS``).
    """
    cfg = _image_processor_config(family)
    del cfg["image_processor_type"], cfg["max_pixels"], cfg["min_pixels"]
    if _is_qwen3(family):
        cfg.update(
            {
                "do_sample_frames": True,
                "fps": 2,
                "max_frames": 768,
                "min_frames": 4,
                "size": {"longest_edge": _QWEN3_VIDEO_MAX_PIXELS, "shortest_edge": _QWEN3_VIDEO_MIN_PIXELS},
                "video_processor_type": "Qwen3VLVideoProcessor",
            }
        )
    else:
        cfg.update(
            {
                "do_sample_frames": False,
                "max_pixels": _MAX_PIXELS,
                "min_pixels": _MIN_PIXELS,
                "video_processor_type": "Qwen2VLVideoProcessor",
            }
        )
    return dict(sorted(cfg.items()))


# ----------------------------------------------------------------------------------------------
# Weights
# ----------------------------------------------------------------------------------------------


def parameter_shapes(
    vocab_size: int,
    num_hidden_layers: int,
    text: dict = TEXT_SIZES,
    vision: dict = VISION_SIZES,
    family: str = "qwen2_5_vl",
) -> dict[str, tuple[int, ...]]:
    """Hub parameter names of a ``family`` checkpoint and their shapes.

    Qwen2.5-VL and Qwen2-VL checkpoints are published in the old layout (``visual.*``, ``model.*``,
    ``lm_head.*``), Qwen3-VL(-MoE) in the module layout (``model.visual.*``, ``model.language_model.*``,
    ``lm_head.*``); every supported transformers version maps both to its module tree. Qwen3-VL-MoE experts
    are stored fused in the published (4.57) orientation: ``gate_up_proj`` ``[E, hidden, 2 * moe_inter]``,
    ``down_proj`` ``[E, moe_inter, hidden]`` (5.x transposes them on load).
    """
    _check_family(family)
    qwen3 = _is_qwen3(family)
    llm, visual = ("model.language_model.", "model.visual.") if qwen3 else ("model.", "visual.")
    d, ff = text["hidden_size"], text["intermediate_size"]
    head_dim = text.get("head_dim", d // text["num_attention_heads"])
    q = text["num_attention_heads"] * head_dim
    kv = text["num_key_value_heads"] * head_dim
    shapes: dict[str, tuple[int, ...]] = {
        llm + "embed_tokens.weight": (vocab_size, d),
        llm + "norm.weight": (d,),
        "lm_head.weight": (vocab_size, d),
    }
    for i in range(num_hidden_layers):
        p = f"{llm}layers.{i}."
        shapes.update(
            {
                p + "input_layernorm.weight": (d,),
                p + "post_attention_layernorm.weight": (d,),
                p + "self_attn.q_proj.weight": (q, d),
                p + "self_attn.k_proj.weight": (kv, d),
                p + "self_attn.v_proj.weight": (kv, d),
                p + "self_attn.o_proj.weight": (d, q),
            }
        )
        if qwen3:
            shapes.update(
                {p + "self_attn.q_norm.weight": (head_dim,), p + "self_attn.k_norm.weight": (head_dim,)}
            )
        else:
            shapes.update({p + "self_attn.q_proj.bias": (q,), p + "self_attn.k_proj.bias": (kv,)})
            shapes[p + "self_attn.v_proj.bias"] = (kv,)
        if family == "qwen3_vl_moe":
            experts, moe_ff = text["num_experts"], text["moe_intermediate_size"]
            shapes.update(
                {
                    p + "mlp.gate.weight": (experts, d),
                    p + "mlp.experts.gate_up_proj": (experts, d, 2 * moe_ff),
                    p + "mlp.experts.down_proj": (experts, moe_ff, d),
                }
            )
        else:
            shapes.update(
                {
                    p + "mlp.gate_proj.weight": (ff, d),
                    p + "mlp.up_proj.weight": (ff, d),
                    p + "mlp.down_proj.weight": (d, ff),
                }
            )
    shapes.update(_vision_shapes(visual, d, vision, family))
    return shapes


def _vision_shapes(visual: str, out_dim: int, vision: dict, family: str) -> dict[str, tuple[int, ...]]:
    """The vision tower's parameters (names under ``visual``) for each family."""
    ps, tps, merge = vision["patch_size"], vision["temporal_patch_size"], vision["spatial_merge_size"]
    vd = vision["embed_dim"] if family == "qwen2_vl" else vision["hidden_size"]
    vff = vd * vision["mlp_ratio"] if family == "qwen2_vl" else vision["intermediate_size"]
    merged = vd * merge**2
    shapes: dict[str, tuple[int, ...]] = {visual + "patch_embed.proj.weight": (vd, 3, tps, ps, ps)}
    if _is_qwen3(family):
        shapes[visual + "patch_embed.proj.bias"] = (vd,)
        shapes[visual + "pos_embed.weight"] = (vision["num_position_embeddings"], vd)
    for j in range(vision["depth"]):
        p = f"{visual}blocks.{j}."
        shapes.update(
            {
                p + "norm1.weight": (vd,),
                p + "norm2.weight": (vd,),
                p + "attn.qkv.weight": (3 * vd, vd),
                p + "attn.qkv.bias": (3 * vd,),
                p + "attn.proj.weight": (vd, vd),
                p + "attn.proj.bias": (vd,),
            }
        )
        if family == "qwen2_5_vl":  # RMSNorm blocks, gated MLP
            for name in ("gate_proj", "up_proj"):
                shapes.update({p + f"mlp.{name}.weight": (vff, vd), p + f"mlp.{name}.bias": (vff,)})
            shapes.update({p + "mlp.down_proj.weight": (vd, vff), p + "mlp.down_proj.bias": (vd,)})
        else:  # LayerNorm blocks, two-layer MLP
            fc1, fc2 = ("fc1", "fc2") if family == "qwen2_vl" else ("linear_fc1", "linear_fc2")
            shapes.update({p + "norm1.bias": (vd,), p + "norm2.bias": (vd,)})
            shapes.update({p + f"mlp.{fc1}.weight": (vff, vd), p + f"mlp.{fc1}.bias": (vff,)})
            shapes.update({p + f"mlp.{fc2}.weight": (vd, vff), p + f"mlp.{fc2}.bias": (vd,)})
    if not _is_qwen3(family):
        shapes.update(
            {
                visual + "merger.ln_q.weight": (vd,),
                visual + "merger.mlp.0.weight": (merged, merged),
                visual + "merger.mlp.0.bias": (merged,),
                visual + "merger.mlp.2.weight": (out_dim, merged),
                visual + "merger.mlp.2.bias": (out_dim,),
            }
        )
        if family == "qwen2_vl":
            shapes[visual + "merger.ln_q.bias"] = (vd,)
        return shapes
    # Qwen3-VL: the merger normalises each patch before the 2x2 shuffle; DeepStack mergers after it.
    mergers = [("merger.", vd)] + [
        (f"deepstack_merger_list.{k}.", merged) for k in range(len(vision["deepstack_visual_indexes"]))
    ]
    for prefix, norm_dim in mergers:
        p = visual + prefix
        shapes.update(
            {
                p + "norm.weight": (norm_dim,),
                p + "norm.bias": (norm_dim,),
                p + "linear_fc1.weight": (merged, merged),
                p + "linear_fc1.bias": (merged,),
                p + "linear_fc2.weight": (out_dim, merged),
                p + "linear_fc2.bias": (out_dim,),
            }
        )
    return shapes


def _random_weights(shapes: dict[str, tuple[int, ...]], seed: int) -> dict[str, np.ndarray]:
    """float32 weights: fan-in scaled normals for matrices, unit-scale embeddings, norms near 1.

    Larger than the usual 0.02 init on purpose: attention should be far from uniform so that tests of
    token selection see real differences between tokens.
    """
    rng = np.random.default_rng(seed)
    out: dict[str, np.ndarray] = {}
    for name in sorted(shapes):  # fixed draw order
        shape = shapes[name]
        if name.endswith("norm.weight") or "norm1.w" in name or "norm2.w" in name or "ln_q.w" in name:
            w = 1.0 + 0.1 * rng.standard_normal(shape)
        elif name.endswith(".bias"):
            w = 0.1 * rng.standard_normal(shape)
        elif name == "model.embed_tokens.weight":
            w = rng.standard_normal(shape)
        elif ".experts." in name:  # fused [E, in, out] expert matrices
            w = rng.standard_normal(shape) / np.sqrt(shape[1])
        else:
            fan_in = int(np.prod(shape[1:]))
            w = rng.standard_normal(shape) / np.sqrt(fan_in)
        out[name] = np.ascontiguousarray(w, dtype=np.float32)
    return out


def _write_safetensors(tensors: dict[str, np.ndarray], path: Path) -> None:
    """Write float32 tensors in the safetensors format (sorted names, 8-byte aligned header)."""
    header: dict[str, dict] = {"__metadata__": {"format": "pt"}}
    offset = 0
    for name in sorted(tensors):
        t = tensors[name]
        header[name] = {"dtype": "F32", "shape": list(t.shape), "data_offsets": [offset, offset + t.nbytes]}
        offset += t.nbytes
    blob = json.dumps(header, separators=(",", ":")).encode()
    blob += b" " * (-len(blob) % 8)
    with open(path, "wb") as f:
        f.write(struct.pack("<Q", len(blob)))
        f.write(blob)
        for name in sorted(tensors):
            f.write(tensors[name].astype("<f4", copy=False).tobytes())


# ----------------------------------------------------------------------------------------------
# Public API
# ----------------------------------------------------------------------------------------------


def _dumps(obj: object, *, sort_keys: bool = True) -> str:
    return json.dumps(obj, indent=2, sort_keys=sort_keys, ensure_ascii=False) + "\n"


def write_model_files(
    path: str | Path,
    *,
    num_hidden_layers: int,
    text: dict | None = None,
    vision: dict | None = None,
    extra_corpus: str = "",
    vocab_size: int = _VOCAB_SIZE,
    rope_theta: float = 1000000.0,
    torch_dtype: str = "float32",
    family: str = "qwen2_5_vl",
) -> dict:
    """Write every file of a hub-layout ``family`` checkpoint except the weights; returns its ids and sizes.

    Files: ``config.json`` (4.x-era layout: flat for Qwen2/2.5-VL, ``text_config`` / ``vision_config`` for
    Qwen3-VL), ``generation_config.json`` (greedy), the image and video processor configs,
    ``chat_template.json`` (the Qwen2.5-VL template, whose video item renders
    ``<|vision_start|><|video_pad|><|vision_end|>`` as the published Qwen2-VL and Qwen3-VL templates do) and
    the tokenizer files: a byte-level BPE trained on a small English corpus plus ``extra_corpus`` (text the
    model must tokenize into whole words), with up to ``vocab_size`` entries, :data:`SPECIAL_TOKENS` last.
    Add ``model.safetensors`` under the names of :func:`parameter_shapes` for a loadable checkpoint.

    Processors: Qwen2.5-VL / Qwen2-VL: patch 14, merge 2, temporal patch 2, CLIP mean/std, frames of
    56..448 pixels a side that are multiples of 28 are not resized, no frame sampling. Qwen3-VL(-MoE): images
    through ``Qwen2VLImageProcessor`` with patch 16, videos through ``Qwen3VLVideoProcessor`` (patch 16,
    merge 2, temporal patch 2, mean/std 0.5, samples 2 fps unless ``do_sample_frames=False``); clips of up to
    768 frames with sides of 32..448 pixels that are multiples of 32 are not resized.

    Args:
        text: language-model sizes, keys as the family's (:func:`family_sizes`); None: the family's.
        vision: vision-tower sizes, keys as the family's; None: the family's.
        torch_dtype: the dtype ``from_pretrained(dtype="auto")`` loads the weights in.
        family: one of :data:`FAMILIES` (a ``model_type``).

    Returns:
        ``{"token_ids": {special token: id}, "vocab_size": int}``.
    """
    default_text, default_vision = family_sizes(family)
    text = default_text if text is None else text
    vision = default_vision if vision is None else vision
    path = Path(path)
    path.mkdir(parents=True, exist_ok=True)
    corpus = _CORPUS + extra_corpus
    tokenizer_json = _tokenizer_json(_train_tokenizer(vocab_size - len(SPECIAL_TOKENS), corpus))
    token_ids = {t["content"]: t["id"] for t in tokenizer_json["added_tokens"]}
    size = len(tokenizer_json["model"]["vocab"]) + len(tokenizer_json["added_tokens"])
    if sorted(token_ids.values()) != list(range(size - len(SPECIAL_TOKENS), size)):
        raise RuntimeError("special token ids are not contiguous at the end of the vocabulary")
    config = _config(token_ids, size, num_hidden_layers, text, vision, rope_theta, torch_dtype, family)
    files = {
        "config.json": _dumps(config),
        "generation_config.json": _dumps(_generation_config(token_ids)),
        "preprocessor_config.json": _dumps(_image_processor_config(family)),
        "video_preprocessor_config.json": _dumps(_video_processor_config(family)),
        "chat_template.json": _dumps({"chat_template": CHAT_TEMPLATE}),
        **_tokenizer_files(tokenizer_json),
    }
    for name, content in files.items():
        (path / name).write_text(content, encoding="utf-8")
    return {"token_ids": token_ids, "vocab_size": size}


def build_tiny_checkpoint(
    path: str | Path,
    *,
    seed: int = 0,
    num_hidden_layers: int | None = None,
    family: str = "qwen2_5_vl",
) -> Path:
    """Write a tiny random checkpoint of ``family`` with its processor to ``path`` and return it.

    The directory loads with the family's ``*ForConditionalGeneration.from_pretrained(path)`` (or
    ``AutoModelForImageTextToText``) and ``AutoProcessor.from_pretrained(path)`` on transformers 4.57 and
    5.x. Weights are float32 and depend only on ``family`` and ``seed``: the same pair gives byte-identical
    files. Every family: text hidden 64, 4 attention heads of dim 16, 2 key-value heads, the shared BPE
    tokenizer (768 ids, Qwen's special tokens last); vision merge 2, temporal patch 2.

    - ``qwen2_5_vl``: 4 layers, mrope [2, 3, 3]; vision hidden 32, depth 2 (block 0 in 112-pixel windows,
      block 1 full), patch 14.
    - ``qwen2_vl``: 4 layers, mrope [2, 3, 3]; vision embed_dim 32, depth 2, mlp_ratio 2, patch 14.
    - ``qwen3_vl``: 6 layers, head_dim 16, interleaved mrope [4, 2, 2], q/k norms; vision hidden 32, depth 3,
      patch 16, 8x8 learned position grid, DeepStack after vision blocks [0, 1] (added after LLM layers 0
      and 1; the default pruning layer round(10/28 * 6) = 2 is past them).
    - ``qwen3_vl_moe``: ``qwen3_vl`` with every MLP a sparse block of 4 experts (top 2, intermediate 48).

    Args:
        path: directory to write; created if missing, existing files of the same names are replaced.
        seed: seed of the weights.
        num_hidden_layers: number of decoder layers of the language model; None: the family's default
            (:data:`DEFAULT_NUM_LAYERS`).
        family: one of :data:`FAMILIES` (the checkpoint's ``model_type``).

    Raises:
        ValueError: an unknown family, or fewer than 1 layer.
    """
    _check_family(family)
    if num_hidden_layers is None:
        num_hidden_layers = DEFAULT_NUM_LAYERS[family]
    if num_hidden_layers < 1:
        raise ValueError(f"num_hidden_layers must be >= 1, got {num_hidden_layers}")
    info = write_model_files(path, num_hidden_layers=num_hidden_layers, family=family)
    path = Path(path)
    text, vision = family_sizes(family)
    weights = _random_weights(
        parameter_shapes(info["vocab_size"], num_hidden_layers, text, vision, family), seed
    )
    _write_safetensors(weights, path / "model.safetensors")
    return path
