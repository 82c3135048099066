"""Accuracy at equal retention (issue 18): tables, curves and targets from ``benchmarks/accuracy_study.py``.

    python benchmarks/report_accuracy.py benchmarks/results/accuracy_original.json \\
        benchmarks/results/accuracy_realistic.json

Writes one accuracy-vs-retention PNG per regime (``docs/accuracy_<regime>.png``, one panel per model) and
the section "Accuracy at equal retention (issue 18)" of ``docs/synthetic.md`` (replaced in place, or
appended; the rest of the file is left as it is: run this after ``benchmarks/report_synthetic.py``, which
rewrites the whole file). The tuning-seed ablations (``benchmarks/results/accuracy_tuning_<regime>.json``,
``benchmarks/accuracy_study.py --ablation``) come first, the kept-token evidence
(``accuracy_kept_tokens_<regime>.json``, ``--kept-tokens``) last.
"""

from __future__ import annotations

import argparse
import json
import math
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
HEADING = "## Accuracy at equal retention (issue 18)"
RESULTS = ROOT / "benchmarks" / "results"
STUDIES = ("accuracy_original.json", "accuracy_realistic.json")
ABLATIONS = [RESULTS / f"accuracy_tuning_{regime}.json" for regime in ("original", "realistic")]
# accuracy_study.py --main-pairs: the original regime's shipped preset on all 400 final questions; the
# realistic regime's amendment-2 choice (static_time="ends") on its own final seed.
MAIN_PAIRS = {
    "original": RESULTS / "accuracy_original_main_pairs_cpu.json",
    "realistic": RESULTS / "accuracy_realistic_ends_main_pairs_cpu.json",
}
KEPT_TOKENS = [
    RESULTS / f"accuracy_kept_tokens_{name}.json" for name in ("original", "realistic", "realistic_ends")
]
REFERENCES = ("random", "uniform_frames", "evs", "fastv")
FAMILY_STYLE = {
    "paper": ("tab:blue", "s-"),
    "coverage": ("tab:red", "*-"),
    "random": ("black", "o--"),
    "uniform_frames": ("tab:green", "^:"),
    "evs": ("tab:purple", "v:"),
    "fastv": ("tab:orange", "d:"),
}
MEANING = {
    "static_test": "static only if every consecutive frame pair is similar",
    "static_time": "static token at its span's middle frame (`ends`: its two halves at the first and last)",
    "spatial_merge": "spatial merge by greedy k-centre instead of DPC-KNN",
    "stage2_coverage": "Stage 2 covers distinct tokens first",
}


def family(name: str) -> str:
    """The method family of a point name (``paper@k0.4`` -> ``paper``, ``random@r0.05`` -> ``random``)."""
    return name.split("@", 1)[0]


def standard_error(accuracy: float, count: int) -> float:
    """Binomial standard error of an accuracy over ``count`` questions."""
    return math.sqrt(max(accuracy * (1 - accuracy), 0.0) / max(count, 1))


def _pct(value: float | None, digits: int = 1) -> str:
    return "-" if value is None else f"{100 * value:.{digits}f}%"


