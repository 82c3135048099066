"""The accuracy study (benchmarks/accuracy_study.py) on CPU on a few questions, and its statistics."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "benchmarks"))

import accuracy_study  # noqa: E402
import report_accuracy  # noqa: E402


def test_mcnemar_counts_discordant_pairs() -> None:
    assert accuracy_study.mcnemar("1101", "1000") == {"only_first": 2, "only_second": 0, "z": 1.414}
    assert accuracy_study.mcnemar("0-1", "1-1") == {"only_first": 0, "only_second": 1, "z": -1.0}
    assert accuracy_study.mcnemar("11", "11")["z"] == 0.0
    with pytest.raises(ValueError, match="answered 2 and 3"):
        accuracy_study.mcnemar("11", "111")


def test_choice_rule_is_the_protocols() -> None:
    results = {
        "a": {"accuracy": 0.9, "retention": 0.2},  # too many tokens kept
        "b": {"accuracy": 0.8, "retention": 0.15},
        "c": {"accuracy": 0.8, "retention": 0.10},  # tie on accuracy: the lower retention wins
        "d": {"accuracy": 0.7, "retention": 0.05},
    }
    assert accuracy_study.choose(results) == "c"
    with pytest.raises(ValueError, match="no candidate keeps at most 15%"):
        accuracy_study.choose({"a": results["a"]})


def test_study_runs_on_cpu(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    # Fewer points than the real study, so that the smoke run takes seconds; the code path is the same.
    monkeypatch.setattr(accuracy_study, "STRENGTHS", (0.4,))
    monkeypatch.setattr(accuracy_study, "REFERENCE_GRID", (0.1,))
    base = accuracy_study.candidates
    monkeypatch.setattr(
        accuracy_study, "candidates", lambda preset, regime: dict(list(base(preset, regime).items())[:2])
    )
    out = tmp_path / "study.json"
    args = [
        "--seed",
        "5",
        "-n",
        "2",
        "--tune-seed",
        "6",
        "--tune-n",
        "2",
        "--out",
        str(tmp_path),
        "--json",
        str(out),
    ]
    assert accuracy_study.main(args) == 0
    result = json.loads(out.read_text())
    assert (result["regime"], result["seed"], result["n"]) == ("original", 5, 2)
    (study,) = result["models"]
    assert study["model"] == "synthetic-model" and study["tuning"]["questions"] == 2
    methods = study["methods"]
    preset, paper = study["preset_point"], study["paper_point"]
    assert {"baseline", preset, paper, f"random@{preset}", f"random@{paper}", "fastv@r0.1"} <= set(methods)
    for name, row in methods.items():
        assert len(row["correct"]) == 2 and set(row["correct"]) <= {"0", "1"}, name
        assert 0 < row["retention"] <= 1 and row["scored"] == 2
        assert sum(row["per_type"].values()) >= 0 and set(row["per_type"]) <= {"colour", "shape"}
    assert methods["baseline"]["retention"] == 1.0
    # Random runs at exactly the retention the PruneVid point measured (to the rounding of a token count).
    assert methods[f"random@{preset}"]["retention"] == pytest.approx(
        methods[preset]["retention"], abs=2 / 512
    )
    pairs = {(t["first"], t["second"]) for t in study["paired"]}
    assert {(preset, f"random@{preset}"), (paper, f"random@{paper}")} <= pairs
    # The report renders it (tables, targets) without a plot.
    text = "\n".join(report_accuracy.section_lines([result], {}))
    assert "### Original regime" in text and f"{preset} beats random at equal retention" in text
    # A study split over runs tunes once: a later run takes the settings the first one chose.
    again = tmp_path / "again.json"
    args_again = ["--seed", "5", "-n", "2", "--out", str(tmp_path), "--json", str(again)]
    assert accuracy_study.main([*args_again, "--tuning-from", str(out)]) == 0
    (later,) = json.loads(again.read_text())["models"]
    assert later["tuning"] == study["tuning"] and later["preset_settings"] == study["preset_settings"]
    untuned = tmp_path / "untuned.json"
    untuned.write_text(json.dumps({"regime": "original", "models": [{**study, "tuning": None}]}))
    with pytest.raises(ValueError, match="no tuning to take"):
        accuracy_study.main([*args_again, "--tuning-from", str(untuned)])
    # --tune-only stops after the choice (resumed here: every tuning answer is there), for --tuning-from.
    tuned = tmp_path / "tuned.json"
    assert accuracy_study.main([*args[:4], *args[4:-1], str(tuned), "--tune-only"]) == 0
    (record,) = json.loads(tuned.read_text())["models"]
    assert record == {"model": "synthetic-model", "tuning": study["tuning"]}
    assert accuracy_study.main([*args_again, "--tuning-from", str(tuned)]) == 0
    with pytest.raises(SystemExit):
        accuracy_study.main([*args_again, "--tune-only"])


def test_point_names_read_back_as_their_configs() -> None:
    """Every point and tuning candidate of a study is reproduced by ``prunevid eval --presets NAME``."""
    from prunevid.cli import preset_config
    from prunevid.config import PruneVidConfig

    coverage = PruneVidConfig.preset("coverage")
    tuned = coverage.replace(keep_ratio=0.2, cluster_ratio=1.0, static_time="ends")
    paper = PruneVidConfig.preset("paper")
    for family, base in [("paper", paper), ("coverage", coverage), ("coverage", tuned)]:
        for name, config in accuracy_study.pruning_points(family, base).items():
            assert preset_config(name) == config, name
    grid = accuracy_study.candidates(coverage, "realistic")
    assert len(grid) == 24 and sum(name.endswith("+ends") for name in grid) == 12
    assert len(accuracy_study.candidates(coverage, "original")) == 12
    for name, config in grid.items():
        assert preset_config(name) == config, name
    assert accuracy_study.point_name("coverage", tuned) == "coverage@k0.2c1+ends"
    assert accuracy_study.point_name("paper", PruneVidConfig.preset("paper")) == "paper@k0.4"


def test_main_pairs_runs_the_two_target_comparisons(tmp_path: Path) -> None:
    """``--main-pairs``: baseline, paper and the shipped new preset, random at each one's measured retention,
    and the report's table of them with its targets."""
    out = tmp_path / "pairs.json"
    args = ["--main-pairs", "--seed", "5", "-n", "2", "--out", str(tmp_path), "--json", str(out)]
    assert accuracy_study.main(args) == 0
    (study,) = json.loads(out.read_text())["models"]
    preset, paper = study["preset_point"], study["paper_point"]
    assert set(study["methods"]) == {"baseline", preset, paper, f"random@{preset}", f"random@{paper}"}
    for point in (preset, paper):
        assert study["methods"][f"random@{point}"]["retention"] == pytest.approx(
            study["methods"][point]["retention"], abs=2 / 512
        )
    assert {(t["first"], t["second"]) for t in study["paired"]} == {
        (preset, f"random@{preset}"),
        (paper, f"random@{paper}"),
    }
    text = "\n".join(report_accuracy.main_pairs_lines(json.loads(out.read_text())))
    assert "2 questions of final seed 5" in text and "beats random at equal retention" in text
    assert "`coverage` as shipped" in text
    # With --tuning-from: the setting an earlier tuning chose, its record kept and its candidates rendered.
    scores = {"accuracy": 1.0, "retention": 0.1, "per_type": {"colour": 1.0}}
    tuning = {
        "seed": 6,
        "questions": 2,
        "rule": "the protocol's",
        "chosen": "coverage@k0.2c1",
        "candidates": {"baseline": {**scores, "retention": 1.0}, "coverage@k0.2c1": scores},
    }
    (tmp_path / "tuned.json").write_text(json.dumps({"regime": "original", "models": [{"tuning": tuning}]}))
    assert accuracy_study.main([*args, "--tuning-from", str(tmp_path / "tuned.json")]) == 0
    (tuned,) = json.loads(out.read_text())["models"]
    assert tuned["preset_point"] == "coverage@k0.2c1" and tuned["tuning"] == tuning
    assert tuned["preset_settings"]["cluster_ratio"] == 1.0
    text = "\n".join(report_accuracy.main_pairs_lines(json.loads(out.read_text())))
    assert "chosen on tuning seed 6 (2 questions): `coverage@k0.2c1`" in text
    assert "| **coverage@k0.2c1** | 100.0% | 10.0% | 100% |" in text
    # A tuning made on another regime is refused.
    (tmp_path / "other.json").write_text(json.dumps({"regime": "realistic", "models": [{"tuning": tuning}]}))
    with pytest.raises(SystemExit, match="tuned on the realistic regime"):
        accuracy_study.main([*args, "--tuning-from", str(tmp_path / "other.json")])


