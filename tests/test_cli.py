"""The prunevid command as a new user meets it: fast plain help, --version, checks before the model loads,
notes when a frame cap changes the request, clean errors, and eval synthetic writing only what it needs."""

from __future__ import annotations

import json
import re
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import pytest

import prunevid
from prunevid import cli, pipeline
from prunevid.cli import main
from prunevid.synthetic import make_clip, write_video

ROOT = Path(__file__).resolve().parents[1]


def _run_cli(*argv: str) -> tuple[subprocess.CompletedProcess, float, list[str]]:
    """Run ``prunevid ARGV`` in a fresh interpreter: (result, seconds, heavy modules it imported)."""
    code = (
        "import sys\nfrom prunevid.cli import main\n"
        "try:\n    main(sys.argv[1:])\nexcept SystemExit:\n    pass\n"
        "heavy = [m for m in ('torch', 'transformers', 'cv2', 'av') if m in sys.modules]\n"
        "print('HEAVY=' + ','.join(heavy))\n"
    )
    started = time.perf_counter()
    result = subprocess.run(
        [sys.executable, "-c", code, *argv], capture_output=True, text=True, cwd=ROOT, timeout=120
    )
    seconds = time.perf_counter() - started
    heavy = result.stdout.rsplit("HEAVY=", 1)[1].strip()
    return result, seconds, [m for m in heavy.split(",") if m]


@pytest.mark.parametrize("argv", [("--help",), ("--version",), ("ask", "--help"), ("eval", "--help")])
def test_help_and_version_import_no_torch(argv: tuple[str, ...]) -> None:
    result, seconds, heavy = _run_cli(*argv)
    assert heavy == [], f"{argv} imported {heavy}"
    # The bound is generous (a loaded 2-core machine); without torch it answers in about 0.3 s.
    assert seconds < 5.0
    if argv == ("--version",):
        assert result.stdout.startswith(f"prunevid {prunevid.__version__}")


def test_help_is_plain_text(capsys: pytest.CaptureFixture) -> None:
    for argv in (["--help"], ["ask", "--help"], ["demo", "--help"], ["eval", "--help"]):
        with pytest.raises(SystemExit):
            main(argv)
        text = capsys.readouterr().out
        assert "``" not in text and ":func:" not in text and "usage: prunevid" in text
    with pytest.raises(SystemExit):
        main(["ask", "--help"])
    assert "--max-frames" in capsys.readouterr().out


def test_version_is_the_package_version() -> None:
    declared = re.search(r'^version = "([^"]+)"', (ROOT / "pyproject.toml").read_text(), re.MULTILINE)
    assert declared is not None and prunevid.__version__ == declared.group(1)


def test_restated_constants_agree_with_their_modules() -> None:
    from prunevid import evaluation, reference_methods

    assert cli.REFERENCE_METHODS == reference_methods.METHODS
    assert cli.EVAL_DEFAULT_FRAMES == evaluation.DEFAULT_FRAMES
    assert cli.EVAL_DEFAULT_MAX_NEW_TOKENS == evaluation.DEFAULT_MAX_NEW_TOKENS
    from prunevid import synthetic_qa

    assert cli.SYNTHETIC_REGIMES == tuple(synthetic_qa.REGIMES)


def test_lazy_exports() -> None:
    for name in prunevid.__all__:
        assert getattr(prunevid, name) is not None
    assert prunevid.build_inputs.__module__ == "prunevid.prompt"
    with pytest.raises(AttributeError, match="no attribute 'nonsense'"):
        prunevid.nonsense  # noqa: B018


@pytest.fixture
def no_model_load(monkeypatch: pytest.MonkeyPatch) -> list[Any]:
    """Make any model load fail the test (a bad input must be reported before it)."""
    calls: list[Any] = []

    def refuse(*args: Any, **kwargs: Any) -> Any:
        calls.append(args)
        raise AssertionError("the model was loaded")

    monkeypatch.setattr(pipeline, "load", refuse)
    return calls


