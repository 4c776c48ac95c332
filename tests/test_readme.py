"""The README and the docs stay true: examples run, links resolve, commands parse, figures agree.

The README is a short read that points at one results page per area (``docs/results/``) and at
``docs/architecture.md`` for recipes; these tests tie the three together:

- the README's Python examples and every recipe of ``docs/architecture.md`` run as written;
- every relative link (and image) in the README and under ``docs/`` names an existing file, and a
  ``#fragment`` names a heading of the page it points to;
- every ``setflow ...`` command the README shows parses with the real argument parser, and every
  command of the CLI is in the README's command table;
- every number in a README results table appears on a page that section links to (its results
  page, or a design page such as docs/performance.md), and that page carries the section's command;
- every results page is in the index and linked from the README; every results page gives each
  table a command.
"""

from __future__ import annotations

import re
import shlex
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
README = ROOT / "README.md"
DOCS = ROOT / "docs"
RESULTS = DOCS / "results"
#: what a ten-minute read may grow to (the long results live in docs/results/)
MAX_README_LINES = 400


def _text(path: Path) -> str:
    return path.read_text(encoding="utf-8")


def _python_blocks(text: str) -> list[str]:
    return re.findall(r"```python\n(.*?)```", text, flags=re.S)


def _sections(text: str, level: str) -> dict[str, str]:
    """``{heading: body}`` of the headings that start with ``level`` (e.g. ``"### "``)."""
    parts = re.split(rf"^{re.escape(level)}(.+)$", text, flags=re.M)
    return {parts[i].strip(): parts[i + 1] for i in range(1, len(parts), 2)}


def _slug(heading: str) -> str:
    """GitHub's anchor of a markdown heading."""
    s = heading.strip().lower().replace("`", "")
    s = re.sub(r"[^\w\- ]", "", s)
    return s.replace(" ", "-")


def _anchors(path: Path) -> set[str]:
    text = re.sub(r"```.*?```", "", _text(path), flags=re.S)
    return {_slug(h) for h in re.findall(r"^#{1,6} (.+)$", text, flags=re.M)}


def _doc_files() -> list[Path]:
    return [README, *sorted(DOCS.rglob("*.md"))]


# ------------------------------------------------------------------------------------ examples run
def test_readme_python_example_runs(capsys):
    blocks = _python_blocks(_text(README))
    assert blocks, "README must carry a python example"
    exec(compile(blocks[0], "README.md", "exec"), {})
    out = capsys.readouterr().out
    assert "torch.Size([8]) True torch.Size([4, 50, 2])" in out


def test_readme_sets_of_any_size_example_runs(capsys):
    body = _sections(_text(README), "## ")["Sets of any size"]
    (block,) = _python_blocks(body)
    exec(compile(block, "README.md", "exec"), {})
    assert capsys.readouterr().out.splitlines() == ["True torch.Size([3, 70, 2]) [31, 50, 70]", "4 4"]


def test_every_readme_python_block_is_run_by_a_test():
    """Three blocks, each run above or in tests/test_registry.py (the registration example)."""
    text = _text(README)
    blocks = _python_blocks(text)
    registration = _python_blocks(text.split("### Your model in a config and on the command line", 1)[1])[0]
    sets = _python_blocks(_sections(text, "## ")["Sets of any size"])[0]
    assert sorted(blocks) == sorted([blocks[0], registration, sets])


def test_architecture_recipes_run(capsys):
    from setflow.registry import DATASETS, SET_CONDITIONERS

    text = _text(DOCS / "architecture.md")
    recipes = _sections(text, "### ")
    for name in ("Add a set conditioner", "Add a data set", "Add a data source (3-D point clouds)",
                 "Add a sample metric", "Add a codec"):
        assert name in recipes, f"docs/architecture.md lacks the recipe {name!r} the README promises"
    before = {t: set(t.names()) for t in (DATASETS, SET_CONDITIONERS)}
    blocks = _python_blocks(text)
    assert len(blocks) == 4
    try:
        for i, block in enumerate(blocks):
            exec(compile(block, f"docs/architecture.md, python block {i}", "exec"), {})
    finally:
        for table, names in before.items():
            for extra in set(table.names()) - names:
                table.unregister(extra)
    lines = capsys.readouterr().out.splitlines()
    assert lines == ["torch.Size([4])", "data: ring sets (generated, seed 0) (200, 50, 2)",
                     "['1nna', 'cov', 'mmd'] True", "b'a lazy brown dog' 9 34"]


