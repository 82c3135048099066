"""Pruning methods compared on the synthetic benchmark: JSON record, markdown table and plot.

    prunevid eval synthetic --out prunevid-eval/synthetic --presets \\
        baseline,paper,conservative,aggressive,stage1_only,stage2_only,random,uniform_frames,evs,fastv
    python benchmarks/ablate_stage1.py --data prunevid-eval/synthetic-data --out prunevid-eval/stage1-ablation
    python benchmarks/kept_token_maps.py prunevid-eval/synthetic/predictions.jsonl \
        --data prunevid-eval/synthetic-data
    python benchmarks/report_synthetic.py prunevid-eval/synthetic/summary.json

Writes ``benchmarks/results/synthetic_eval.json`` (the summary with date, machine and versions),
``docs/synthetic.md`` (accuracy and retention per method and per question type, the issue's targets) and
``docs/synthetic_accuracy_vs_retention.png``. The reference methods run at the retention ``paper``
reached (``--retention auto``), so each comparison is at equal retention. The results of the two other
scripts (``benchmarks/results/synthetic_stage1_ablation.json``, ``synthetic_kept_tokens.json`` and
``docs/kept_token_maps.png``) go into the section "Where the answers are lost".
"""

from __future__ import annotations

import argparse
import datetime
import json
import math
import platform
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
PRUNEVID = ("paper", "conservative", "aggressive", "stage1_only", "stage2_only")
REFERENCES = ("random", "uniform_frames", "evs", "fastv")


def answers_by_preset(rows: list[dict[str, Any]]) -> dict[str, str]:
    """Each preset's chosen letters in sample order as one string (``-`` where no option was read):
    compact enough to commit, exact enough for a test to reproduce."""
    by_preset: dict[str, dict[int, str]] = {}
    for row in rows:
        index = int(str(row["id"]).rsplit("-", 1)[1])
        by_preset.setdefault(row["preset"], {})[index] = row["prediction"] or "-"
    return {p: "".join(letters[i] for i in sorted(letters)) for p, letters in by_preset.items()}


def record(summary: dict[str, Any], rows: list[dict[str, Any]], model_log: dict[str, Any]) -> dict[str, Any]:
    """The summary with what produced it (date, machine, library versions, the model's training run) and
    every preset's answers (:func:`answers_by_preset`)."""
    import numpy
    import torch
    import transformers

    from prunevid.synthetic_qa import EVAL_SEED

    return {
        "date": datetime.date.today().isoformat(),
        "machine": {"platform": platform.platform(), "processor": platform.processor() or "unknown"},
        "device": "cpu",
        "versions": {
            "python": platform.python_version(),
            "torch": torch.__version__,
            "transformers": transformers.__version__,
            "numpy": numpy.__version__,
        },
        "model_training": {
            "steps": model_log["steps"],
            "held_out_accuracy_at_training": model_log["held_out"]["accuracy"],
            "trained_on": model_log["versions"]["device"],
        },
        "eval_seed": EVAL_SEED,
        "summary": summary,
        "paired_with_paper": {
            name: paired(rows, "paper", name) for name in REFERENCES if name in summary["presets"]
        },
        "answers": answers_by_preset(rows),
    }


def paired(rows: list[dict[str, Any]], first: str, second: str) -> dict[str, float]:
    """McNemar's comparison of two presets on the same questions: how many only ``first`` answers right,
    how many only ``second``, and ``z = (a - b) / sqrt(a + b)`` (|z| > 1.96: a difference at the 5% level)."""
    right = {(r["id"], r["preset"]): bool(r["correct"]) for r in rows}
    ids = {r["id"] for r in rows if r["preset"] == first} & {r["id"] for r in rows if r["preset"] == second}
    only_first = sum(right[i, first] and not right[i, second] for i in ids)
    only_second = sum(right[i, second] and not right[i, first] for i in ids)
    z = (only_first - only_second) / math.sqrt(only_first + only_second) if only_first + only_second else 0.0
    return {"only_first": only_first, "only_second": only_second, "z": round(z, 2)}


