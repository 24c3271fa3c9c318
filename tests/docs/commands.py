"""The shell commands of README.md and docs/*.md, their marks, and a dry run of each.

A command is one logical line of a ``bash``/``sh``/``shell``/``console`` code block (``\\``
continuations joined, a ``$ `` prompt dropped; in ``console`` blocks only prompted lines are
commands), marked at its end by a comment ending in ``[run]``, ``[dry-run]``, ``[ci]`` or
``[none]``. A ``python <script>.py ...`` quoted in running text is a command too, always a dry run,
unless it holds a placeholder (``<name>``, ``[...]``, ``...``).

A dry run executes the command in this process up to its argument parsing (:func:`dry_run`): a
Hydra app gets ``--cfg job --resolve`` (its config composed, resolved and printed; ``-m`` dropped),
a parser with a ``--dry-run`` option gets that option and the script runs on, any other argparse
parser stops the script once it has accepted the arguments. ``torchrun`` is parsed by its own
parser and its training script dry-run; ``sbatch`` checks its batch script with ``bash -n`` and
dry-runs the Python script that the batch script hands its arguments to.
"""

from __future__ import annotations

import argparse
import contextlib
import io
import re
import runpy
import shlex
import subprocess
import sys
from collections.abc import Iterator
from dataclasses import dataclass
from importlib.metadata import entry_points
from pathlib import Path
from typing import Any

import pytest

