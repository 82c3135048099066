"""PruneVidConfig: presets equal the specification's table; invalid values are refused by name."""

from __future__ import annotations

import pytest

from prunevid.config import PRESETS, PruneVidConfig

# The table of prunevid-algorithm.md ("-" entries keep the defaults, which no disabled stage reads).
SPEC_TABLE = {
    #              stage1 stage2 cache  tau   gamma cluster keep fast_vision
    "baseline": (False, False, False, 0.8, 0.25, 0.5, 0.4, False),
    "fast": (False, False, False, 0.8, 0.25, 0.5, 0.4, True),
    "paper": (True, True, True, 0.8, 0.25, 0.5, 0.4, True),
    "stage1_only": (True, False, False, 0.8, 0.25, 0.5, 0.4, True),
    "stage2_only": (False, True, True, 0.8, 0.25, 0.5, 0.4, True),
    "conservative": (True, True, True, 0.85, 0.25, 0.6, 0.5, True),
    "aggressive": (True, True, True, 0.7, 0.25, 0.3, 0.3, True),
}


@pytest.mark.parametrize("name", sorted(SPEC_TABLE))
def test_presets_match_the_spec(name: str) -> None:
    config = PruneVidConfig.preset(name)
    fields = (
        config.enable_stage1,
        config.enable_stage2,
        config.enable_cache_compression,
        config.tau,
        config.temporal_segment_ratio,
        config.cluster_ratio,
        config.keep_ratio,
        config.fast_vision,
    )
    assert fields == SPEC_TABLE[name]
    assert config.dpc_knn_k == 7 and config.min_tokens_to_cluster == 14
    assert config.pruning_layer is None and config.attention_aggregation == "max"


# Presets beyond the specification (issue 18's opt-in improvements; tests/test_opt_in_improvements.py).
EXTENSIONS = {"coverage"}


def test_every_preset_is_in_the_table() -> None:
    assert set(PRESETS) == set(SPEC_TABLE) | EXTENSIONS
    assert not PruneVidConfig.preset("baseline").enabled
    # fast_vision never changes outputs, so it does not make a config "enabled" (pruning)
    assert not PruneVidConfig.preset("fast").enabled


def test_unknown_preset() -> None:
    with pytest.raises(ValueError, match="unknown preset 'fast2'.*paper"):
        PruneVidConfig.preset("fast2")


@pytest.mark.parametrize(
    ("field", "value", "allowed"),
    [
        ("tau", float("nan"), "finite"),
        ("tau", -1.5, ">= -1"),
        ("tau", "0.8", "finite"),
        ("temporal_segment_ratio", 0.0, r"\(0, 1\]"),
        ("cluster_ratio", 1.5, r"\(0, 1\]"),
        ("keep_ratio", -0.1, r"\(0, 1\]"),
        ("keep_ratio", True, r"\(0, 1\]"),
        ("dpc_knn_k", 0, ">= 1"),
        ("dpc_knn_k", 2.5, ">= 1"),
        ("min_tokens_to_cluster", -1, ">= 0"),
        ("pruning_layer", -1, "None or an integer >= 0"),
        ("attention_aggregation", "sum", "max"),
        ("enable_stage1", 1, "True or False"),
        ("fast_vision", "yes", "True or False"),
        ("fast_decode", 1, "True or False"),
    ],
)
def test_invalid_values_name_field_value_and_range(field: str, value: object, allowed: str) -> None:
    with pytest.raises(
        ValueError, match=rf"{field}={value!r}".replace("(", r"\(").replace(")", r"\)")
    ) as error:
        PruneVidConfig(**{field: value})
    assert pytest.importorskip("re").search(allowed, str(error.value))


def test_cache_compression_needs_stage2() -> None:
    with pytest.raises(ValueError, match="enable_cache_compression=True needs enable_stage2"):
        PruneVidConfig(enable_cache_compression=True)


def test_replace_validates() -> None:
    config = PruneVidConfig.preset("paper")
    assert config.replace(keep_ratio=0.2).keep_ratio == 0.2
    with pytest.raises(ValueError, match="keep_ratio"):
        config.replace(keep_ratio=2.0)


@pytest.mark.parametrize(("depth", "expected"), [(28, 10), (36, 13), (64, 23), (80, 29), (4, 1), (1, 0)])
def test_default_pruning_layer_keeps_the_depth_fraction(depth: int, expected: int) -> None:
    assert PruneVidConfig.preset("paper").resolve_pruning_layer(depth) == expected


def test_explicit_pruning_layer_outside_the_model() -> None:
    config = PruneVidConfig.preset("paper").replace(pruning_layer=4)
    assert config.resolve_pruning_layer(5) == 4
    with pytest.raises(ValueError, match=r"pruning_layer=4 is outside the model: allowed 0..3"):
        config.resolve_pruning_layer(4)


def test_fast_decode_needs_stage3_with_stage2() -> None:
    with pytest.raises(
        ValueError, match="fast_decode=True with enable_stage2=True needs enable_cache_compression"
    ):
        PruneVidConfig(enable_stage2=True, fast_decode=True)
    for name in PRESETS:  # every preset can turn it on; none does by default (it changes the decode kernels)
        config = PruneVidConfig.preset(name)
        assert not config.fast_decode and config.replace(fast_decode=True).fast_decode