def test_the_codec_recipe_refuses_damaged_files():
    """The recipe's container checks are real: flipped bits, truncations and another model's file
    raise a CodecError, never a wrong decode."""
    import numpy as np

    from setflow.coding.format import CodecError, ModelMismatchError

    block = _python_blocks(_sections(_text(DOCS / "architecture.md"), "### ")["Add a codec"])[0]
    ns: dict = {}
    exec(compile(block, "docs/architecture.md", "exec"), ns)
    codec, data, msg = ns["codec"], ns["data"], ns["msg"]
    assert np.array_equal(codec.decompress(data), msg)
    damaged = [data[:n] for n in range(len(data))]
    for i in range(len(data)):
        for bit in range(8):
            flipped = bytearray(data)
            flipped[i] ^= 1 << bit
            damaged.append(bytes(flipped))
    for bad in damaged:
        with pytest.raises(CodecError):
            codec.decompress(bad)
    with pytest.raises(ModelMismatchError):
        ns["ByteCodec"](np.ones(256)).decompress(data)


# ------------------------------------------------------------------------------------ links
def test_every_link_names_an_existing_file_and_heading():
    problems = []
    for doc in _doc_files():
        text = re.sub(r"```.*?```", "", _text(doc), flags=re.S)
        for target in re.findall(r"\]\(([^)\s]+)\)", text):
            if re.match(r"[a-z]+://", target) or target.startswith("mailto:"):
                continue
            path, _, frag = target.partition("#")
            dest = (doc.parent / path).resolve() if path else doc
            if not dest.exists():
                problems.append(f"{doc.relative_to(ROOT)}: {target} (no such file)")
                continue
            if frag and dest.suffix == ".md" and frag not in _anchors(dest):
                problems.append(f"{doc.relative_to(ROOT)}: {target} (no heading #{frag})")
    assert not problems, "\n".join(problems)


def test_results_index_lists_every_page_and_the_readme_links_them():
    index = _text(RESULTS / "README.md")
    readme = _text(README)
    pages = {p.name for p in RESULTS.glob("*.md") if p.name != "README.md"}
    listed = set(re.findall(r"\]\(([\w.]+\.md)\)", index))
    assert pages <= listed, f"docs/results/README.md lacks {sorted(pages - listed)}"
    linked = set(re.findall(r"\]\(docs/results/([\w.]+\.md)", readme))
    assert pages <= linked, f"README links no section to {sorted(pages - linked)}"
    assert "](docs/results/README.md)" in readme


def test_each_results_page_gives_its_tables_a_command():
    for page in sorted(RESULTS.glob("*.md")):
        if page.name == "README.md":
            continue
        for heading, body in _sections(_text(page), "## ").items():
            if re.search(r"^\|.*\|\s*$", body, flags=re.M):
                assert re.search(r"(setflow \w|python scripts/|make \w)", body), (
                    f"{page.name}, section {heading!r}: a table without the command that produced it")


def test_every_table_has_a_header_and_rows_of_its_width():
    """A table cut out of its header (or a row with a cell lost) renders as plain text."""
    for doc in _doc_files():
        text = re.sub(r"```.*?```", "", _text(doc), flags=re.S)
        for table in re.findall(r"(?:^\|.*\|[ \t]*\n)+", text, flags=re.M):
            rows = [r.replace("\\|", "") for r in table.splitlines()]
            where = f"{doc.relative_to(ROOT)}: table starting {rows[0][:60]!r}"
            assert len(rows) >= 3 and re.fullmatch(r"\|(\s*:?-+:?\s*\|)+", rows[1].strip()), where
            assert {r.count("|") for r in rows} == {rows[0].count("|")}, where