def test_kept_token_evidence_follows_each_object(tmp_path: Path) -> None:
    """``--kept-tokens``: unpruned, every object is shown by unmerged tokens that all reach the LLM; under
    the tuned preset Stage 1 merges and Stage 2 drops, and the report renders the rows."""
    study = {"regime": "original", "models": [{"tuning": {"chosen": "coverage@k0.2c1"}}]}
    (tmp_path / "study.json").write_text(json.dumps(study))
    out = tmp_path / "kept.json"
    args = ["--kept-tokens", "0", "--seed", "5", "--out", str(tmp_path), "--json", str(out)]
    assert accuracy_study.main([*args, "--tuning-from", str(tmp_path / "study.json")]) == 0
    evidence = json.loads(out.read_text())
    assert (evidence["regime"], evidence["model"], evidence["seed"]) == ("original", "synthetic-model", 5)
    (question,) = evidence["questions"]
    configs = question["configs"]
    assert set(configs) == {"baseline", "paper", "coverage"}
    assert configs["baseline"]["stage1"] == configs["baseline"]["stage2"] == 512
    for tokens in configs["baseline"]["objects"]:
        assert tokens and all(t["sources"] == 1 and t["kept"] for t in tokens)
    assert configs["coverage"]["stage2"] < configs["coverage"]["stage1"] < 512
    text = "\n".join(report_accuracy.kept_token_lines(evidence))
    assert f"| {question['id']} |" in text and "original regime" in text
    assert evidence["preset_point"] == "coverage@k0.2c1" and "`coverage` is `coverage@k0.2c1`" in text