def targets(regime: str, study: dict[str, Any]) -> list[tuple[str, bool, str]]:
    """The issue's targets for one model's table: ``(target, met, evidence)``."""
    methods, preset, paper = study["methods"], study["preset_point"], study["paper_point"]
    base = methods["baseline"]["accuracy"]
    mine = methods[preset]
    tests = {(t["first"], t["second"]): t for t in study["paired"]}
    random_test = tests.get((preset, f"random@{preset}"))
    paper_test = tests.get((paper, f"random@{paper}"))
    rows = []
    if regime == "realistic":
        kept = mine["accuracy"] / max(base, 1e-9)
        rows.append(
            (
                f"{preset} keeps >= 95% of the unpruned accuracy at <= 15% retention",
                kept >= 0.95 and mine["retention"] <= 0.15,
                f"{_pct(mine['accuracy'])} vs {_pct(base)} ({kept:.1%}) at {_pct(mine['retention'])} kept",
            )
        )
        # The preset's other strength points, reported: how close a point that keeps more gets.
        within = [
            (m["accuracy"], name)
            for name, m in methods.items()
            if family(name) == family(preset) and name != preset and m["retention"] <= 0.15
        ]
        if within:
            accuracy, name = max(within)
            share = accuracy / max(base, 1e-9)
            rows.append(
                (
                    f"(reported) {name}, the preset's best other strength at <= 15% retention, keeps >= 95%",
                    share >= 0.95,
                    f"{_pct(accuracy)} vs {_pct(base)} ({share:.1%}) at "
                    f"{_pct(methods[name]['retention'])} kept",
                )
            )
    if random_test is not None:
        rows.append(
            (
                f"{preset} beats random at equal retention (McNemar z >= 1.96)",
                random_test["z"] >= 1.96,
                f"{_pct(random_test['accuracy_first'])} vs {_pct(random_test['accuracy_second'])} at "
                f"{_pct(random_test['retention_first'])}; only {preset} right on "
                f"{random_test['only_first']}, "
                f"only random on {random_test['only_second']}: z = {random_test['z']:.2f}",
            )
        )
    if paper_test is not None:
        rows.append(
            (
                "(reported) paper against random at equal retention",
                paper_test["z"] >= 1.96,
                f"{_pct(paper_test['accuracy_first'])} vs {_pct(paper_test['accuracy_second'])} at "
                f"{_pct(paper_test['retention_first'])}: z = {paper_test['z']:.2f}",
            )
        )
    return rows


def model_lines(regime: str, study: dict[str, Any], n: int) -> list[str]:
    """Markdown for one model's table: methods by family and retention, per-type accuracy, paired tests."""
    methods = study["methods"]
    types = sorted(methods["baseline"]["per_type"])
    order = sorted(
        methods,
        key=lambda m: (
            ["baseline", "paper", "coverage", *REFERENCES].index(family(m))
            if family(m) in ["baseline", "paper", "coverage", *REFERENCES]
            else 99,
            methods[m]["retention"] or 0.0,
        ),
    )
    lines = [
        f"#### {study['model']}",
        "",
        f"{n} questions; `{study['preset_point']}` is the new preset's setting "
        f"({', '.join(f'{k}={v!r}' for k, v in study['preset_settings'].items())}), "
        f"`{study['paper_point']}` is `paper`.",
        "",
        "| method | accuracy | ± s.e. | kept | tokens in -> stage 1 -> stage 2 | " + " | ".join(types) + " |",
        "|---|---|---|---|---|" + "---|" * len(types),
    ]
    for name in order:
        row = methods[name]
        tokens = " -> ".join("-" if t is None else f"{t:.0f}" for t in row["tokens"])
        bold = "**" if name in (study["preset_point"], study["paper_point"]) else ""
        lines.append(
            f"| {bold}{name}{bold} | {_pct(row['accuracy'])} "
            f"| {_pct(standard_error(row['accuracy'], row['scored']))} "
            f"| {_pct(row['retention'])} | {tokens} | "
            + " | ".join(_pct(row["per_type"].get(t), 0) for t in types)
            + " |"
        )
    lines += [
        "",
        "Paired at equal retention (McNemar; z >= 1.96: the first is better at the 5% level):",
        "",
        "| PruneVid point | reference at its retention | kept | accuracy | only first right "
        "| only second right "
        "| z |",
        "|---|---|---|---|---|---|---|",
    ]
    for test in study["paired"]:
        if test["second"].startswith("random@") or test["first"] in (
            study["preset_point"],
            study["paper_point"],
        ):
            lines.append(
                f"| {test['first']} | {test['second']} | {_pct(test['retention_first'])} / "
                f"{_pct(test['retention_second'])} | {_pct(test['accuracy_first'])} / "
                f"{_pct(test['accuracy_second'])} | {test['only_first']} | {test['only_second']} "
                f"| {test['z']:.2f} |"
            )
    lines += ["", "Targets:", ""]
    for name, met, evidence in targets(regime, study):
        lines.append(f"- {'met' if met else 'NOT met'}: {name} ({evidence})")
    return lines