# ------------------------------------------------------------------------------------ the README itself
def test_readme_is_a_short_read_with_one_results_section_per_area():
    text = _text(README)
    assert len(text.splitlines()) <= MAX_README_LINES, "move long results to docs/results/"
    results = _sections(text.split("## Results", 1)[1].split("\n## ", 1)[0], "### ")
    assert set(results) == {"SpatialMNIST beside the papers", "Sample quality", "3-D point clouds", "Image flows",
                            "IDF codec", "Set codec", "Toy densities", "Throughput"}


def _readme_commands(text: str) -> list[str]:
    """Every ``setflow ...`` command line of the README's code blocks and inline examples."""
    out = []
    for block in re.findall(r"```(?:bash)?\n(.*?)```", text, flags=re.S):
        for line in block.replace("\\\n", " ").splitlines():
            line = re.sub(r"^\S+=\S+ ", "", line.strip())  # an environment assignment in front
            if line.startswith("setflow "):
                out.append(line)
    out += re.findall(r"`(setflow [^`]+)`", re.sub(r"```.*?```", "", text, flags=re.S))
    return out


def _argv(line: str) -> list[str]:
    line = line.replace("[", " ").replace("]", " ")  # optional parts shown in brackets: parse them too
    return shlex.split(line, comments=True)[1:]


def test_every_readme_command_parses_and_every_cli_command_is_shown():
    from setflow.cli import build_parser

    parser = build_parser()
    text = _text(README)
    commands = _readme_commands(text)
    assert len(commands) >= 25
    for line in commands:
        argv = _argv(line)
        if {"COMMAND", "CMD:", "NAME"} & set(argv):  # a pattern, not an example: "setflow data NAME"
            continue
        if len(argv) == 1 and argv[0] in parser._subparsers._group_actions[0].choices:
            continue  # the command named in a sentence, not an example
        try:
            parser.parse_args(argv)
        except SystemExit as e:
            raise AssertionError(f"README command does not parse: {line!r}") from e
    sub = next(a for a in parser._actions if a.__class__.__name__ == "_SubParsersAction")
    table = re.findall(r"^\| `(\w+)` \|", text, flags=re.M)
    assert sorted(table) == sorted(sub.choices), "the README's command table must list every CLI command"
    shown = {_argv(c)[0] for c in commands}
    assert set(sub.choices) <= shown, f"no example for {sorted(set(sub.choices) - shown)}"


def _numbers(row: str) -> list[str]:
    cells = row.strip().strip("|").split("|")[1:]  # the first cell names the row
    return [n for cell in cells for n in re.findall(r"-?\d[\d,]*(?:\.\d+)?%?", cell.replace("*", ""))]


def test_readme_results_tables_agree_with_their_pages():
    text = _text(README)
    results = _sections(text.split("## Results", 1)[1].split("\n## ", 1)[0], "### ")
    for heading, body in results.items():
        pages = [DOCS / name for name in re.findall(r"\]\(docs/((?:results/)?[\w.]+\.md)", body)]
        pages = [p for p in pages if p.exists()]
        assert any(p.parent == RESULTS for p in pages), f"README results section {heading!r} links no results page"
        page_text = " ".join(re.sub(r"\s+", " ", _text(p).replace("\\\n", " ")) for p in pages)
        rows = [r for r in body.splitlines() if r.startswith("|") and not re.match(r"^\|[-:| ]+\|$", r)]
        assert len(rows) >= 3, f"{heading!r}: expected a table"
        for row in rows[1:]:
            for number in _numbers(row):
                assert number in page_text, f"README {heading!r}: {number} of row {row!r} is on no linked page"
        (command,) = re.findall(r"^Command: `([^`]+)`", body, flags=re.M)
        assert re.sub(r"\s+", " ", command) in page_text, f"README {heading!r}: the command is not on its page"
