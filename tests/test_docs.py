"""README.md and docs/*.md stay true to the code: their commands parse, their links lead somewhere.

Every `karp-robust ...` command in a code block (a `$ ` prompt, `\\` continuations, a trailing `...`
and `torchrun|python -m robustbench_karp ...` forms included) goes through the real parser
(robustbench_karp/cli/parser.py) with abbreviations off, so a renamed or removed flag fails here.
Nothing runs. Also: every relative link (and its #anchor) exists, the README's commands table names
every command of the parser, and benchmarks/first_run.py still finds the sample it rewrites.
"""

from __future__ import annotations

import argparse
import contextlib
import importlib.util
import io
import re
import shlex
from pathlib import Path

import pytest

from robustbench_karp.cli.parser import build_parser

REPO = Path(__file__).resolve().parents[1]
PAGES = [REPO / "README.md", *sorted((REPO / "docs").glob("*.md"))]
FENCE = re.compile(r"^```[^\n]*\n(.*?)^```[ \t]*$", re.S | re.M)
SEPARATORS = {"&&", "||", ";", "|"}


def code_blocks(text: str) -> list[str]:
    return FENCE.findall(text)


def logical_lines(block: str) -> list[str]:
    """The block's lines with `\\` continuations joined."""
    return re.sub(r"\\\n", " ", block).splitlines()


def cli_args(tokens: list[str]) -> list[str] | None:
    """The arguments after `karp-robust` or `torchrun/python -m robustbench_karp`, or None for another command."""
    while tokens and (tokens[0] == "$" or re.fullmatch(r"[A-Z_][A-Z0-9_]*=\S*", tokens[0])):
        tokens = tokens[1:]  # a prompt, environment assignments
    if not tokens:
        return None
    if tokens[0] == "karp-robust":
        args = tokens[1:]
    elif tokens[0] in ("torchrun", "python", "python3") and "robustbench_karp" in tokens:
        at = tokens.index("robustbench_karp")
        args = tokens[at + 1:] if tokens[at - 1] == "-m" else None
    else:
        return None
    while args and args[-1] == "...":  # "and the rest of the command"
        args = args[:-1]
    return args


def documented_commands() -> list[tuple[str, str, list[str]]]:
    """(page name, the line, its karp-robust arguments) for every command in a code block of README.md or docs/."""
    found = []
    for page in PAGES:
        for block in code_blocks(page.read_text()):
            for line in logical_lines(block):
                if "karp-robust" not in line and "robustbench_karp" not in line:
                    continue
                try:
                    tokens = shlex.split(line, comments=True)
                except ValueError:  # output, not a command: `karp-robust: error: ... ` with a lone quote
                    continue
                segment: list[str] = []
                for token in [*tokens, "&&"]:
                    if token not in SEPARATORS:
                        segment.append(token)
                        continue
                    args = cli_args(segment)
                    if args is not None:
                        found.append((page.name, line.strip(), args))
                    segment = []
    return found


def strict(parser: argparse.ArgumentParser) -> argparse.ArgumentParser:
    """No prefix matching, in every subparser: `--n-example` must not pass for `--n-examples`."""
    parser.allow_abbrev = False
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            for sub in action.choices.values():
                strict(sub)
    return parser


def parse_failures(parser: argparse.ArgumentParser) -> list[str]:
    failures = []
    for page, line, args in documented_commands():
        err = io.StringIO()
        try:
            with contextlib.redirect_stderr(err), contextlib.redirect_stdout(io.StringIO()):
                parser.parse_args(args)
        except SystemExit as e:
            if e.code:
                failures.append(f"{page}: {line}\n    {err.getvalue().strip()}")
    return failures


def test_the_docs_hold_commands_of_every_kind():
    commands = documented_commands()
    assert len(commands) >= 40
    firsts = {args[0] for _, _, args in commands}
    assert {"evaluate", "train", "compare", "leaderboard", "reproduce", "records", "data"} <= firsts
    assert any(line.startswith("torchrun") for _, line, _ in commands)


