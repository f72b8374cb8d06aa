"""The README's set-up commands: two of them, each in a virtual environment, torch pinned, CI runs the second."""

from __future__ import annotations

import re
import shlex
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
TORCH_PIN = "torch==2.13.0"


def _setup_commands() -> list[str]:
    """The fenced ``bash`` blocks of the README's "Set-up" section."""
    text = (ROOT / "README.md").read_text(encoding="utf-8")
    section = re.search(r"^## Set-up.*?(?=^## )", text, flags=re.MULTILINE | re.DOTALL)
    assert section is not None, "README.md has no '## Set-up' section"
    return [block.strip() for block in re.findall(r"```bash\n(.*?)```", section.group(0), flags=re.DOTALL)]


def _parts(command: str) -> list[list[str]]:
    """The ``&&``-joined simple commands of a one-line shell command, each split into words."""
    assert "\n" not in command, f"expected one line, found {command!r}"
    return [shlex.split(part) for part in command.split("&&")]


def _is_pip_install(words: list[str]) -> bool:
    return "install" in words and any(w == "pip" or w.endswith("/pip") for w in words)


def test_readme_has_exactly_two_setup_commands() -> None:
    commands = _setup_commands()
    assert len(commands) == 2, commands
    assert "mriquant run src/mriquant/data/demo/chris_t1.nii.gz" in commands[0]
    assert "pytest" in commands[1] and "ruff check" in commands[1] and "mypy" in commands[1]


@pytest.mark.parametrize("index", [0, 1])
def test_setup_command_installs_into_a_fresh_virtual_environment(index: int) -> None:
    """A venv is created and used before the first pip install (Debian 12: externally-managed-environment)."""
    parts = _parts(_setup_commands()[index])
    creates = [i for i, w in enumerate(parts) if w[:3] == ["python3", "-m", "venv"]]
    assert creates, "the command creates no virtual environment"
    venv = parts[creates[0]][-1]
    activate = f"{venv}/bin/activate"
    activates = [i for i, w in enumerate(parts) if w in ([".", activate], ["source", activate])]
    installs = [i for i, w in enumerate(parts) if _is_pip_install(w)]
    assert installs, "the command installs nothing"
    for i in installs:
        in_venv = parts[i][0].startswith(f"{venv}/bin/") or any(a < i for a in activates)
        assert creates[0] < i and in_venv, f"pip install outside {venv}: {' '.join(parts[i])}"


@pytest.mark.parametrize("index", [0, 1])
def test_every_torch_install_is_pinned(index: int) -> None:
    parts = _parts(_setup_commands()[index])
    torch = [w for w in parts if _is_pip_install(w) and any(re.match(r"torch\b", a) for a in w)]
    assert torch, "the command does not install torch first (pip would pick any torch for mriquant)"
    for words in torch:
        assert [a for a in words if re.match(r"torch\b", a)] == [TORCH_PIN], words


def test_ci_runs_the_readme_test_command_verbatim() -> None:
    lines = (ROOT / ".ci" / "run").read_text(encoding="utf-8").splitlines()
    assert _setup_commands()[1] in lines
