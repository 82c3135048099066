"""Where a preset loses the answer: kept-token maps of synthetic questions, and how often objects vanish.

    prunevid eval synthetic --out prunevid-eval/synthetic --presets baseline,paper,stage1_only
    python benchmarks/kept_token_maps.py prunevid-eval/synthetic/predictions.jsonl \\
        --data prunevid-eval/synthetic-data --out docs/kept_token_maps.png

For questions the unpruned model answers right and ``--preset`` gets wrong (``--per-type`` of each type in
``--types``), the figure shows per frame pair: the frames, what Stage 1 made of them (each token painted
with the mean colour of the pixels of all the source tokens merged into it) and what reached the last
layer after Stage 2 (dropped tokens black). It re-runs the preset on those questions through
:func:`prunevid.pipeline.ask` and reads :attr:`~prunevid.stats.VideoStats.merged_into` and
``kept_indices``.

It also counts, over the first ``--survival-limit`` questions (split into those the preset lost, those
it kept right, and all), how many object appearances survive each stage (see :func:`survival`). The
ground truth comes from the scene (:func:`prunevid.synthetic_qa.make_sample` regenerates it from the
question id). Writes the counts to
``--json`` (default ``benchmarks/results/synthetic_kept_tokens.json``, which ``report_synthetic.py`` adds
to ``docs/synthetic.md``) and prints them. Each token's fate is read from the stats by the product's
:func:`prunevid.explain.token_map` (what ``prunevid explain`` draws).

    python benchmarks/kept_token_maps.py --example docs/explain_example.png

draws the README's ``prunevid explain`` picture instead (see :func:`readme_example`).
"""

from __future__ import annotations

import argparse
import datetime
import json
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
MERGE = 28  # pixels per LLM token side (14-pixel patches merged 2x2)


