"""A tiny random Qwen2.5-VL checkpoint and processor, written to disk with no hub access.

The directory mimics a hub checkpoint such as ``Qwen/Qwen2.5-VL-7B-Instruct`` (a 4.x-era flat
``config.json``, ``rope_scaling: {"type": "mrope", ...}``, safetensors under the hub's parameter names,
tokenizer and processor files in the 4.57 layout), because that is the layout every supported
transformers version (4.57 .. 5.x) must accept. Every file is written by this module itself (JSON with
sorted keys, safetensors by hand), so the same seed gives byte-identical files whichever transformers
version is installed, and so bit-identical weights on each.

Used by the tests and by the offline ``prunevid demo``.
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
    "TEXT_SIZES",
    "VISION_SIZES",
    "build_tiny_checkpoint",
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
) -> dict:
    """A hub-style (transformers 4.x era) ``config.json`` for the given sizes."""
    vision = dict(vision_sizes)
    vision.update(
        {
            "hidden_act": "silu",
            "in_chans": 3,
            "out_hidden_size": text["hidden_size"],
            "spatial_patch_size": vision_sizes["patch_size"],
        }
    )
    return {
        "architectures": ["Qwen2_5_VLForConditionalGeneration"],
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
        "model_type": "qwen2_5_vl",
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


def _generation_config(token_ids: dict[str, int]) -> dict:
    """Greedy by default (the hub file's sampling settings would make the demo non-deterministic)."""
    return {
        "bos_token_id": token_ids["<|endoftext|>"],
        "eos_token_id": [token_ids["<|im_end|>"], token_ids["<|endoftext|>"]],
        "pad_token_id": token_ids["<|endoftext|>"],
        "transformers_version": "4.49.0",
    }


def _image_processor_config() -> dict:
    return {
        "do_convert_rgb": True,
        "do_normalize": True,
        "do_rescale": True,
        "do_resize": True,
        "image_mean": _CLIP_MEAN,
        "image_processor_type": "Qwen2VLImageProcessor",
        "image_std": _CLIP_STD,
        "max_pixels": _MAX_PIXELS,
        "merge_size": VISION_SIZES["spatial_merge_size"],
        "min_pixels": _MIN_PIXELS,
        "patch_size": VISION_SIZES["patch_size"],
        "processor_class": "Qwen2_5_VLProcessor",
        "resample": 3,
        "rescale_factor": 1 / 255,
        "size": {"longest_edge": _MAX_PIXELS, "shortest_edge": _MIN_PIXELS},
        "temporal_patch_size": VISION_SIZES["temporal_patch_size"],
    }


def _video_processor_config() -> dict:
    cfg = _image_processor_config()
    del cfg["image_processor_type"]
    cfg.update({"do_sample_frames": False, "video_processor_type": "Qwen2VLVideoProcessor"})
    return dict(sorted(cfg.items()))


# ----------------------------------------------------------------------------------------------
# Weights
# ----------------------------------------------------------------------------------------------


def parameter_shapes(
    vocab_size: int, num_hidden_layers: int, text: dict = TEXT_SIZES, vision: dict = VISION_SIZES
) -> dict[str, tuple[int, ...]]:
    """Hub parameter names of Qwen2.5-VL (``visual.*``, ``model.*``, ``lm_head.*``) and their shapes."""
    d, ff = text["hidden_size"], text["intermediate_size"]
    head_dim = d // text["num_attention_heads"]
    kv = text["num_key_value_heads"] * head_dim
    shapes: dict[str, tuple[int, ...]] = {
        "model.embed_tokens.weight": (vocab_size, d),
        "model.norm.weight": (d,),
        "lm_head.weight": (vocab_size, d),
    }
    for i in range(num_hidden_layers):
        p = f"model.layers.{i}."
        shapes.update(
            {
                p + "input_layernorm.weight": (d,),
                p + "post_attention_layernorm.weight": (d,),
                p + "self_attn.q_proj.weight": (d, d),
                p + "self_attn.q_proj.bias": (d,),
                p + "self_attn.k_proj.weight": (kv, d),
                p + "self_attn.k_proj.bias": (kv,),
                p + "self_attn.v_proj.weight": (kv, d),
                p + "self_attn.v_proj.bias": (kv,),
                p + "self_attn.o_proj.weight": (d, d),
                p + "mlp.gate_proj.weight": (ff, d),
                p + "mlp.up_proj.weight": (ff, d),
                p + "mlp.down_proj.weight": (d, ff),
            }
        )
    vd, vff, ps = vision["hidden_size"], vision["intermediate_size"], vision["patch_size"]
    tps = vision["temporal_patch_size"]
    merged = vd * vision["spatial_merge_size"] ** 2
    shapes["visual.patch_embed.proj.weight"] = (vd, 3, tps, ps, ps)
    for j in range(vision["depth"]):
        p = f"visual.blocks.{j}."
        shapes.update(
            {
                p + "norm1.weight": (vd,),
                p + "norm2.weight": (vd,),
                p + "attn.qkv.weight": (3 * vd, vd),
                p + "attn.qkv.bias": (3 * vd,),
                p + "attn.proj.weight": (vd, vd),
                p + "attn.proj.bias": (vd,),
                p + "mlp.gate_proj.weight": (vff, vd),
                p + "mlp.gate_proj.bias": (vff,),
                p + "mlp.up_proj.weight": (vff, vd),
                p + "mlp.up_proj.bias": (vff,),
                p + "mlp.down_proj.weight": (vd, vff),
                p + "mlp.down_proj.bias": (vd,),
            }
        )
    shapes.update(
        {
            "visual.merger.ln_q.weight": (vd,),
            "visual.merger.mlp.0.weight": (merged, merged),
            "visual.merger.mlp.0.bias": (merged,),
            "visual.merger.mlp.2.weight": (d, merged),
            "visual.merger.mlp.2.bias": (d,),
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
        if name.endswith("norm.weight") or "norm1" in name or "norm2" in name or "ln_q" in name:
            w = 1.0 + 0.1 * rng.standard_normal(shape)
        elif name.endswith(".bias"):
            w = 0.1 * rng.standard_normal(shape)
        elif name == "model.embed_tokens.weight":
            w = rng.standard_normal(shape)
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
    text: dict = TEXT_SIZES,
    vision: dict = VISION_SIZES,
    extra_corpus: str = "",
    vocab_size: int = _VOCAB_SIZE,
    rope_theta: float = 1000000.0,
    torch_dtype: str = "float32",
) -> dict:
    """Write every file of a hub-layout Qwen2.5-VL checkpoint except the weights; returns its ids and sizes.

    Files: ``config.json`` (4.x-era flat layout), ``generation_config.json`` (greedy), the image and video
    processor configs (patch 14, merge 2, temporal patch 2, CLIP mean/std; frames of 56..448 pixels a side
    that are multiples of 28 are not resized), ``chat_template.json`` and the tokenizer files: a byte-level
    BPE trained on a small English corpus plus ``extra_corpus`` (text the model must tokenize into whole
    words), with up to ``vocab_size`` entries, :data:`SPECIAL_TOKENS` last. Add
    ``model.safetensors`` under the names of :func:`parameter_shapes` for a loadable checkpoint.

    Args:
        text: language-model sizes, keys as :data:`TEXT_SIZES` (``mrope_section`` sums to head_dim / 2).
        vision: vision-tower sizes, keys as :data:`VISION_SIZES`.
        torch_dtype: the dtype ``from_pretrained(dtype="auto")`` loads the weights in.

    Returns:
        ``{"token_ids": {special token: id}, "vocab_size": int}``.
    """
    path = Path(path)
    path.mkdir(parents=True, exist_ok=True)
    corpus = _CORPUS + extra_corpus
    tokenizer_json = _tokenizer_json(_train_tokenizer(vocab_size - len(SPECIAL_TOKENS), corpus))
    token_ids = {t["content"]: t["id"] for t in tokenizer_json["added_tokens"]}
    size = len(tokenizer_json["model"]["vocab"]) + len(tokenizer_json["added_tokens"])
    if sorted(token_ids.values()) != list(range(size - len(SPECIAL_TOKENS), size)):
        raise RuntimeError("special token ids are not contiguous at the end of the vocabulary")
    config = _config(token_ids, size, num_hidden_layers, text, vision, rope_theta, torch_dtype)
    files = {
        "config.json": _dumps(config),
        "generation_config.json": _dumps(_generation_config(token_ids)),
        "preprocessor_config.json": _dumps(_image_processor_config()),
        "video_preprocessor_config.json": _dumps(_video_processor_config()),
        "chat_template.json": _dumps({"chat_template": CHAT_TEMPLATE}),
        **_tokenizer_files(tokenizer_json),
    }
    for name, content in files.items():
        (path / name).write_text(content, encoding="utf-8")
    return {"token_ids": token_ids, "vocab_size": size}


def build_tiny_checkpoint(path: str | Path, *, seed: int = 0, num_hidden_layers: int = 4) -> Path:
    """Write a tiny random Qwen2.5-VL checkpoint with its processor to ``path`` and return it.

    The directory loads with ``Qwen2_5_VLForConditionalGeneration.from_pretrained(path)`` and
    ``AutoProcessor.from_pretrained(path)`` on transformers 4.57 and 5.x. Text: hidden 64, 4 heads of
    dim 16, 2 key-value heads, ``num_hidden_layers`` layers; vision: hidden 32, depth 2 (block 0 window
    attention, block 1 full attention), patch 14, merge 2, temporal patch 2. Weights are float32 and
    depend only on ``seed``: the same seed gives byte-identical files.

    Args:
        path: directory to write; created if missing, existing files of the same names are replaced.
        seed: seed of the weights.
        num_hidden_layers: number of decoder layers of the language model.
    """
    if num_hidden_layers < 1:
        raise ValueError(f"num_hidden_layers must be >= 1, got {num_hidden_layers}")
    info = write_model_files(path, num_hidden_layers=num_hidden_layers)
    path = Path(path)
    weights = _random_weights(parameter_shapes(info["vocab_size"], num_hidden_layers), seed)
    _write_safetensors(weights, path / "model.safetensors")
    return path