def ablation_lines(ablation: dict[str, Any]) -> list[str]:
    """Markdown for the tuning-seed ablation: each improvement alone, all together, random alongside."""
    methods = ablation["methods"]
    types = sorted(methods["baseline"]["per_type"])
    lines = [
        f"Tuning seed {ablation['seed']} ({ablation['regime']} regime, {ablation['n']} questions, "
        f"{ablation['model']}, {ablation['device']}): each improvement alone on `paper`, then together; "
        "`random` at comparable retentions. " + "; ".join(f"`{k}`: {v}" for k, v in MEANING.items()) + ".",
        "",
        "| configuration | changes from paper | accuracy | kept | "
        + " | ".join(types)
        + " | z vs random at equal kept |",
        "|---|---|---|---|" + "---|" * len(types) + "---|",
    ]
    for name, row in methods.items():
        settings = ablation["settings"].get(name, {})
        if name == "baseline":
            changes = "nothing pruned"
        elif "method" in settings:
            changes = f"{settings['method']} at {settings['retention']:.1%} retention"
        else:
            changes = ", ".join(f"{k}={v!r}" for k, v in settings.items()) or "-"
        z = ablation.get("z_vs_random", {}).get(name)
        lines.append(
            f"| {name} | {changes} | {_pct(row['accuracy'])} | {_pct(row['retention'])} | "
            + " | ".join(_pct(row["per_type"].get(t), 0) for t in types)
            + f" | {'-' if z is None else f'{z:.2f}'} |"
        )
    if ablation.get("chosen"):
        lines += [
            "",
            "Chosen by the protocol's rule (the highest tuning accuracy at <= 15% retention, ties to the "
            "lower "
            f"retention): `{ablation['chosen']}`, shipped as the `coverage` preset.",
        ]
    return lines


def kept_token_lines(evidence: dict[str, Any]) -> list[str]:
    """Markdown for ``accuracy_study.py --kept-tokens``: per question and configuration, the answer, the
    tokens after each stage, and per object the merged tokens that show it (frame pairs, source tokens,
    the object's best pixel share)."""
    lines = [
        f"Where the objects of some tuning-seed questions go ({evidence.get('regime', 'original')} regime, "
        f"{evidence['model']}, seed {evidence['seed']}, `accuracy_study.py --kept-tokens`): per object, "
        "the merged tokens holding at least 30% of it in one source token: how many, in which frame "
        "pairs, from how many source tokens each, and the object's best share of a token's pixels "
        "(unpruned: 1 source each, every frame pair)"
        + (f"; `coverage` is `{evidence['preset_point']}`." if "preset_point" in evidence else "."),
        "",
        "| question | objects (right answer) | configuration | answer | tokens after stage 1 / 2 "
        "| per object: tokens, frame pairs, sources each, best share |",
        "|---|---|---|---|---|---|",
    ]
    for q in evidence["questions"]:
        for name, c in q["configs"].items():
            per_object = []
            for tokens in c["objects"]:
                if not tokens:
                    per_object.append("none")
                    continue
                pairs = sorted({t["pair"] for t in tokens})
                sources = sorted({t["sources"] for t in tokens})
                best = max(t["share"] for t in tokens)
                kept = sum(t["kept"] for t in tokens)
                per_object.append(
                    f"{len(tokens)} ({kept} kept), pairs {','.join(map(str, pairs))}, "
                    f"{'/'.join(map(str, sources))} src, {best:.0%}"
                )
            lines.append(
                f"| {q['id']} | {', '.join(q['objects'])} ({q['answer']}) | {name} | {c['answer']} "
                f"| {c['stage1']} / {c['stage2']} | {'; '.join(per_object)} |"
            )
    return lines