# The training runs behind the shipped model, in order (each continued from the one before), and what
# changed in each. Run 1 (benchmarks/results/train_synthetic_h200_run1.json) had no token probe and stayed
# at chance; the shipped model starts from run 2.
LINEAGE = (
    ("train_synthetic_h200_run2.json", "from scratch; token probe; answers a bare letter"),
    ("train_synthetic_h200_run3.json", 'answers "red (B)"'),
    ("train_synthetic_h200_run4.json", 'answers "the cross is red (B)"; "Which option says" questions'),
    ("train_synthetic_cpu_run5.json", 'answers "the cross is red": the option named, no letter'),
    ("train_synthetic_cpu_run6.json", "more of the same (another training stream, lower learning rate)"),
    ("train_synthetic_h200_run7.json", "more of the same on the GPU (batch 64, learning rate 3e-4)"),
    (
        "train_synthetic_h200_run8.json",
        "`--token-dropout 0.5`: half the rows hide 0-95% of their video tokens",
    ),
)


def lineage_lines() -> list[str]:
    """A markdown table of the training runs in :data:`LINEAGE` that exist."""
    lines = [
        "| run | device | steps | training s | held-out accuracy at its end | what changed |",
        "|---|---|---|---|---|---|",
    ]
    for name, change in LINEAGE:
        path = ROOT / "benchmarks" / "results" / name
        if not path.is_file():
            continue
        log = json.loads(path.read_text(encoding="utf-8"))
        held = log["held_out"].get("accuracy", log["held_out"].get("generate", {}).get("accuracy"))
        lines.append(
            f"| `{name}` | {log['versions']['device']} | {log['steps']} | {log['timings_s']['train_s']:.0f} "
            f"| {held:.1%} | {change} |"
        )
    return lines


def standard_error(accuracy: float, count: int) -> float:
    """Binomial standard error of an accuracy measured on ``count`` questions."""
    return math.sqrt(max(accuracy * (1 - accuracy), 0.0) / max(count, 1))


def targets(
    summary: dict[str, Any], paired_with_paper: dict[str, dict[str, float]] | None = None
) -> list[tuple[str, bool, str]]:
    """The issue's targets: (name, met, evidence). With the paired counts (:func:`paired`), "beats" also
    needs the difference to be significant (McNemar z >= 1.96)."""
    presets = summary["presets"]
    base, paper = presets["baseline"], presets["paper"]
    kept, relative = paper["mean_retention"], paper["accuracy"] / max(base["accuracy"], 1e-9)
    rows = [
        (
            "paper keeps at most 25% of the video tokens",
            kept <= 0.25,
            f"{kept:.1%} kept",
        ),
        (
            "paper keeps at least 95% of the unpruned accuracy",
            relative >= 0.95,
            f"{paper['accuracy']:.1%} vs {base['accuracy']:.1%} ({relative:.0%})",
        ),
    ]
    for name in ("random", "uniform_frames"):
        if name in presets:
            other = presets[name]
            better = paper["accuracy"] > other["accuracy"]
            evidence = (
                f"{paper['accuracy']:.1%} vs {other['accuracy']:.1%} at {other['mean_retention']:.1%} kept"
            )
            test = (paired_with_paper or {}).get(name)
            if test is not None:
                better &= test["z"] >= 1.96
                evidence += (
                    f"; only paper right on {test['only_first']} questions, only {name} on "
                    f"{test['only_second']}: McNemar z = {test['z']:.2f}"
                )
            rows.append((f"paper beats {name} at equal retention", better, evidence))
    return rows


