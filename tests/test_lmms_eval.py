"""The lmms-eval plugin: registration through lmms-eval's entry points, and generate_until on the tiny model.

Needs ``pip install -e '.[lmms]'`` (CI installs it and sets PRUNEVID_REQUIRE_LMMS_EVAL=1, so a broken
install fails here instead of skipping). The option parsing tests need no lmms-eval.
"""

from __future__ import annotations

import dataclasses
import importlib
import os
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from prunevid.config import PruneVidConfig
from prunevid.integrations.lmms_eval_registry import CONFIG_FIELDS, MODEL_ID, config_from_model_args
from prunevid.synthetic import make_clip, write_video

# Clip sizes in units of the family's pixels per LLM token side (28 for Qwen2.5-VL, 32 for Qwen3-VL):
# different sizes, so each request's token count names its clip.
CLIP_UNITS = [(2, 2), (4, 3), (3, 4)]
FRAMES = 8
QUESTIONS = ["What moves in the video?", "Which colour is the disc?", "How many shapes are there?"]
# model id -> (family of the tiny checkpoint, lmms-eval's own class, pixels per token side).
FAMILIES = {
    MODEL_ID: ("qwen2_5_vl", "lmms_eval.models.chat.qwen2_5_vl.Qwen2_5_VL", 28),
    "prunevid_qwen3_vl": ("qwen3_vl", "lmms_eval.models.chat.qwen3_vl.Qwen3_VL", 32),
}


def _model_args(unit: int) -> str:
    """Frames pass through lmms-eval's sampling (8 frames) and resize bounds unchanged at these sizes."""
    pixels = f"min_pixels={(2 * unit) ** 2},max_pixels={(4 * unit) ** 2}"
    return f"device=cpu,device_map=cpu,max_num_frames={FRAMES},{pixels}"


MODEL_ARGS = _model_args(28)


@pytest.fixture(scope="module")
def lmms_models() -> Any:
    """``lmms_eval.models``; skipped when lmms-eval is missing, unless CI requires it."""
    if os.environ.get("PRUNEVID_REQUIRE_LMMS_EVAL") == "1":
        import lmms_eval.models

        return lmms_eval.models
    return pytest.importorskip("lmms_eval.models", reason="lmms-eval not installed: pip install -e '.[lmms]'")


def _task_docs(folder: Path, unit: int) -> list[dict[str, str]]:
    """One doc per clip: an MP4 written from generated frames, and a question."""
    docs = []
    for index, ((rows, columns), question) in enumerate(zip(CLIP_UNITS, QUESTIONS, strict=True)):
        frames = make_clip(FRAMES, rows * unit, columns * unit, seed=index)
        video = write_video(frames, folder / f"clip{index}-{unit}.mp4", fps=4.0)
        docs.append({"video": str(video), "question": question})
    return docs


def _doc_to_messages(doc: dict[str, str]) -> list[dict[str, Any]]:
    """What an lmms-eval video task's ``doc_to_messages`` gives the chat models."""
    content = [{"type": "video", "url": doc["video"]}, {"type": "text", "text": doc["question"]}]
    return [{"role": "user", "content": content}]


def _requests(docs: list[dict[str, str]]) -> list[Any]:
    from lmms_eval.api.instance import Instance

    gen_kwargs = {"max_new_tokens": 6, "until": ["\n\n"]}
    return [
        Instance(
            request_type="generate_until",
            arguments=(doc["question"], _doc_to_messages, dict(gen_kwargs), index, "clips", "test"),
            idx=0,
            metadata={"task": "clips", "doc_id": index, "repeats": 1},
        )
        for index, doc in enumerate(docs)
    ]


def _run(model_class: Any, model_args: str, docs: list[dict[str, str]]) -> list[Any]:
    lm = model_class.create_from_arg_string(model_args)
    lm.task_dict = {"clips": {"test": docs}}
    return lm.generate_until(_requests(docs))


def _lmms_class(path: str) -> type:
    module, name = path.rsplit(".", 1)
    return getattr(importlib.import_module(module), name)


@pytest.mark.parametrize("model_id", list(FAMILIES))
def test_registered_through_entry_point(lmms_models: Any, model_id: str) -> None:
    from prunevid.integrations.lmms_eval_model import PruneVidLmmsModel

    plugin = lmms_models.get_model(model_id)
    lmms_class = _lmms_class(FAMILIES[model_id][1])
    assert issubclass(plugin, PruneVidLmmsModel) and plugin.__mro__[2] is lmms_class
    assert not plugin.is_simple