def plot(result: dict[str, Any], path: Path) -> bool:
    """Accuracy against retention per method family, one panel per model; False without matplotlib."""
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
        from matplotlib.ticker import FuncFormatter
    except ImportError:
        return False
    studies = result["models"]
    fig, axes = plt.subplots(1, len(studies), figsize=(6.4 * len(studies), 4.4), squeeze=False)
    for ax, study in zip(axes[0], studies, strict=True):
        methods = study["methods"]
        for name, (colour, style) in FAMILY_STYLE.items():
            points = sorted(
                (m["retention"], m["accuracy"])
                for k, m in methods.items()
                if family(k) == name and m["retention"]
            )
            if points:
                xs, ys = zip(*points, strict=True)
                ax.plot([100 * x for x in xs], [100 * y for y in ys], style, color=colour, label=name)
        ax.axhline(100 * methods["baseline"]["accuracy"], color="grey", linewidth=1, label="unpruned")
        ax.axhline(25, color="grey", linestyle=":", linewidth=1, label="chance")
        ax.axvline(15, color="grey", linestyle="--", linewidth=0.8)
        ax.set_xscale("log")
        ax.xaxis.set_major_formatter(FuncFormatter(lambda value, _: f"{value:g}"))  # 2, 10, not 2x10^0
        ax.xaxis.set_minor_formatter(FuncFormatter(lambda value, _: f"{value:g}"))
        ax.set_xlabel("video tokens kept (%, log scale)")
        ax.set_ylabel("accuracy (%)")
        ax.set_title(
            f"{result['regime']} regime, {study['model']} (seed {result['seed']}, "
            f"n={study.get('n', result['n'])})",
            fontsize=9,
        )
        ax.legend(fontsize=7)
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return True


def tuning_lines(tuning: dict[str, Any]) -> list[str]:
    """Every tuning candidate of a study's ``tuning`` record, by retention, the rule's choice in bold."""
    types = sorted(tuning["candidates"]["baseline"]["per_type"])
    lines = [
        f"Tuning seed {tuning['seed']}, {tuning['questions']} questions, rule: {tuning['rule']}.",
        "",
        "| candidate | accuracy | kept | " + " | ".join(types) + " |",
        "|---|---|---|" + "---|" * len(types),
    ]
    by_retention = sorted(tuning["candidates"].items(), key=lambda item: (item[1]["retention"], item[0]))
    for name, m in by_retention:
        label = f"**{name}**" if name == tuning["chosen"] else name
        per_type = " | ".join(_pct(m["per_type"].get(t), 0) for t in types)
        lines.append(f"| {label} | {_pct(m['accuracy'])} | {_pct(m['retention'])} | {per_type} |")
    return lines


def main_pairs_lines(record: dict[str, Any]) -> list[str]:
    """The target comparisons on every question of the protocol (``accuracy_study.py --main-pairs``)."""
    first = record["models"][0]
    tuning = first.get("tuning")
    which = (
        f"`coverage` at the setting chosen on tuning seed {tuning['seed']} ({tuning['questions']} "
        f"questions): `{tuning['chosen']}`"
        if tuning
        else "`coverage` as shipped"
    )
    lines = [
        f"#### {record['n']} questions of final seed {record['seed']}: the target comparisons "
        f"({first['device']}, {first['dtype']})",
        "",
        f"{record['date']}, torch {record['versions']['torch']}, transformers "
        f"{record['versions']['transformers']}: `paper` and {which}, each against `random` at the retention "
        "it measured (`benchmarks/accuracy_study.py --main-pairs`).",
        "",
        *([*tuning_lines(tuning), ""] if tuning else []),
    ]
    for study in record["models"]:
        methods = study["methods"]
        types = sorted(methods["baseline"]["per_type"])
        lines += [
            f"{study['model']}:",
            "",
            "| method | accuracy | ± s.e. | kept | " + " | ".join(types) + " |",
            "|---|---|---|---|" + "---|" * len(types),
        ]
        for name, m in methods.items():
            per_type = " | ".join(_pct(m["per_type"].get(t), 0) for t in types)
            se = standard_error(m["accuracy"], study["n"])
            lines.append(
                f"| {name} | {_pct(m['accuracy'])} | {_pct(se)} | {_pct(m['retention'])} | {per_type} |"
            )
        lines += ["", "Targets on these questions:", ""]
        lines += [
            f"- {'met' if met else 'NOT met'}: {name} ({evidence})"
            for name, met, evidence in targets(record["regime"], study)
        ]
    return lines


