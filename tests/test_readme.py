"""Every code block of README.md runs as written, offline, in a fresh folder, in README order.

- ``python`` blocks run in this process, each in a fresh namespace (so each is complete on its own).
- ``bash`` blocks that install (``pip``, ``git clone``, ``python3 -m venv``, ``apt-get``, ``brew``) cannot
  run here (no network, and this is the environment they would build): they are checked with ``bash -n``.
- Other ``bash`` blocks run line by line: a ``prunevid ...`` line calls the command's ``main`` in this
  process (what the ``prunevid`` entry point calls; tests/test_cli.py runs the entry point itself), any
  other line runs in bash. Each must exit 0.
- A block that cannot run offline (it needs the hub, a GPU, a download) is marked by an HTML comment on the
  line before it: ``<!-- readme-test: skip <why> -->``; the reason is required.
"""

from __future__ import annotations

import contextlib
import io
import os
import re
import shlex
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

import pytest

README = Path(__file__).resolve().parents[1] / "README.md"
INSTALL_COMMANDS = (
    "pip ",
    "pip3 ",
    "git clone",
    "python3 -m venv",
    "python -m venv",
    "apt-get",
    "brew ",
    "cd ",
)
SKIP_MARK = re.compile(r"<!--\s*readme-test:\s*skip\s*(.*?)\s*-->")


@dataclass
class Block:
    """One fenced code block: language, text, line number in the README, skip reason (None = run it)."""

    language: str
    code: str
    line: int
    skip: str | None


def readme_blocks(text: str) -> list[Block]:
    """The fenced code blocks of a markdown text, in order."""
    blocks: list[Block] = []
    lines = text.splitlines()
    i = 0
    while i < len(lines):
        opening = re.match(r"^```(\w*)\s*$", lines[i])
        if not opening:
            i += 1
            continue
        start = i
        i += 1
        body = []
        while i < len(lines) and not lines[i].startswith("```"):
            body.append(lines[i])
            i += 1
        if i == len(lines):
            raise AssertionError(f"README line {start + 1}: code block never closed")
        before = lines[start - 1] if start else ""
        mark = SKIP_MARK.search(before)
        blocks.append(Block(opening.group(1), "\n".join(body) + "\n", start + 1, mark and mark.group(1)))
        i += 1
    return blocks


def _commands(code: str) -> list[str]:
    """Shell command lines (comments and blank lines dropped; a trailing backslash joins lines)."""
    joined = code.replace("\\\n", " ")
    return [line.strip() for line in joined.splitlines() if line.strip() and not line.strip().startswith("#")]


def _installs(block: Block) -> bool:
    if block.language != "bash":
        return False
    pieces = [piece.strip() for line in _commands(block.code) for piece in line.split("&&")]
    return any(piece.startswith(INSTALL_COMMANDS) for piece in pieces) and all(
        piece.startswith((*INSTALL_COMMANDS, ". ", "source ", "python -m pytest")) for piece in pieces
    )


BLOCKS = readme_blocks(README.read_text(encoding="utf-8"))


def test_every_block_is_runnable_or_says_why_not() -> None:
    assert BLOCKS, "README.md has no code blocks"
    for block in BLOCKS:
        assert block.language in ("bash", "python"), f"line {block.line}: language {block.language!r}"
        if block.skip is not None:
            assert block.skip, f"line {block.line}: a skip mark needs its reason"
    python = [b for b in BLOCKS if b.language == "python"]
    # The transformers-native path comes first.
    assert python and "apply_chat_template" in python[0].code and "model.generate(**inputs" in python[0].code


@pytest.mark.parametrize("block", [b for b in BLOCKS if _installs(b)], ids=lambda b: f"line{b.line}")
def test_install_blocks_are_valid_bash(block: Block) -> None:
    result = subprocess.run(["bash", "-n"], input=block.code, capture_output=True, text=True)
    assert result.returncode == 0, result.stderr


def _run_prunevid(line: str) -> None:
    from prunevid.cli import main

    argv = shlex.split(line)[1:]
    output: io.TextIOBase = io.StringIO()
    if argv[-2:] == [">", "/dev/null"]:
        argv = argv[:-2]
    assert not {">", "|", ";", "<", "&"} & set(argv), f"shell syntax the test does not run in-process: {line}"
    with contextlib.redirect_stdout(output):
        status = main(argv)
    assert status == 0, f"{line!r} exited {status}"


def test_readme_blocks_run_in_order(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """One pass over the README as a user would follow it, in an empty folder."""
    monkeypatch.chdir(tmp_path)
    env = {**os.environ, "PATH": f"{Path(sys.executable).parent}{os.pathsep}{os.environ.get('PATH', '')}"}
    ran = 0
    for block in BLOCKS:
        if block.skip is not None or _installs(block):
            continue
        where = f"README.md line {block.line}"
        if block.language == "python":
            namespace: dict = {"__name__": "__readme__"}
            with contextlib.redirect_stdout(io.StringIO()) as printed:
                exec(compile(block.code, where, "exec"), namespace)  # noqa: S102
            assert printed.getvalue().strip(), f"{where}: the block printed nothing"
        else:
            for line in _commands(block.code):
                if line.startswith("prunevid "):
                    _run_prunevid(line)
                else:
                    result = subprocess.run(["bash", "-c", line], capture_output=True, text=True, env=env)
                    assert result.returncode == 0, f"{where}: {line!r}: {result.stderr[-2000:]}"
        ran += 1
    assert ran >= 4
    # What the blocks promised to leave behind.
    assert (tmp_path / "clip.mp4").is_file()
    assert (tmp_path / "prunevid-eval" / "synthetic-bundled" / "summary.md").is_file() or any(
        (tmp_path / "prunevid-eval").glob("synthetic-*/summary.md")
    )