@pytest.fixture(scope="module")
def clip_file(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return write_video(make_clip(16, 56, 56, seed=5), tmp_path_factory.mktemp("cli") / "clip.mp4", fps=8.0)


def test_a_bad_video_is_reported_before_the_model_loads(
    no_model_load: list[Any], tmp_path: Path, capfd: pytest.CaptureFixture
) -> None:
    assert main(["ask", "/no/such/video.mp4", "What?", "--model", "x"]) == 2
    assert "video file not found: '/no/such/video.mp4'" in capfd.readouterr().err
    broken = tmp_path / "broken.mp4"
    broken.write_bytes(b"\x00\x00\x00\x18ftypmp42" + bytes(200))
    assert main(["ask", str(broken), "What?", "--model", "x"]) == 2
    err = capfd.readouterr().err
    # Only prunevid's own lines: no FFmpeg/OpenCV warnings before the error.
    assert all(line.startswith("prunevid: ") for line in err.splitlines()), err
    assert "prunevid: error: could not decode" in err
    assert no_model_load == []


def test_a_missing_model_folder_is_named(
    no_model_load: list[Any], clip_file: Path, capsys: pytest.CaptureFixture
) -> None:
    assert main(["ask", str(clip_file), "What?", "--model", "/no/such/model"]) == 2
    assert "no such model folder, and not a hub id: '/no/such/model'" in capsys.readouterr().err
    assert main(["ask", str(clip_file), "What?", "--model", str(clip_file.parent)]) == 2
    assert "not a model checkpoint (no config.json" in capsys.readouterr().err
    assert no_model_load == []


def test_ask_reports_each_step_and_the_frame_cap(
    tiny_checkpoint: Path, clip_file: Path, capsys: pytest.CaptureFixture
) -> None:
    argv = ["ask", str(clip_file), "What moves?", "--model", str(tiny_checkpoint), "--max-new-tokens", "2"]
    assert main([*argv, "--frames", "1000", "--json"]) == 0
    captured = capsys.readouterr()
    result = json.loads(captured.out)
    assert result["num_frames"] == 16
    assert "1000 frames requested but the video has only 16" in result["notes"][0]
    lines = captured.err.splitlines()
    assert lines[0].startswith(f"prunevid: decoding {clip_file} ... 16 frames of 56x56;")
    assert lines[1].startswith("prunevid: note: 1000 frames requested but the video has only 16")
    assert lines[2].startswith(f"prunevid: loading {tiny_checkpoint} ...") and lines[2].endswith(" s")
    assert lines[3].startswith("prunevid: answering (paper) ...")
    assert main([*argv, "--max-frames", "4", "--quiet"]) == 0
    captured = capsys.readouterr()
    assert captured.err == "" and "4 frames; preset paper" in captured.out


def test_eval_synthetic_realistic_regime(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture
) -> None:
    """The realistic regime end to end on CPU: its own default folder and bundled model, its own rows'
    label, and refusals of a folder holding the other regime or another seed. Clips of 112x112x24 (the
    regime's code path at a test size) keep it to seconds."""
    from prunevid import synthetic_qa

    monkeypatch.chdir(tmp_path)
    data = tmp_path / "realistic"
    synthetic_qa.write_eval_set(data, 3, seed=5, regime="realistic", size=112, num_frames=24, workers=1)
    argv = ["eval", "synthetic", "--regime", "realistic", "--presets", "baseline", "--max-new-tokens", "8"]
    assert main([*argv, "--data", str(data), "--seed", "5"]) == 0
    out = tmp_path / "prunevid-eval" / "synthetic-realistic-synthetic-model-realistic-seed5"
    summary = json.loads((out / "summary.json").read_text())
    assert summary["benchmark"] == "synthetic-realistic" and summary["samples"] == 3
    assert summary["model"] == str(synthetic_qa.MODEL_DIR_REALISTIC)
    assert "3 samples, 32 frames asked, 24 frames used" in (out / "summary.md").read_text()
    capsys.readouterr()
    # The other regime's folder, another seed, and regime options on another benchmark are refused.
    original = ["eval", "synthetic", "--presets", "baseline", "--data", str(data)]
    assert main(original) == 2
    assert "holds the realistic regime's synthetic set, not the original" in capsys.readouterr().err
    assert main([*argv, "--data", str(data), "--seed", "20261130"]) == 2
    assert "not of seed 20261130" in capsys.readouterr().err
    assert main(["eval", "mvbench", "--data", str(data), "--regime", "realistic"]) == 2
    assert "--regime and --seed choose the synthetic benchmark's questions" in capsys.readouterr().err
    # Without --data: the regime's own default folder (never the original set's), named by its seed.
    folder = cli._synthetic_data_folder("realistic", 20_261_130, synthetic_qa.REGIMES["realistic"].eval_seed)
    assert folder == Path("prunevid-eval/synthetic-realistic-data") != cli.SYNTHETIC_DATA
    assert (
        cli._synthetic_data_folder("realistic", 7002, 20_261_130).name == "synthetic-realistic-seed7002-data"
    )
    assert cli._synthetic_data_folder("original", synthetic_qa.EVAL_SEED, synthetic_qa.EVAL_SEED) == (
        cli.SYNTHETIC_DATA
    )


def test_eval_synthetic_writes_only_what_the_run_needs(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture
) -> None:
    monkeypatch.chdir(tmp_path)  # the default folder, prunevid-eval/synthetic-data, lands here
    data, out = tmp_path / "prunevid-eval" / "synthetic-data", tmp_path / "out"
    argv = ["eval", "synthetic", "--out", str(out), "--presets", "baseline", "--max-new-tokens", "4"]
    assert main([*argv, "--limit", "2"]) == 0
    assert len(list((data / "videos").iterdir())) == 2
    assert len(json.loads((data / "synthetic.json").read_text())["samples"]) == 2
    summary = (out / "summary.md").read_text()
    # The default asks for 32 frames; the clips have 16, and the header says what was used.
    assert "2 samples, 32 frames asked, 16 frames used" in summary
    assert "writing synthetic questions" in capsys.readouterr().err
    # A larger run extends the set instead of starting over.
    assert main([*argv, "--limit", "3"]) == 0
    assert len(list((data / "videos").iterdir())) == 3
    # A folder given with --data is written when empty, and used as it is once it holds a set.
    mine = tmp_path / "mine"
    assert main([*argv, "--limit", "2", "--data", str(mine), "--out", str(tmp_path / "out2")]) == 0
    assert main([*argv, "--limit", "3", "--data", str(mine), "--out", str(tmp_path / "out3")]) == 0
    assert len(list((mine / "videos").iterdir())) == 2


def test_preset_config_reads_a_point_name() -> None:
    """``NAME@k<keep_ratio>[c<cluster_ratio>][+<static_time>]``: the preset with that strength, nothing else
    changed."""
    coverage = cli.preset_config("coverage")
    assert coverage == prunevid.PruneVidConfig.preset("coverage")
    assert cli.preset_config("coverage@k0.2c1") == coverage.replace(keep_ratio=0.2, cluster_ratio=1.0)
    ends = coverage.replace(keep_ratio=0.2, cluster_ratio=1.0, static_time="ends")
    assert cli.preset_config("coverage@k0.2c1+ends") == ends
    paper = prunevid.PruneVidConfig.preset("paper")
    assert cli.preset_config("paper@k0.25") == paper.replace(keep_ratio=0.25)
    assert cli.preset_config("paper@k0.4+middle") == paper.replace(static_time="middle")
    for bad, message in [
        ("paper@0.2", "is written NAME@k<keep_ratio>"),
        ("paper@k0.2x", "is written NAME@k<keep_ratio>"),
        ("paper@k.5", "is written NAME@k<keep_ratio>"),
        ("paper@k0.2+", "is written NAME@k<keep_ratio>"),
        ("paper@c1+ends", "is written NAME@k<keep_ratio>"),
        ("baseline@k0.2", "baseline has no Stage 2"),
        ("stage2_only@k0.3c0.5", "stage2_only has no Stage 1, so no cluster_ratio"),
        ("stage2_only@k0.3+ends", "stage2_only has no Stage 1, so no static_time"),
        ("paper@k2", "keep_ratio=2.0 is invalid"),
        ("paper@k0.2+last", "static_time='last' is invalid"),
        ("papr@k0.2", "unknown preset 'papr'"),
    ]:
        with pytest.raises(ValueError, match=re.escape(message)):
            cli.preset_config(bad)


def test_eval_answers_under_a_point_name(tmp_path: Path) -> None:
    """A table row such as ``coverage@k0.2c1`` is reproduced by ``prunevid eval`` under that label."""
    out = tmp_path / "out"
    argv = ["eval", "synthetic", "--data", str(tmp_path / "data"), "--out", str(out), "--limit", "1"]
    assert main([*argv, "--presets", "coverage@k0.2c1,coverage", "--max-new-tokens", "4"]) == 0
    rows = [json.loads(line) for line in (out / "predictions.jsonl").read_text().splitlines()]
    assert {r["preset"] for r in rows} == {"coverage@k0.2c1", "coverage"}
    retention = {r["preset"]: r["retention"] for r in rows}
    assert retention["coverage@k0.2c1"] != retention["coverage"]  # the strength took effect
    stored = json.loads((out / "run.json").read_text())["presets"]["coverage@k0.2c1"]
    assert (stored["keep_ratio"], stored["cluster_ratio"]) == (0.2, 1.0)