def token_cells(pixels: np.ndarray) -> np.ndarray:
    """The pixels of each LLM token (its ``28 x 28`` cell over its two frames), in the vision tower's
    token order (frame pair, row, column): ``[T, S, S, ...]`` -> ``[T/2 * g * g, 2 * 28 * 28, ...]``
    with ``g = S / 28``."""
    t, s, rest = pixels.shape[0], pixels.shape[1], pixels.shape[3:]
    g = s // MERGE
    cells = pixels.reshape(t // 2, 2, g, MERGE, g, MERGE, *rest).swapaxes(1, 2).swapaxes(2, 4)
    return cells.reshape(t // 2 * g * g, 2 * MERGE * MERGE, *rest)


def token_colours(frames: np.ndarray) -> np.ndarray:
    """Mean RGB of each LLM token's pixels: ``uint8 [T, S, S, 3]`` -> ``float64 [T/2 * g * g, 3]``."""
    return token_cells(frames).mean(axis=1, dtype=np.float64)


def object_shares(scene: Any) -> np.ndarray:
    """Fraction of each token's pixels (over its frame pair) drawn by each object: ``[objects, n_tokens]``."""
    from prunevid.synthetic_qa import object_map

    cells = token_cells(object_map(scene))
    return np.stack([(cells == k).mean(-1) for k in range(len(scene.shapes))])


def survival(scene: Any, merged_into: np.ndarray, kept: set[int]) -> dict[str, tuple[int, int]]:
    """How many object appearances (an object in a frame pair) and objects survive Stage 1 and Stage 2.

    An appearance survives a stage if a token the LLM sees after it shows at least half as much of the
    object as the unmerged token showing most of it: merging into background (or into another object)
    dilutes an object's share, dropping a token removes it. An object survives if one of its appearances
    does. Without pruning everything survives.

    Args:
        scene: the clip's ground truth.
        merged_into: ``[n]`` per source token, its merged token's representative (numbered from the
            video's first token), -1 if dropped before the LLM.
        kept: representatives (same numbering) that reached the last layer.

    Returns:
        ``(survived, total)`` under ``"stage1"`` / ``"stage2"`` (appearances) and ``"stage1_objects"`` /
        ``"stage2_objects"`` (objects).
    """
    shares = object_shares(scene)  # [K, n]
    pairs = scene.num_frames // 2
    pair_of = np.arange(merged_into.shape[0]) // (merged_into.shape[0] // pairs)
    out = {key: [0, 0] for key in ("stage1", "stage2", "stage1_objects", "stage2_objects")}
    for k in range(shares.shape[0]):
        anywhere = {"stage1": False, "stage2": False}
        for pair in range(pairs):
            tokens = np.flatnonzero((pair_of == pair) & (shares[k] >= 0.15))
            if len(tokens) == 0:
                continue
            best = shares[k][tokens].max()
            seen = {"stage1": False, "stage2": False}
            for rep in set(merged_into[tokens].tolist()) - {-1}:
                if shares[k][merged_into == rep].mean() >= 0.5 * best:
                    seen["stage1"] = True
                    seen["stage2"] |= rep in kept
            for stage, survived in seen.items():
                out[stage][0] += survived
                out[stage][1] += 1
                anywhere[stage] |= survived
        for stage, survived in anywhere.items():
            out[f"{stage}_objects"][0] += survived
            out[f"{stage}_objects"][1] += 1
    return {key: (a, b) for key, (a, b) in out.items()}


def run_preset(model: Any, processor: Any, sample: Any, clip: Any) -> tuple[str, np.ndarray, set[int]]:
    """Answer one question with the attached preset: ``(answer, merged_into [n], kept)``, numbered by grid
    index (the video's first token is 0), read with :func:`prunevid.explain.token_map`."""
    from prunevid.evaluation import format_prompt
    from prunevid.explain import KEPT, read_video_tokens, token_map
    from prunevid.pipeline import ask
    from prunevid.prompt import build_inputs

    prompt = format_prompt(sample.question, sample.options)
    (tokens,) = read_video_tokens(model.config, build_inputs(processor, clip, prompt))[0]
    answer = ask(model, processor, clip, prompt, max_new_tokens=32)
    tokens_map = token_map(answer.stats.samples[0].videos[0], tokens)
    kept = np.flatnonzero(tokens_map.state.reshape(-1) == KEPT)
    return answer.text, tokens_map.representative.reshape(-1), set(kept.tolist())


def readme_example(path: Path, sample: int = 5) -> None:
    """The README's picture: held-out question ``sample`` of the synthetic set (its clip, written with
    :func:`prunevid.synthetic_qa.demo_clip`, and its multiple-choice prompt) explained with the bundled model
    under baseline, paper and random (at paper's retention) by :func:`prunevid.explain`; the sheet is
    saved again with a 256-colour palette to stay small."""
    import tempfile

    from PIL import Image

    import prunevid
    from prunevid.synthetic_qa import MODEL_DIR, demo_clip

    with tempfile.TemporaryDirectory() as folder:
        video, question = demo_clip(Path(folder) / "clip.mp4", sample=sample)
        model, processor, pruner = prunevid.load(MODEL_DIR, dtype="float32")
        pruner.detach()
        result = prunevid.explain(
            model,
            processor,
            video,
            question,
            Path(folder) / "explained",
            methods=["baseline", "paper", "random"],
            max_new_tokens=16,
            tile_width=128,
        )
        sheet = Image.open(result.files["sheets"][0]).convert("RGB")
    path.parent.mkdir(parents=True, exist_ok=True)
    sheet.quantize(256, method=Image.Quantize.FASTOCTREE).save(path, optimize=True)
    answers = "; ".join(f"{m.name}: {m.answer!r}" for m in result.methods)
    print(f"{path}: {path.stat().st_size / 1024:.0f} KB; {answers}")


def paint(
    colours: np.ndarray, merged_into: np.ndarray, kept: set[int] | None, grid: tuple[int, int, int]
) -> np.ndarray:
    """Each token painted with its merged token's mean colour (black if dropped): ``[n, 3]`` ->
    ``uint8 [T', g * 28, g * 28, 3]``."""
    t, g, _ = grid
    painted = np.zeros_like(colours)
    for rep in set(merged_into.tolist()) - {-1}:
        members = merged_into == rep
        if kept is None or rep in kept:
            painted[members] = colours[members].mean(0)
    image = painted.reshape(t, g, g, 3).repeat(MERGE, 1).repeat(MERGE, 2)
    return np.clip(image, 0, 255).astype(np.uint8)


def figure(cases: list[dict[str, Any]], preset: str, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    pairs = cases[0]["frames"].shape[0] // 2
    rows = 3 * len(cases)
    fig, axes = plt.subplots(rows, pairs, figsize=(1.3 * pairs, 1.45 * rows), squeeze=False)
    for c, case in enumerate(cases):
        grid = (pairs, case["frames"].shape[1] // MERGE, case["frames"].shape[1] // MERGE)
        stage1 = paint(case["colours"], case["merged_into"], None, grid)
        stage2 = paint(case["colours"], case["merged_into"], case["kept"], grid)
        n1, n2 = len(set(case["merged_into"].tolist()) - {-1}), len(case["kept"])
        labels = ("frames", f"after Stage 1 ({n1})", f"after Stage 2 ({n2})")
        for r, images in enumerate((case["frames"][::2], stage1, stage2)):
            for p in range(pairs):
                ax = axes[3 * c + r, p]
                ax.imshow(images[p])
                ax.set_xticks([])
                ax.set_yticks([])
                if p == 0:
                    ax.set_ylabel(labels[r], fontsize=7)
        title = (
            f"{case['id']} ({case['type']}): {case['question']}  options: {' / '.join(case['options'])}\n"
            f"right: {case['gold_text']}  |  unpruned: {case['baseline']!r}  |  {preset}: {case['answer']!r}"
        )
        axes[3 * c, 0].set_title(title, fontsize=7, loc="left")
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=110)
    plt.close(fig)


def main(argv: Sequence[str] | None = None) -> int:
    sys.path.insert(0, str(ROOT))
    from prunevid.benchmarks_data import read_benchmark
    from prunevid.config import PruneVidConfig
    from prunevid.evaluation import load_sample_clip, read_rows
    from prunevid.pipeline import load
    from prunevid.qwen2_5_vl import attach
    from prunevid.synthetic_qa import EVAL_SEED, MODEL_DIR, make_sample

    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("predictions", nargs="?", help="predictions.jsonl of a `prunevid eval synthetic` run")
    parser.add_argument("--data", help="the held-out set the run used")
    parser.add_argument(
        "--example", type=Path, help="only draw the README's prunevid-explain picture to this PNG (docs/...)"
    )
    parser.add_argument("--model", default=str(MODEL_DIR))
    parser.add_argument("--preset", default="paper")
    parser.add_argument("--types", default="count,end,order")
    parser.add_argument("--per-type", type=int, default=1)
    parser.add_argument("--survival-limit", type=int, default=120, help="questions for the survival counts")
    parser.add_argument("--out", default=str(ROOT / "docs" / "kept_token_maps.png"))
    parser.add_argument(
        "--json", type=Path, default=ROOT / "benchmarks" / "results" / "synthetic_kept_tokens.json"
    )
    args = parser.parse_args(argv)
    if args.example is not None:
        readme_example(args.example)
        return 0
    if args.predictions is None or args.data is None:
        parser.error("give predictions.jsonl and --data (or --example PATH)")

    samples = {s.id: s for s in read_benchmark("synthetic", args.data)}
    rows = read_rows(args.predictions)
    correct = {(r["id"], r["preset"]): bool(r["correct"]) for r in rows}
    baseline_text = {r["id"]: r["raw_answer"] for r in rows if r["preset"] == "baseline"}
    model, processor, pruner = load(args.model, PruneVidConfig.preset("baseline"), dtype="float32")
    pruner.detach()
    config = PruneVidConfig.preset(args.preset)

    def analyse(sample_id: str) -> dict[str, Any]:
        sample = samples[sample_id]
        truth = make_sample(EVAL_SEED, int(sample_id.rsplit("-", 1)[1]))
        clip = load_sample_clip(sample)
        with attach(model, config):
            text, merged_into, kept = run_preset(model, processor, sample, clip)
        return {
            "id": sample_id,
            "type": sample.group,
            "question": sample.question,
            "options": sample.options,
            "gold_text": sample.options["ABCD".index(sample.gold)],
            "baseline": baseline_text.get(sample_id, ""),
            "answer": text,
            "frames": np.asarray(clip.frames),
            "colours": token_colours(np.asarray(clip.frames)),
            "merged_into": merged_into,
            "kept": kept,
            "survival": survival(truth.scene, merged_into, kept),
            "lost": correct.get((sample_id, "baseline"), False)
            and not correct.get((sample_id, args.preset), True),
        }

    # Survival over the first questions of the set, split by whether the preset lost the answer.
    ids = sorted(samples, key=lambda i: int(i.rsplit("-", 1)[1]))[: args.survival_limit]
    analysed = [analyse(i) for i in ids]
    summary: dict[str, Any] = {
        "date": datetime.date.today().isoformat(),
        "model": Path(args.model).name,
        "preset": args.preset,
        "questions": len(analysed),
    }
    kept = [a for a in analysed if correct.get((a["id"], "baseline")) and correct.get((a["id"], args.preset))]
    for name, group in (("lost", [a for a in analysed if a["lost"]]), ("kept", kept), ("all", analysed)):
        for stage in ("stage1", "stage2", "stage1_objects", "stage2_objects"):
            survived = sum(a["survival"][stage][0] for a in group)
            total = sum(a["survival"][stage][1] for a in group)
            summary[f"{name}_{stage}_survival"] = round(survived / total, 3) if total else None
        summary[f"{name}_questions"] = len(group)

    cases = []
    for question_type in args.types.split(","):
        lost = [a for a in analysed if a["lost"] and a["type"] == question_type]
        cases.extend(lost[: args.per_type])
    if cases:
        figure(cases, args.preset, Path(args.out))
        summary["figure"] = Path(args.out).name
        summary["figure_questions"] = [c["id"] for c in cases]
    args.json.write_text(json.dumps(summary, indent=1) + "\n", encoding="utf-8")
    print(json.dumps(summary, indent=1))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