def markdown(result: dict[str, Any], png: Path | None) -> str:
    summary = result["summary"]
    presets = summary["presets"]
    names = [n for n in ("baseline", *PRUNEVID, *REFERENCES) if n in presets]
    count = presets["baseline"]["scored"]
    lines = [
        "# Synthetic video QA: pruning methods compared",
        "",
        f"`prunevid eval synthetic` on {count} held-out questions of the generator (seed "
        f"{result['eval_seed']}), with the small Qwen2.5-VL trained on it that ships in "
        "`prunevid/data/synthetic-model`. CPU, float32, greedy decoding; the answer is read by the "
        "harness's `extract_choice`. Reference methods run at the retention `paper` reached. "
        f"Generated by `benchmarks/report_synthetic.py` on {result['date']} "
        f"(torch {result['versions']['torch']}, transformers {result['versions']['transformers']}).",
        "",
        f"Chance is 25%. The standard error of each accuracy is about "
        f"{standard_error(presets['baseline']['accuracy'], count):.1%} (binomial, n={count}).",
        "",
        "| method | accuracy | ± s.e. | video tokens kept | tokens in -> stage 1 -> stage 2 |",
        "|---|---|---|---|---|",
    ]
    for name in names:
        row = presets[name]
        lines.append(
            f"| {name} | {row['accuracy']:.1%} | {standard_error(row['accuracy'], row['scored']):.1%} "
            f"| {row['mean_retention']:.1%} | {row['mean_tokens_in']:.0f} -> "
            f"{row['mean_tokens_after_stage1']:.0f} -> {row['mean_tokens_after_stage2']:.0f} |"
        )
    groups = sorted(presets["baseline"]["groups"])
    lines += ["", "Accuracy by question type:", "", "| type | " + " | ".join(names) + " |"]
    lines.append("|---" * (len(names) + 1) + "|")
    for group in groups:
        cells = [f"{presets[n]['groups'][group]['accuracy']:.0%}" for n in names]
        lines.append(f"| {group} | " + " | ".join(cells) + " |")
    lines += ["", "Targets:", ""]
    for name, met, evidence in targets(summary, result.get("paired_with_paper")):
        lines.append(f"- {'met' if met else 'NOT met'}: {name} ({evidence})")
    if png is not None:
        lines += ["", f"![accuracy vs retention]({png.name})"]
    lines += [
        "",
        "## The model",
        "",
        "`benchmarks/train_synthetic.py` trains the real `Qwen2_5_VLForConditionalGeneration` class from "
        "scratch (4 vision blocks, 6 LLM layers, 6.85M parameters, 224x224x16 clips: 512 video tokens). "
        "A linear probe on the video tokens, trained to name the colour, shape and motion of the object "
        "under each token, is what made the vision tower learn at all (without it the first run stayed at "
        "chance). The model names the option it picks; the harness maps the option's text to its letter. "
        "The last run hid random video tokens from attention in half of its training rows "
        "(`--token-dropout`), so that, like large pretrained video LLMs, the model does not need every "
        "token to answer; nothing in training is specific to PruneVid (it helps random dropping most). "
        "Runs, each continued from the one before:",
        "",
        *lineage_lines(),
        *loss_analysis(),
    ]
    return "\n".join(lines) + "\n"


ABLATION = ROOT / "benchmarks" / "results" / "synthetic_stage1_ablation.json"
KEPT_TOKENS = ROOT / "benchmarks" / "results" / "synthetic_kept_tokens.json"
ABLATION_MEANING = {
    "stage1_temporal": "Stage 1 without its spatial merge: segments and static collapse only",
    "stage1_spatial": "Stage 1 without the static collapse: spatial DPC-KNN on every frame",
    "paper_no_spatial": "paper without Stage 1's spatial merge",
}


