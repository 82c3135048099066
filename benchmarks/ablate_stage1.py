"""Which part of Stage 1 loses the synthetic answers: its steps switched off one at a time.

    python benchmarks/ablate_stage1.py --data prunevid-eval/synthetic-data --out prunevid-eval/stage1-ablation

Runs the evaluation harness (:func:`prunevid.evaluation.evaluate`) on the synthetic held-out set with the
shipped model, CPU float32 as ``prunevid eval synthetic``, under:

- ``stage1_temporal``: ``stage1_only`` without the spatial merge (``cluster_ratio = 1``): temporal
  segments and the collapse of static positions only (spec 1a, 1b);
- ``stage1_spatial``: ``stage1_only`` without the static collapse (``tau = 1.5``, never reached): every
  frame's tokens merged by spatial DPC-KNN (spec 1c);
- ``paper_no_spatial``: ``paper`` without the spatial merge.

Writes ``benchmarks/results/synthetic_stage1_ablation.json`` (the summary, the configs, date, versions),
which ``benchmarks/report_synthetic.py`` adds to ``docs/synthetic.md``.
"""

from __future__ import annotations

import argparse
import dataclasses
import datetime
import json
import platform
import sys
from collections.abc import Sequence
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
RESULT = ROOT / "benchmarks" / "results" / "synthetic_stage1_ablation.json"


def ablations() -> dict:
    """The ablated configurations, by name."""
    from prunevid.config import PruneVidConfig

    stage1, paper = PruneVidConfig.preset("stage1_only"), PruneVidConfig.preset("paper")
    return {
        "stage1_temporal": stage1.replace(cluster_ratio=1.0),
        "stage1_spatial": stage1.replace(tau=1.5),
        "paper_no_spatial": paper.replace(cluster_ratio=1.0),
    }


def main(argv: Sequence[str] | None = None) -> int:
    sys.path.insert(0, str(ROOT))
    import torch
    import transformers

    from prunevid.benchmarks_data import read_benchmark
    from prunevid.evaluation import evaluate
    from prunevid.pipeline import load
    from prunevid.synthetic_qa import EVAL_SEED, MODEL_DIR

    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--data", required=True, help="the synthetic held-out set (prunevid eval writes it)")
    parser.add_argument("--out", required=True, help="folder for the harness's predictions and summary")
    parser.add_argument("--limit", type=int, help="only N questions")
    parser.add_argument("--json", type=Path, default=RESULT)
    args = parser.parse_args(argv)

    model, processor, pruner = load(MODEL_DIR, dtype=torch.float32)
    pruner.detach()
    configs = ablations()
    summary = evaluate(
        model,
        processor,
        read_benchmark("synthetic", args.data),
        args.out,
        configs,
        benchmark="synthetic",
        limit=args.limit,
    )
    result = {
        "date": datetime.date.today().isoformat(),
        "device": "cpu",
        "versions": {
            "python": platform.python_version(),
            "torch": torch.__version__,
            "transformers": transformers.__version__,
        },
        "eval_seed": EVAL_SEED,
        "configs": {name: dataclasses.asdict(config) for name, config in configs.items()},
        "summary": summary,
    }
    args.json.write_text(json.dumps(result, indent=1) + "\n", encoding="utf-8")
    print(json.dumps({n: (p["accuracy"], p["mean_retention"]) for n, p in summary["presets"].items()}))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