def test_ablation_runs_per_regime(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """``--ablation``: each configuration against random at the nearest retention; the realistic regime's
    set holds the strength its tuning chose (the same config as the study's point)."""
    from prunevid.config import PruneVidConfig

    realistic = accuracy_study.ablation_configs("realistic")
    tuned = accuracy_study.candidates(PruneVidConfig.preset("coverage"))["coverage@k0.2c1"]
    assert realistic["T_all4_k02c1"] == tuned
    assert {"p_consec", "p_middle", "p_kc05", "p_skc", "p_all4", "random"} <= set(realistic)
    few = {k: accuracy_study.ablation_configs("original")[k] for k in ("baseline", "p_all4", "random")}
    monkeypatch.setattr(accuracy_study, "ablation_configs", lambda regime: few)
    out = tmp_path / "ablation.json"
    args = ["--ablation", "--seed", "5", "-n", "2", "--out", str(tmp_path), "--json", str(out)]
    assert accuracy_study.main(args) == 0
    ablation = json.loads(out.read_text())
    assert (ablation["regime"], ablation["model"], ablation["n"]) == ("original", "synthetic-model", 2)
    assert set(ablation["z_vs_random"]) == {"p_all4"} and ablation["chosen"] == "p_all4"
    text = "\n".join(report_accuracy.ablation_lines(ablation))
    assert "original regime, 2 questions" in text and "| p_all4 |" in text