def loss_analysis() -> list[str]:
    """Markdown for the Stage-1 ablation (``benchmarks/ablate_stage1.py``) and the object survival counts
    and kept-token maps (``benchmarks/kept_token_maps.py``), where their results exist."""
    lines: list[str] = []
    if ABLATION.is_file() or KEPT_TOKENS.is_file():
        lines += ["", "## Where the answers are lost", ""]
    if ABLATION.is_file():
        ablation = json.loads(ABLATION.read_text(encoding="utf-8"))
        lines += [
            f"Stage 1's steps switched off one at a time (`benchmarks/ablate_stage1.py`, "
            f"{ablation['summary']['samples']} questions, {ablation['date']}):",
            "",
            "| configuration | what runs | accuracy | video tokens kept | "
            + " | ".join(sorted(next(iter(ablation["summary"]["presets"].values()))["groups"]))
            + " |",
            "|---|---|---|---|" + "---|" * len(next(iter(ablation["summary"]["presets"].values()))["groups"]),
        ]
        for name, row in ablation["summary"]["presets"].items():
            groups = " | ".join(f"{row['groups'][g]['accuracy']:.0%}" for g in sorted(row["groups"]))
            lines.append(
                f"| {name} | {ABLATION_MEANING.get(name, '')} | {row['accuracy']:.1%} "
                f"| {row['mean_retention']:.1%} | {groups} |"
            )
    if KEPT_TOKENS.is_file():
        kept = json.loads(KEPT_TOKENS.read_text(encoding="utf-8"))

        def share(key: str) -> str:
            value = kept.get(key)
            return "-" if value is None else f"{value:.0%}"

        lines += [
            "",
            "Object appearances (an object in a frame pair) that the LLM still sees under "
            f"`{kept['preset']}` (`benchmarks/kept_token_maps.py`, first {kept['questions']} questions): "
            "a token it reads must show at least half as much of the object as the unmerged token "
            "showing most of it. An object survives if one of its appearances does.",
            "",
            "| questions | count | appearances after Stage 1 | after Stage 2 | objects after Stage 1 "
            "| after Stage 2 |",
            "|---|---|---|---|---|---|",
        ]
        for group, label in (("lost", "answer lost by pruning"), ("kept", "answer kept"), ("all", "all")):
            cells = " | ".join(
                share(f"{group}_{stage}_survival")
                for stage in ("stage1", "stage2", "stage1_objects", "stage2_objects")
            )
            lines.append(f"| {label} | {kept[f'{group}_questions']} | {cells} |")
        lost, right = kept.get("lost_stage1_objects_survival"), kept.get("kept_stage1_objects_survival")
        if lost is not None and right is not None and abs(lost - right) < 0.05:
            lines += [
                "",
                "Objects survive about as often in the questions `paper` gets wrong as in those it gets "
                "right: diluted objects alone do not explain the lost answers (the ablation above points "
                "at the static collapse).",
            ]

        if kept.get("figure"):
            lines += [
                "",
                f"Kept-token maps of questions the unpruned model answers right and `{kept['preset']}` gets "
                "wrong: per frame pair, the frames, each token painted with the mean colour of the pixels "
                "merged into it after Stage 1, and what reached the last layer after Stage 2 (black: "
                "dropped).",
                "",
                f"![kept-token maps]({kept['figure']})",
            ]
    return lines


def plot(summary: dict[str, Any], path: Path) -> bool:
    """Accuracy against video-token retention, one point per method; False without matplotlib."""
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        return False
    presets = summary["presets"]
    fig, ax = plt.subplots(figsize=(6.4, 4.2))
    for name, row in presets.items():
        marker = "*" if name in ("baseline", *PRUNEVID) else "o"
        ax.errorbar(
            100 * row["mean_retention"],
            100 * row["accuracy"],
            yerr=100 * standard_error(row["accuracy"], row["scored"]),
            fmt=marker,
            markersize=10 if marker == "*" else 6,
            capsize=3,
            label=name,
        )
    ax.axhline(25, color="grey", linestyle=":", linewidth=1, label="chance")
    ax.set_xscale("log")
    ax.set_xlabel("video tokens kept (%, log scale)")
    ax.set_ylabel("accuracy (%)")
    ax.set_title("Synthetic video QA: accuracy vs retention")
    ax.legend(fontsize=8, ncol=2)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)
    return True


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("summary", type=Path, help="summary.json of prunevid eval synthetic")
    parser.add_argument("--json", type=Path, default=ROOT / "benchmarks" / "results" / "synthetic_eval.json")
    parser.add_argument("--md", type=Path, default=ROOT / "docs" / "synthetic.md")
    parser.add_argument("--png", type=Path, default=ROOT / "docs" / "synthetic_accuracy_vs_retention.png")
    args = parser.parse_args(argv)
    sys.path.insert(0, str(ROOT))
    from prunevid.synthetic_qa import MODEL_DIR

    summary = json.loads(args.summary.read_text(encoding="utf-8"))
    if summary.get("benchmark") != "synthetic" or "baseline" not in summary.get("presets", {}):
        raise SystemExit(f"{args.summary}: not a synthetic summary with a baseline row")
    model_log = json.loads((MODEL_DIR / "training_log.json").read_text(encoding="utf-8"))
    predictions = args.summary.parent / "predictions.jsonl"
    rows = [json.loads(line) for line in predictions.read_text(encoding="utf-8").splitlines() if line]
    result = record(summary, rows, model_log)
    args.json.write_text(json.dumps(result, indent=1) + "\n", encoding="utf-8")
    png = args.png if plot(summary, args.png) else None
    args.md.write_text(markdown(result, png), encoding="utf-8")
    print(markdown(result, png))
    print(f"wrote {args.json}, {args.md}" + (f", {png}" if png else ""))
    return 0


if __name__ == "__main__":
    sys.exit(main())