ROOT = Path(__file__).resolve().parents[2]
DOCS = (ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md")))
MARKS = ("run", "dry-run", "ci", "none")
SHELL_BLOCKS = {"bash", "sh", "shell", "console"}

_FENCE = re.compile(r"^\s*(```+|~~~+)\s*([\w-]*)")
_MARK = re.compile(r"\[(" + "|".join(map(re.escape, MARKS)) + r")\]\s*$")
_INLINE = re.compile(r"(?<!`)`([^`]+)`(?!`)")
_INLINE_SCRIPT = re.compile(r"^python \S+\.py\b")
_PLACEHOLDER = re.compile(r"<[^>]*>|\[|\.\.\.")
_ENV = re.compile(r"^[A-Za-z_][A-Za-z0-9_]*=")
_FORWARD = re.compile(r"python (\S+\.py) \"\$@\"")  # a batch script handing its arguments to a Python script
_PARSE_METHODS = ("parse_args", "parse_known_args", "parse_intermixed_args", "parse_known_intermixed_args")
HYDRA_PARSER = "Hydra"  # the description of Hydra's own parser (hydra._internal.utils.get_args_parser)


@dataclass(frozen=True)
class Command:
    """One documented command: where it is (``file:line``), its text without the comment, its mark."""

    source: str
    text: str
    mark: str | None


class Parsed(Exception):
    """A script's argument parser accepted the command's arguments: ``namespace`` is what it parsed."""

    def __init__(self, namespace: argparse.Namespace) -> None:
        super().__init__("parsed")
        self.namespace = namespace


class DryRunError(AssertionError):
    """A command failed its dry run; the message holds its output."""


def _split_comment(line: str) -> tuple[str, str]:
    """``(command, comment)``: the comment starts at the first ``#`` outside quotes after a blank."""
    for match in re.finditer(r"(?:^|\s)#", line):
        head = line[: match.start()]
        try:
            shlex.split(head)
        except ValueError:  # the '#' is inside quotes
            continue
        return head.rstrip(), line[match.end() :]
    return line.rstrip(), ""


def _logical_lines(lines: list[tuple[int, str]], console: bool) -> Iterator[tuple[int, str]]:
    """A block's command lines, continuations joined, prompts dropped: ``(first line number, text)``."""
    start, pieces = 0, []
    for number, raw in lines:
        line = raw.strip()
        if not pieces:
            if line.startswith("$ "):
                line = line[2:]
            elif console or not line or line.startswith("#"):
                continue
            start = number
        if line.endswith("\\"):
            pieces.append(line[:-1].strip())
            continue
        yield start, " ".join([*pieces, line])
        pieces = []


def _shown(path: Path) -> Path:
    """A doc's path as commands name it: relative to the repository where it is inside it."""
    return path.relative_to(ROOT) if path.is_relative_to(ROOT) else path


def block_commands(path: Path, text: str) -> list[Command]:
    """The commands of the shell code blocks of one Markdown file."""
    relative = _shown(path)
    commands: list[Command] = []
    block: list[tuple[int, str]] | None = None
    fence = language = ""
    for number, line in enumerate(text.splitlines(), start=1):
        match = _FENCE.match(line)
        if block is None and match:
            block, fence, language = [], match.group(1), match.group(2).lower()
        elif block is not None and line.strip().startswith(fence) and not line.strip().strip(fence[0]):
            if language in SHELL_BLOCKS:
                for start, logical in _logical_lines(block, console=language == "console"):
                    command, comment = _split_comment(logical)
                    mark = _MARK.search(comment)
                    commands.append(Command(f"{relative}:{start}", command, mark.group(1) if mark else None))
            block = None
        elif block is not None:
            block.append((number, line))
    return commands


def inline_commands(path: Path, text: str) -> list[Command]:
    """``python <script>.py ...`` quoted in running text (outside code blocks), without placeholders."""
    relative = _shown(path)
    prose = re.sub(
        r"^\s*(```+|~~~+).*?^\s*\1\s*$", lambda m: "\n" * m.group(0).count("\n"), text, flags=re.DOTALL | re.MULTILINE
    )
    commands = []
    for match in _INLINE.finditer(prose):
        span = " ".join(match.group(1).split())
        if _INLINE_SCRIPT.match(span) and not _PLACEHOLDER.search(span):
            line = prose.count("\n", 0, match.start()) + 1
            commands.append(Command(f"{relative}:{line}", span, "dry-run"))
    return commands


def documented_commands(paths: tuple[Path, ...] = DOCS) -> list[Command]:
    """Every command of the docs, in order: README.md first, then docs/*.md by name."""
    commands: list[Command] = []
    for path in paths:
        text = path.read_text()
        commands += block_commands(path, text) + inline_commands(path, text)
    return commands


def segments(text: str) -> list[list[str]]:
    """The ``&&``-separated commands of a line as argument lists; any other shell operator is an error."""
    lexer = shlex.shlex(text, posix=True, punctuation_chars=True)
    lexer.whitespace_split = True
    lexer.commenters = ""
    parts: list[list[str]] = [[]]
    for token in lexer:
        if token == "&&":
            parts.append([])
        elif token and set(token) <= set("();<>|&"):
            raise ValueError(f"{text!r}: the shell operator {token!r} (a placeholder such as <run>?) cannot be checked")
        else:
            parts[-1].append(token)
    if not all(parts):
        raise ValueError(f"{text!r}: an empty command around '&&'")
    return parts


def split_env(argv: list[str]) -> tuple[dict[str, str], list[str]]:
    """Leading ``NAME=value`` assignments and the command after them."""
    count = next((i for i, arg in enumerate(argv) if not _ENV.match(arg)), len(argv))
    return dict(arg.split("=", 1) for arg in argv[:count]), argv[count:]


def shell_line(parts: list[list[str]]) -> str:
    """Argument lists as one ``&&`` shell line (assignments quoted after their ``=``)."""

    def word(arg: str) -> str:
        if _ENV.match(arg):
            name, value = arg.split("=", 1)
            return f"{name}={shlex.quote(value)}"
        return shlex.quote(arg)

    return " && ".join(" ".join(map(word, part)) for part in parts)


def is_install(argv: list[str]) -> bool:
    """Whether a command installs packages (``pip install``, ``python -m pip install``)."""
    _, argv = split_env(argv)
    return argv[:2] == ["pip", "install"] or argv[:4] == ["python", "-m", "pip", "install"]


def local_extras(argv: list[str]) -> set[str]:
    """The extras an install command asks of this checkout (``.[dev]``, ``".[a,b]"``)."""
    extras: set[str] = set()
    for arg in argv:
        match = re.fullmatch(r"\.\[([\w,\s-]+)\]", arg)
        if match:
            extras |= {extra.strip() for extra in match.group(1).split(",")}
    return extras


def _dry_hydra_args(args: list[str]) -> list[str]:
    return [arg for arg in args if arg not in ("-m", "--multirun")] + ["--cfg", "job", "--resolve"]


@contextlib.contextmanager
def stop_after_parsing() -> Iterator[None]:
    """Make every argparse parser stop the program once it accepted its arguments (raising
    :class:`Parsed`), except Hydra's (which gets ``--cfg job --resolve``) and parsers with a
    ``--dry-run`` option (which get it and return)."""
    originals = {name: getattr(argparse.ArgumentParser, name) for name in _PARSE_METHODS}
    depth = 0

    def patched(name: str):
        def parse(self: argparse.ArgumentParser, args: list[str] | None = None, namespace: Any = None) -> Any:
            nonlocal depth
            outermost = depth == 0
            passthrough = self.description == HYDRA_PARSER or "--dry-run" in self._option_string_actions
            if outermost:
                args = list(sys.argv[1:] if args is None else args)
                if self.description == HYDRA_PARSER:
                    args = _dry_hydra_args(args)
                elif "--dry-run" in self._option_string_actions:
                    args.append("--dry-run")
            depth += 1
            try:
                result = originals[name](self, args, namespace)
            finally:
                depth -= 1
            if outermost and not passthrough:
                raise Parsed(result if isinstance(result, argparse.Namespace) else result[0])
            return result

        return parse

    try:
        for name in _PARSE_METHODS:
            setattr(argparse.ArgumentParser, name, patched(name))
        yield
    finally:
        for name, method in originals.items():
            setattr(argparse.ArgumentParser, name, method)


def _in_process(
    target: Any, argv0: str, args: list[str], env: dict[str, str], path: Path | None
) -> argparse.Namespace | None:
    """Call ``target()`` with ``sys.argv = [argv0, *args]`` in the repository root, parse-only;
    the namespace a parser stopped with (``None`` if the program ran to its end)."""
    output = io.StringIO()
    with pytest.MonkeyPatch.context() as patch:
        patch.chdir(ROOT)
        patch.setattr(sys, "argv", [argv0, *args])
        for name, value in env.items():
            patch.setenv(name, value)
        if path is not None:
            patch.syspath_prepend(str(path.parent))
        try:
            with stop_after_parsing(), contextlib.redirect_stdout(output), contextlib.redirect_stderr(output):
                result = target()
        except Parsed as parsed:
            return parsed.namespace
        except SystemExit as exit_:
            if exit_.code not in (0, None):
                raise DryRunError(f"{shlex.join([argv0, *args])}: exit {exit_.code}\n{output.getvalue()}") from None
            return None
        except Exception as error:
            raise DryRunError(f"{shlex.join([argv0, *args])}: {error!r}\n{output.getvalue()}") from error
    if result not in (0, None):
        raise DryRunError(f"{shlex.join([argv0, *args])}: returned {result!r}\n{output.getvalue()}")
    return None


def _run(run: Any, target: str, **options: Any) -> None:
    """Run a module or file as ``__main__`` (:mod:`runpy`), returning nothing."""
    run(target, run_name="__main__", **options)


def _python(args: list[str], env: dict[str, str]) -> argparse.Namespace | None:
    if args[:1] == ["-m"] and len(args) > 1:
        module, rest = args[1], args[2:]
        return _in_process(lambda: _run(runpy.run_module, module, alter_sys=True), module, rest, env, None)
    if not args or not args[0].endswith(".py"):
        raise DryRunError(f"python {shlex.join(args)}: no dry run for this form (a script or -m module)")
    path = ROOT / args[0]
    if not path.is_file():
        raise DryRunError(f"python {shlex.join(args)}: no file {args[0]} in the repository")
    return _in_process(lambda: _run(runpy.run_path, str(path)), args[0], args[1:], env, path)


def _sbatch(args: list[str], env: dict[str, str]) -> None:
    """``sbatch [--option=value ...] script args``: ``bash -n`` of the script, then its Python command."""
    script = next((arg for arg in args if not arg.startswith("-")), None)
    if script is None or not (ROOT / script).is_file():
        raise DryRunError(f"sbatch {shlex.join(args)}: no batch script in the repository")
    _bash_syntax(ROOT / script)
    forward = _FORWARD.search((ROOT / script).read_text())
    if forward is None:
        raise DryRunError(f"{script}: no 'python <script>.py \"$@\"' line, so its arguments cannot be checked")
    _python([forward.group(1), *args[args.index(script) + 1 :]], env)


def _bash_syntax(path: Path) -> None:
    checked = subprocess.run(["bash", "-n", str(path)], capture_output=True, text=True, check=False)
    if checked.returncode:
        raise DryRunError(f"bash -n {path}: {checked.stderr}")


def _console_script(name: str, args: list[str], env: dict[str, str]) -> None:
    """An installed console script (``torchrun``, ...), in this process; a launcher's training
    script (``training_script``, ``training_script_args``, as torchrun parses them) is dry-run too."""
    found = entry_points(group="console_scripts", name=name)
    if not found:
        raise DryRunError(f"{name}: no dry run for this program (mark the command [none] if it cannot be checked)")
    namespace = _in_process(next(iter(found)).load(), name, args, env, None)
    script = getattr(namespace, "training_script", None)
    if script is not None:
        _python([script, *namespace.training_script_args], env)


def dry_run(argv: list[str]) -> None:
    """Dry-run one command (an argument list); :class:`DryRunError` if it fails."""
    env, argv = split_env(argv)
    program, args = argv[0], argv[1:]
    if program == "python":
        _python(args, env)
    elif program == "sbatch":
        _sbatch(args, env)
    elif program == "bash" and args:
        _bash_syntax(ROOT / args[0])
    else:
        _console_script(program, args, env)