def test_every_documented_command_parses():
    failures = parse_failures(strict(build_parser()))
    assert not failures, "documented commands the parser refuses:\n" + "\n".join(failures)


def test_a_renamed_flag_fails_the_check(monkeypatch):
    add_argument = argparse._ActionsContainer.add_argument

    def renamed(self, *names, **kwargs):
        return add_argument(self, *["--n-points" if n == "--n-examples" else n for n in names], **kwargs)

    monkeypatch.setattr(argparse._ActionsContainer, "add_argument", renamed)
    failures = parse_failures(strict(build_parser()))
    assert failures and all("--n-examples" in failure for failure in failures)


def parser_commands() -> set[tuple[str, str | None]]:
    """(command, action or None) for every subcommand the parser knows."""
    commands = set()
    top = next(a for a in build_parser()._actions if isinstance(a, argparse._SubParsersAction))
    for name, sub in top.choices.items():
        actions = [a for a in sub._actions if isinstance(a, argparse._SubParsersAction)]
        commands |= {(name, action) for action in actions[0].choices} if actions else {(name, None)}
    return commands


def test_the_readme_commands_table_names_every_command():
    text = (REPO / "README.md").read_text()
    table = text[text.index("## Commands"):].split("\n## ")[0]
    listed = set()
    for cell in re.findall(r"^\| `karp-robust ([^`]+)`", table, flags=re.M):
        command, *rest = cell.replace("/", " ").split()
        listed |= {(command, None)} | {(command, word) for word in rest}
    missing = sorted(f"{c} {a or ''}".strip() for c, a in parser_commands() if (c, a) not in listed)
    assert not missing, f"README.md's commands table lacks: {', '.join(missing)}"


def slug(heading: str) -> str:
    """GitHub's anchor for a heading: lower case, punctuation dropped, spaces to hyphens."""
    return re.sub(r"[^\w\- ]", "", heading.strip().lower()).replace(" ", "-")


def anchors(page: Path) -> set[str]:
    text = FENCE.sub("", page.read_text())
    return {slug(h) for h in re.findall(r"^#+ (.+)$", text, flags=re.M)}


def relative_links(page: Path) -> list[str]:
    prose = re.sub(r"`[^`\n]*`", "", FENCE.sub("", page.read_text()))  # links in code are not links
    return [t for t in re.findall(r"\]\(([^)\s]+)\)", prose) if not re.match(r"[a-z]+:", t)]


@pytest.mark.parametrize("page", PAGES, ids=lambda p: p.name)
def test_relative_links_lead_to_files_and_headings(page):
    broken = []
    for target in relative_links(page):
        path, _, anchor = target.partition("#")
        file = (page.parent / path).resolve() if path else page
        if not file.exists():
            broken.append(f"{target}: no such file")
        elif anchor and file.suffix == ".md" and anchor not in anchors(file):
            broken.append(f"{target}: no heading #{anchor} in {file.name}")
    assert not broken, f"{page.name}: " + "; ".join(broken)


def test_the_readme_links_every_docs_page_and_stays_short():
    readme = REPO / "README.md"
    linked = {(REPO / t.partition("#")[0]).resolve() for t in relative_links(readme)}
    assert [p.name for p in PAGES[1:] if p.resolve() not in linked] == []
    assert len(readme.read_text().splitlines()) <= 250, "README.md is over 250 lines: move the detail into docs/"


def test_first_run_benchmark_finds_the_sample_it_rewrites():
    spec = importlib.util.spec_from_file_location("first_run", REPO / "benchmarks" / "first_run.py")
    first_run = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(first_run)
    (sample,) = first_run.SAMPLE.findall((REPO / "README.md").read_text())
    assert "record " in sample[1] and re.match(r"Measured \d{4}-\d{2}-\d{2} \(", sample[3])