def section_lines(
    results: Sequence[dict[str, Any]] | None = None, pngs: dict[str, str] | None = None
) -> list[str]:
    """The whole section (empty when no study result exists)."""
    if results is None:
        results = [
            json.loads((RESULTS / n).read_text(encoding="utf-8")) for n in STUDIES if (RESULTS / n).is_file()
        ]
    if pngs is None:
        pngs = {
            r["regime"]: f"accuracy_{r['regime']}.png"
            for r in results
            if (ROOT / "docs" / f"accuracy_{r['regime']}.png").is_file()
        }
    ablations = [json.loads(p.read_text(encoding="utf-8")) for p in ABLATIONS if p.is_file()]
    if not results and not ablations:
        return []
    lines = [
        HEADING,
        "",
        "`benchmarks/accuracy_study.py` under the accuracy protocol (`docs/accuracy-protocol.md`, fixed "
        "before tuning): the improvements and the new preset's settings were chosen on tuning seeds only, "
        "the tables below are on seed 20261130, used for nothing else (the realistic regime's amendment-2 "
        "comparisons on seed 20261201, likewise). Every PruneVid point is paired with "
        "`random` at its own measured retention, and the presets' points with every reference method. The "
        "new preset `coverage` is `paper` with the opt-in improvements of `PruneVidConfig` (each grounded "
        "in a measured failure below); `paper` is unchanged.",
        "",
    ]
    if ablations:
        lines += ["### Tuning: each improvement alone and together", ""]
        for ablation in ablations:
            lines += [*ablation_lines(ablation), ""]
    for result in results:
        lines += [
            f"### {result['regime'].capitalize()} regime",
            "",
            f"{result['date']}, {result['models'][0]['device']}, torch {result['versions']['torch']}, "
            f"transformers {result['versions']['transformers']}, batch {result['batch_size']}. A row "
            f"reproduces with `prunevid eval synthetic --regime {result['regime']} --seed {result['seed']} "
            f"--limit N --batch-size {result['batch_size']} --model prunevid/data/MODEL --presets ROW` (N "
            "the table's questions), a reference row `METHOD@POINT` with `--presets METHOD --retention R`, "
            "R the retention POINT measured (in the study's JSON).",
            "",
        ]
        tuning = result["models"][0].get("tuning")
        if tuning:
            lines += [
                f"The new preset's settings for this regime were chosen on tuning seed {tuning['seed']} "
                f"({tuning['questions']} questions, {result['models'][0]['model']}) by the rule "
                f"({tuning['rule']}): `{tuning['chosen']}`.",
                "",
            ]
        for study in result["models"]:
            lines += [*model_lines(result["regime"], study, study.get("n", result["n"])), ""]
        if result["regime"] in pngs:
            lines += [f"![accuracy vs retention, {result['regime']} regime]({pngs[result['regime']]})", ""]
        pairs = MAIN_PAIRS[result["regime"]]
        if pairs.is_file():
            lines += [*main_pairs_lines(json.loads(pairs.read_text(encoding="utf-8"))), ""]
    lines += WHY
    for path in KEPT_TOKENS:
        if path.is_file():
            lines += ["", *kept_token_lines(json.loads(path.read_text(encoding="utf-8"))), ""]
    return lines