@pytest.mark.parametrize(("model_id", "batch_size"), [(MODEL_ID, 1), (MODEL_ID, 2), ("prunevid_qwen3_vl", 2)])
def test_baseline_answers_as_stock_and_paper_prunes(
    lmms_models: Any,
    tiny_checkpoint_of: Callable[[str], Path],
    tmp_path: Path,
    model_id: str,
    batch_size: int,
) -> None:
    family, lmms_class, unit = FAMILIES[model_id]
    task_docs = _task_docs(tmp_path, unit)
    plugin = lmms_models.get_model(model_id)
    args = f"pretrained={tiny_checkpoint_of(family)},{_model_args(unit)},batch_size={batch_size}"
    stock = _run(_lmms_class(lmms_class), args, task_docs)
    baseline = _run(plugin, f"{args},preset=baseline", task_docs)
    paper = _run(plugin, f"{args},preset=paper,keep_ratio=0.5", task_docs)

    assert [r.text for r in baseline] == [r.text for r in stock]
    # 2 frames x unit x unit pixels per video token.
    expected_tokens = [FRAMES // 2 * rows * columns for rows, columns in CLIP_UNITS]
    for results, preset in ((baseline, "baseline"), (paper, "paper")):
        logged = [r.token_counts.to_dict() for r in results]
        assert all(1 <= entry["output_tokens"] <= 6 for entry in logged)  # lmms-eval's own counts kept
        records = [entry["prunevid"] for entry in logged]
        assert [r["video_tokens_in"] for r in records] == expected_tokens  # each row filed under its request
        assert all(r["preset"] == preset and r["ttft_s"] > 0 for r in records)
    assert all(r.token_counts.prunevid["retention"] == 1.0 for r in baseline)
    for result in paper:
        record = result.token_counts.prunevid
        assert record["video_tokens_after_stage2"] < record["video_tokens_in"]
        assert record["retention"] == record["video_tokens_after_stage2"] / record["video_tokens_in"]
    assert max(r.token_counts.prunevid["batch_size"] for r in paper) == min(batch_size, len(task_docs))


def test_model_args_set_config_fields(lmms_models: Any, tiny_checkpoint: Path) -> None:
    plugin = lmms_models.get_model(MODEL_ID)
    lm = plugin.create_from_arg_string(
        f"pretrained={tiny_checkpoint},{MODEL_ARGS},preset=aggressive,keep_ratio=0.25,tau=0.9,"
        "pruning_layer=2,fast_vision=false,attention_aggregation=mean,dpc_knn_k=3"
    )
    assert lm.prunevid_config == PruneVidConfig.preset("aggressive").replace(
        keep_ratio=0.25,
        tau=0.9,
        pruning_layer=2,
        fast_vision=False,
        attention_aggregation="mean",
        dpc_knn_k=3,
    )
    assert lm.pruner.attached and lm.pruner.pruning_layer == 2


@pytest.mark.parametrize(
    ("extra", "message"),
    [
        ("keep_ratio=2", "keep_ratio=2 is invalid"),
        ("pruning_layer=9", "pruning_layer=9 is outside the model"),
        ("preset=fastest", "unknown preset 'fastest'"),
        ("keep_ration=0.3", "unknown model_args keep_ration"),
    ],
)
def test_bad_model_args_name_the_cause(
    lmms_models: Any, tiny_checkpoint: Path, extra: str, message: str
) -> None:
    plugin = lmms_models.get_model(MODEL_ID)
    with pytest.raises(ValueError, match=message):
        plugin.create_from_arg_string(f"pretrained={tiny_checkpoint},{MODEL_ARGS},{extra}")


def test_bad_options_fail_before_the_model_loads(lmms_models: Any, tmp_path: Path) -> None:
    plugin = lmms_models.get_model(MODEL_ID)
    with pytest.raises(ValueError, match="tau='warm' is invalid"):
        plugin.create_from_arg_string(f"pretrained={tmp_path / 'missing'},{MODEL_ARGS},tau=warm")


# ---------------------------------------------------------------------------------- no lmms-eval needed


def test_every_config_field_is_read_from_its_string() -> None:
    paper = PruneVidConfig.preset("paper")
    for name in CONFIG_FIELDS:  # each field given as text, the way --model_args writes it
        value = getattr(paper, name)
        text = "none" if value is None else str(value).lower() if isinstance(value, bool) else str(value)
        assert config_from_model_args("paper", {name: text}) == paper, name


def test_fields_set_from_strings_change_the_preset() -> None:
    text = {
        "enable_stage1": "true",
        "enable_stage2": "True",
        "enable_cache_compression": "TRUE",
        "tau": "0.75",
        "temporal_segment_ratio": "0.5",
        "cluster_ratio": "0.4",
        "dpc_knn_k": "5",
        "min_tokens_to_cluster": "20",
        "keep_ratio": "0.3",
        "pruning_layer": "7",
        "attention_aggregation": "mean",
        "fast_vision": "false",
    }
    config = config_from_model_args("baseline", text)
    expected = PruneVidConfig.preset("baseline").replace(
        enable_stage1=True,
        enable_stage2=True,
        enable_cache_compression=True,
        tau=0.75,
        temporal_segment_ratio=0.5,
        cluster_ratio=0.4,
        dpc_knn_k=5,
        min_tokens_to_cluster=20,
        keep_ratio=0.3,
        pruning_layer=7,
        attention_aggregation="mean",
        fast_vision=False,
    )
    assert config == expected
    assert config_from_model_args("paper", {"pruning_layer": "none"}).pruning_layer is None
    # What lmms-eval's own parser hands over: bools and numbers already converted.
    assert config_from_model_args("paper", {"keep_ratio": 1, "fast_vision": False}) == dataclasses.replace(
        PruneVidConfig.preset("paper"), keep_ratio=1, fast_vision=False
    )


@pytest.mark.parametrize(
    ("options", "message"),
    [
        ({"enable_stage1": "yes"}, "enable_stage1='yes' is invalid"),
        ({"enable_stage1": 1}, "enable_stage1=1 is invalid"),
        ({"dpc_knn_k": "2.5"}, "dpc_knn_k='2.5' is invalid"),
        ({"enable_stage2": False}, "enable_cache_compression=True needs enable_stage2=True"),
        ({"keepratio": 0.3}, "unknown PruneVid option"),
    ],
)
def test_bad_options_are_refused_by_the_config(options: dict[str, Any], message: str) -> None:
    with pytest.raises(ValueError, match=message):
        config_from_model_args("paper", options)
