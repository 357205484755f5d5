"""The README and docs/ run as written: their code blocks, against a private Redis and real workers.

A fence's ``title`` says what its block is (docs/contributing.md tells writers):

- ``title="proj.py"`` (a file name): written to that file in the page's scratch directory;
- ``title="terminal ..."``: each line is a shell command that must exit 0; a
  ``celery ... worker`` line is started in the background, awaited until it logs
  `` ready.``, and stopped when the page is done;
- ``title="not run: why"``: shown only.

A python or shell block with no such title fails here, so a new example is
either run or says why not. Each page runs in its own scratch directory, which
starts with the README's files, in the order the page shows its blocks.
"""

from __future__ import annotations

import os
import re
import shlex
import subprocess
import sys
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from tests.servers import ROOT, stop_process, wait_until

PAGES = [ROOT / "README.md", *sorted((ROOT / "docs").rglob("*.md"))]
# Languages whose blocks a reader would paste and run: each must be run or say why not.
RUNNABLE = {"python", "py", "python3", "bash", "sh", "shell", "console", "zsh"}
FENCE = re.compile(
    r"^(?P<fence>`{3,}|~{3,})(?P<info>[^\n]*)\n(?P<body>.*?)^(?P=fence)[ \t]*$", re.MULTILINE | re.DOTALL
)
FILE_NAME = re.compile(r"^[\w.-]+(/[\w.-]+)*\.\w+$")


@dataclass(frozen=True)
class Block:
    page: Path
    line: int
    language: str
    title: str
    body: str

    @property
    def kind(self) -> str:
        """``file``, ``terminal``, ``not run``, ``unmarked`` (a runnable language, no title), or ``other``."""
        if self.title.startswith("not run:"):
            return "not run"
        if self.title.startswith("terminal"):
            return "terminal"
        if FILE_NAME.match(self.title):
            return "file"
        return "unmarked" if self.language in RUNNABLE else "other"

    def where(self) -> str:
        return f"{self.page.relative_to(ROOT) if self.page.is_relative_to(ROOT) else self.page}:{self.line}"


def blocks_of(page: Path, text: str | None = None) -> list[Block]:
    text = page.read_text() if text is None else text
    found = []
    for match in FENCE.finditer(text):
        info = match["info"].strip()
        language = info.split(maxsplit=1)[0].lower() if info else ""
        title = re.search(r'title="([^"]*)"', info)
        line = text.count("\n", 0, match.start()) + 1
        found.append(Block(page, line, language, title[1] if title else "", match["body"]))
    return found


def commands_of(block: Block) -> list[str]:
    """One command per line; a line ending in a backslash goes on."""
    commands, pending = [], ""
    for raw in block.body.splitlines():
        line = pending + raw
        if line.endswith("\\"):
            pending = line[:-1] + " "
            continue
        pending = ""
        if line.strip() and not line.lstrip().startswith("#"):
            commands.append(line.strip())
    return commands


def is_worker(command: str) -> bool:
    words = shlex.split(command, comments=True)
    return bool(words) and words[0] == "celery" and "worker" in words


# -- every block is marked ----------------------------------------------------------


@pytest.mark.parametrize("page", PAGES, ids=lambda page: str(page.relative_to(ROOT)))
def test_every_runnable_block_runs_or_says_why_not(page):
    unmarked = [block.where() for block in blocks_of(page) if block.kind == "unmarked"]
    assert not unmarked, (
        f"code blocks with neither a file name, 'terminal ...' nor 'not run: why' as their title: {unmarked}"
        " (see docs/contributing.md)"
    )


def test_the_marks_mean_what_the_docs_say():
    # Given one block of each kind
    text = "\n".join(
        [
            '```python title="proj.py"\nx = 1\n```',
            '```bash title="terminal 1: the worker"\ncelery -A proj worker \\\n  --pool solo\n# a note\n\necho ok\n```',
            '```bash title="not run: needs GPUs"\ngpu\n```',
            "```python\nprint('unmarked')\n```",
            "```text\na picture\n```",
        ]
    )
    blocks = blocks_of(Path("example.md"), text)
    # Then each is classified as docs/contributing.md says, and commands join their continuation lines
    assert [block.kind for block in blocks] == ["file", "terminal", "not run", "unmarked", "other"]
    assert commands_of(blocks[1]) == ["celery -A proj worker    --pool solo", "echo ok"]
    assert is_worker(commands_of(blocks[1])[0]) and not is_worker("echo ok")


def test_the_readme_has_its_runnable_quick_start():
    kinds = [(block.kind, block.title) for block in blocks_of(ROOT / "README.md")]
    assert ("file", "proj.py") in kinds and ("file", "client.py") in kinds
    assert sum(kind == "terminal" for kind, _ in kinds) >= 2


# -- and the marked ones run ---------------------------------------------------------

RUN_PAGES = [page for page in PAGES if any(block.kind == "terminal" for block in blocks_of(page))]


@pytest.fixture
def page_env(redis_url) -> dict[str, str]:
    """The reader's shell: this environment's programs first on PATH, the project importable."""
    return {
        **os.environ,
        "REDIS_URL": redis_url,
        "PATH": f"{Path(sys.executable).parent}{os.pathsep}{os.environ.get('PATH', '')}",
        "PYTHONPATH": str(ROOT),
        "PYTHONUNBUFFERED": "1",
        "HF_HUB_OFFLINE": "1",
        "TRANSFORMERS_OFFLINE": "1",
    }


@pytest.fixture
def background() -> Iterator[list[subprocess.Popen]]:
    started: list[subprocess.Popen] = []
    yield started
    for process in reversed(started):
        stop_process(process)


def start_worker(command: str, cwd: Path, env: dict[str, str], log: Path) -> subprocess.Popen:
    with log.open("wb") as out:
        process = subprocess.Popen(["bash", "-c", f"exec {command}"], cwd=cwd, env=env, stdout=out, stderr=out)

    def ready() -> bool:
        if process.poll() is not None:
            raise AssertionError(f"{command!r} exited with {process.returncode}:\n{log.read_text()[-4000:]}")
        return " ready." in log.read_text(errors="replace")

    wait_until(ready, 90, f"{command!r} to log ' ready.' (log: {log})", interval=0.1)
    return process


@pytest.mark.parametrize("page", RUN_PAGES, ids=lambda page: str(page.relative_to(ROOT)))
def test_the_page_runs_as_written(page, tmp_path, page_env, background):
    # Given a scratch directory with the README's files
    scratch = tmp_path / "scratch"
    scratch.mkdir()
    for block in blocks_of(ROOT / "README.md"):
        if block.kind == "file":
            (scratch / block.title).write_text(block.body)
    # When the page's blocks are written and run in order
    for number, block in enumerate(blocks_of(page)):
        if block.kind == "file":
            (scratch / block.title).parent.mkdir(parents=True, exist_ok=True)
            (scratch / block.title).write_text(block.body)
        elif block.kind == "terminal":
            for command in commands_of(block):
                if is_worker(command):
                    log = tmp_path / f"worker-{number}-{len(background)}.log"
                    background.append(start_worker(command, scratch, page_env, log))
                    continue
                # Then every command succeeds
                done = subprocess.run(
                    ["bash", "-c", command],
                    cwd=scratch,
                    env=page_env,
                    capture_output=True,
                    text=True,
                    timeout=180,
                    check=False,
                )
                assert done.returncode == 0, (
                    f"{block.where()}: {command!r} exited with {done.returncode}:\n{done.stdout}\n{done.stderr}"
                )