# What the tables and the kept-token evidence say about the targets (read from the committed results of
# 2026-11-30; the numbers are in the tables above and below).
WHY = [
    "### What the improvements do, and why targets are missed",
    "",
    "- Each improvement answers a measured failure of `paper` on the tuning seed. Static objects: in a "
    "clip with no change, Stage 1 makes one segment and collapses every position, and DPC-KNN merges a "
    "small static object into a cluster of background cells (56-88 source tokens, 20-43% of them the "
    "object, below); `paper` then over-counts (13 of its 16 lost count answers in the first 300 tuning "
    "questions said one more than the truth). The k-centre spatial merge keeps such an object's cells "
    "pure; the middle time puts a collapsed token in the middle of its span (colour and end answers rose "
    "most); the consecutive static test keeps a position dynamic when one frame pair differs; Stage-2 "
    "coverage keeps a token of every distinct thing of a frame before spending the rest by attention.",
    "- Alone, each moves accuracy by -2.5 to +4 points at paper's retention (the tuning table); together, "
    "with the Stage-2 budget the rule chose, `coverage` is above `paper` at each strength (the weakest on "
    "the dropout-trained model excepted, where it also keeps half as many tokens), and it wins most where "
    "tokens must be placed in time (end, order: merged tokens keep every frame pair represented, random "
    "drops whole events).",
    "- Realistic regime, tuning ablation (seed 7002, 96 questions, CPU): alone, only the k-centre spatial "
    "merge moves accuracy (`paper` 79.2% -> 84.4% at the same 4.3% kept: objects keep their own cells, "
    "count rises from 81% to 100%); the consecutive static test, the middle time and Stage-2 coverage each "
    "leave it at 79.2% (coverage changes 1 answer of 96). All four together: 86.5% (z = 2.52 against "
    "random's 75.0% at 4.3%); the strength the study's tuning chose, 85.4% (z = 2.24).",
    "- Original regime, target missed. On all 400 questions of the final seed (CPU, float32; the last "
    "table of the original regime) `coverage` answers 80.8% against random's 81.2% at 14.8% kept (z = "
    "-0.22) and `paper` 73.0% against 70.8% at 6.7% (z = 0.95); the H200 runs on the first 120 and 192 "
    "questions had shown `paper` ahead (z = 2.21 at 192), a small-sample swing. By type, `coverage` wins "
    "order (62% vs 42%) and loses end (56% vs 71%) and count: at 15% retention random keeps 77 real "
    "tokens spread over all 8 frame pairs, enough for this 512-token clip, while `coverage` still "
    "collapses static content into one frame pair, which the model never saw in training, and loses count "
    "answers to it (kept-token rows below: the object is intact under `paper+kcentre` and `coverage`, yet "
    "a one-object clip is answered 'two' or 'three').",
    "- Realistic regime, beat-random met on both models: at the strength the rule chose on 240 tuning "
    "questions (`coverage@k0.2c1`: keep_ratio 0.2, cluster_ratio 1.0) `coverage` keeps 4.4% and answers "
    "83.0% against random's 70.8% (z = 5.0; dropout-trained model 83.8% vs 73.5%, z = 4.4). The gain is "
    "where random's 179 scattered tokens miss whole objects or events: count (94% vs 61%), order (56% vs "
    "38%), end (70% vs 58%). `paper` is ahead of random too but not significantly (73.8% vs 70.5%, z = 1.5; "
    "74.8% vs 73.5%, z = 0.5).",
    "- Realistic regime, 95% target missed: 83.0% is 91% of the unpruned 91.0% (94% on the dropout-trained "
    "model), and no point of the preset at <= 15% reaches 95% on the model the rule tuned with (its best, "
    "`coverage@k0.4c1`, 84.8% at 8.9%: 93%; on the dropout-trained model `coverage@k0.4c1` keeps 95.9%, "
    "85.5% at 8.8%, a point the rule did not choose). The curve is flat: from 8.9% to 17.9% kept, "
    "`coverage` stays at 84-85% while Stage 2 keeps twice the tokens, because Stage 1 (about 920 of 4096 "
    "tokens left) sets "
    "the ceiling; random rises past it (85.0% vs 84.3% at 13.4%, z = -0.4; 88.0% vs 83.8% at 17.9%, z = "
    "-2.3). What Stage 1 costs is timing: end (70-74% vs 89% unpruned) and order (56-62% vs 74%) lose "
    "most, colour, count, direction and shape little. A static run of an object becomes tokens at one time "
    "position, so the model sees the object at the middle of its span and not until its end: in the "
    "tuning-seed rows below, the purple diamond of 7002-16, on screen in frame pairs 0-12, is seen only "
    "at pair 6 and the order question is lost; the yellow square of 7002-65 (pairs 3-15) only at pairs "
    "3, 4 and 10. Keeping a static run's two ends rather than one middle token was tried next (below), "
    "judged on a new final seed, since this one had been looked at.",
    '- Realistic regime, amendment 2 (`static_time="ends"`: each half of a static run merged into a token '
    "at the run's first or last frame, so the model sees when an object arrives and when it leaves; tuned "
    "and judged on the CPU, float32, for want of GPU time): on the 96 tuning questions every `+ends` "
    "candidate is at or above the `middle` candidates of about the same retention, by end answers above "
    "all (88-100% against 69-88%), and the rule chose `coverage@k0.8c0.25+ends` (90.6% at 7.8%, as the "
    "unpruned model). On 400 questions of the new final seed 20261201 it keeps 7.9% and answers 88.8%, "
    "95.7% of the unpruned 92.8%, against random's 82.8% at the same retention (z = 3.21): both realistic "
    "targets met on the model the rule tuned with. On the dropout-trained model it answers 88.8% too, "
    "94.9% of its unpruned 93.5% (the 95% target missed by 0.1 point: 355 right of 400, 356 would meet "
    "it), against random's "
    "84.8% (z = 2.18, met). The gain over random is where whole objects and events must survive: count "
    "(97% vs 82%), end (83% vs 73%), order (77% vs 62%) on the first model. `paper` again is not "
    "significantly ahead (73.2% vs 72.0%, z = 0.55; 77.5% vs 76.8%, z = 0.31). In the kept-token rows "
    "below, the yellow square of "
    "7002-65 is now seen up to pair 15 and its question is answered; the purple diamond of 7002-16 is seen "
    "at pairs 0 and 12 and its order question is still lost.",
]


