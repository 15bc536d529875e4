"""The README runs in order: its fenced code blocks, executed as a new user following it would.

```python blocks run in one shared namespace, in order; ```bash / ```sh / ```console blocks run each
``pitstore ...`` command with the real CLI (``python -m pitstore`` in a subprocess); all in one fresh
temporary directory. A block that cannot run in a test is marked on the line before its fence with
``<!-- readme-test: skip (the reason) -->``; every other block must run.
"""

from __future__ import annotations

import ast
import asyncio
import inspect
import os
import re
import shlex
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
README = REPO / "README.md"
RUNNABLE = {"python": "python", "bash": "shell", "sh": "shell", "console": "shell"}
SKIP = re.compile(r"<!--\s*readme-test:\s*skip\s*\((?P<reason>[^)]+)\)\s*-->")
FENCE = re.compile(r"^(?P<fence>```+)(?P<lang>[\w+-]*)\s*$")


@dataclass(frozen=True)
class Block:
    lang: str
    line: int  # of the opening fence, 1-based
    code: str
    skip: str | None  # the reason given by the marker, None: the block must run

    @property
    def where(self) -> str:
        return f"README.md:{self.line} ({self.lang})"


def blocks(text: str) -> list[Block]:
    """The fenced blocks of ``text`` in order, each with the skip reason of the line before it.

    >>> [b.lang for b in blocks("<!-- readme-test: skip (x) -->\\n```bash\\nmake\\n```\\n```python\\n1\\n```\\n")]
    ['bash', 'python']
    """
    lines = text.splitlines()
    out: list[Block] = []
    i = 0
    while i < len(lines):
        m = FENCE.match(lines[i])
        if not m:
            i += 1
            continue
        start, fence = i, m["fence"]
        i += 1
        body: list[str] = []
        while i < len(lines) and lines[i].strip() != fence:
            body.append(lines[i])
            i += 1
        marker = SKIP.search(lines[start - 1]) if start > 0 else None
        out.append(Block(m["lang"] or "text", start + 1, "\n".join(body) + "\n", marker["reason"] if marker else None))
        i += 1
    return out


def shell_commands(code: str) -> list[list[str]]:
    """The commands of a shell block: one per line (``\\`` continues a line), comments dropped.

    >>> shell_commands("pitstore get a \\\\\\n  --json   # JSON\\n\\npitstore stats\\n")
    [['pitstore', 'get', 'a', '--json'], ['pitstore', 'stats']]
    """
    commands, pending = [], ""
    for line in code.splitlines():
        if line.rstrip().endswith("\\"):
            pending += line.rstrip()[:-1] + " "
            continue
        argv = shlex.split(pending + line, comments=True)
        pending = ""
        if argv:
            commands.append(argv[1:] if argv[0] == "$" else argv)  # a console prompt
    return commands


def _env() -> dict[str, str]:
    """The environment of a new user: no PITSTORE_* settings of the machine running the tests."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("PITSTORE_") and k != "FEATURE_STORE_PATH"}
    env.update(NO_COLOR="1", COLUMNS="200")
    return env


def _run_shell(block: Block, cwd: Path) -> None:
    for argv in shell_commands(block.code):
        if argv[0] != "pitstore":
            raise AssertionError(f"{block.where}: {shlex.join(argv)!r} is not a pitstore command: mark the block "
                                 "<!-- readme-test: skip (why) --> if it cannot run in a test")
        proc = subprocess.run([sys.executable, "-m", "pitstore", *argv[1:]], cwd=cwd, env=_env(),
                              capture_output=True, text=True, timeout=120)
        if proc.returncode != 0:
            raise AssertionError(f"{block.where}: {shlex.join(argv)} exited {proc.returncode}:\n"
                                 f"{proc.stdout}\n{proc.stderr}")


def _run_python(block: Block, namespace: dict[str, object]) -> None:
    # Top-level await is allowed: an ``async with`` example runs as a coroutine.
    code = compile(block.code, block.where, "exec", flags=ast.PyCF_ALLOW_TOP_LEVEL_AWAIT)
    result = eval(code, namespace)
    if inspect.iscoroutine(result):
        asyncio.run(result)


@pytest.mark.slow  # runs every README block, CLI processes included: the longest test
def test_readme_blocks_run_in_order(tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                    capsys: pytest.CaptureFixture[str]) -> None:
    """Every unmarked python and shell block of the README runs, in order, in one fresh directory, one Python
    namespace; the skipped ones are listed with their reasons."""
    for key in [k for k in os.environ if k.startswith("PITSTORE_") or k == "FEATURE_STORE_PATH"]:
        monkeypatch.delenv(key)
    monkeypatch.chdir(tmp_path)
    monkeypatch.syspath_prepend(str(tmp_path))  # modules the README writes (mypkg) import, as under python -m
    namespace: dict[str, object] = {"__name__": "__readme__"}
    ran, skipped, other = [], [], []
    try:
        for block in blocks(README.read_text()):
            if block.lang not in RUNNABLE:
                other.append(block)
            elif block.skip is not None:
                skipped.append(block)
            elif RUNNABLE[block.lang] == "python":
                _run_python(block, namespace)
                ran.append(block)
            else:
                _run_shell(block, tmp_path)
                ran.append(block)
    finally:
        for value in namespace.values():  # stores the examples left open
            close = getattr(value, "close", None)
            if type(value).__name__ == "Store" and callable(close):
                close()
    with capsys.disabled():
        print(f"\nREADME: {len(ran)} blocks ran, {len(skipped)} skipped, {len(other)} not code:")
        for block in skipped:
            print(f"  skipped {block.where}: {block.skip}")
        for block in other:
            print(f"  not run {block.where}")
    assert ran, "no README block ran"


def test_every_skip_marker_gives_a_reason_and_precedes_a_block() -> None:
    """A skip marker names why, and sits on the line right before a fence (a stray one would skip nothing)."""
    lines = README.read_text().splitlines()
    for n, line in enumerate(lines):
        if "readme-test" in line:
            m = SKIP.search(line)
            assert m and m["reason"].strip(), f"README.md:{n + 1}: malformed marker {line!r}"
            assert n + 1 < len(lines) and FENCE.match(lines[n + 1]), f"README.md:{n + 1}: marker not before a fence"