def splice(markdown: str, section: list[str]) -> str:
    """``markdown`` with its issue-18 section replaced by ``section`` (appended when absent)."""
    body = "\n".join(section).rstrip() + "\n"
    start = markdown.find(HEADING)
    if start < 0:
        return markdown.rstrip() + "\n\n" + body
    end = markdown.find("\n## ", start + len(HEADING))
    rest = "" if end < 0 else markdown[end + 1 :]
    return markdown[:start] + body + ("\n" + rest if rest else "")


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument(
        "results", nargs="*", type=Path, help="accuracy_study.py JSONs (default: the committed)"
    )
    parser.add_argument("--md", type=Path, default=ROOT / "docs" / "synthetic.md")
    args = parser.parse_args(argv)
    paths = args.results or [RESULTS / n for n in STUDIES if (RESULTS / n).is_file()]
    results = [json.loads(p.read_text(encoding="utf-8")) for p in paths]
    pngs = {}
    for result in results:
        png = ROOT / "docs" / f"accuracy_{result['regime']}.png"
        if plot(result, png):
            pngs[result["regime"]] = png.name
    section = section_lines(results, pngs)
    args.md.write_text(splice(args.md.read_text(encoding="utf-8"), section), encoding="utf-8")
    print("\n".join(section))
    return 0


if __name__ == "__main__":
    sys.path.insert(0, str(ROOT))
    raise SystemExit(main())
