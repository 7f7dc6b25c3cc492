"""The user's pages: the README is a short user page, and the references in docs/ are what the code generates."""

from __future__ import annotations

import re
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]


def _generate():
    sys.path.insert(0, str(ROOT / "docs"))
    try:
        import generate
    finally:
        sys.path.remove(str(ROOT / "docs"))
    return generate


@pytest.mark.parametrize("page", ["spec.md", "cli.md"])
def test_a_generated_reference_is_what_the_code_generates(page):
    """Fails when a spec key, bound, default, knob or flag changed without `.venv/bin/python docs/generate.py`."""
    generate = _generate()
    assert (ROOT / "docs" / page).read_text() == generate.PAGES[page](), \
        f"docs/{page} differs from the code: run .venv/bin/python docs/generate.py"


def test_the_spec_reference_names_every_section_key_and_knob():
    import dataclasses

    from autoprune.config import sections
    from autoprune.config.spec import SearchSpec
    from autoprune.model import knobs

    text = (ROOT / "docs" / "spec.md").read_text()
    for f in dataclasses.fields(SearchSpec):
        if f.name != "studies_dir":
            assert f"| `{f.name}` |" in text
    for f in dataclasses.fields(sections.Budget):
        assert f"`budget.{f.name}`" in text
    for k in knobs.knobs():
        assert f"`space.{k.key}`" in text


def test_the_cli_reference_states_each_bounded_flags_bounds_as_its_parser_checks_them():
    """A bounded flag's row says what its parser accepts (the same Checked object refuses the next value)."""
    import argparse

    from autoprune.cli import build_parser
    from autoprune.cli_args import Checked

    text = (ROOT / "docs" / "cli.md").read_text()
    assert "| `--lr` | initial learning rate (default: the trial's) | a finite number in (0, 1] |" in text
    sub = next(a for a in build_parser()._actions if isinstance(a, argparse._SubParsersAction))
    bounded = [a for p in sub.choices.values() for a in p._actions if isinstance(a.type, Checked)]
    assert len(bounded) >= 10
    for a in bounded:
        assert f"| {a.type.accepts} |" in text
    with pytest.raises(argparse.ArgumentTypeError, match=r"must be .*\(0, 1\], got 1e30"):
        next(a for a in bounded if a.option_strings == ["--lr"]).type("1e30")


def test_the_readme_is_a_users_page():
    text = (ROOT / "README.md").read_text()
    lines = text.splitlines()
    assert len(lines) <= 250
    first = "\n".join(lines[:30])
    assert "make demo" in first and "make test" in first  # install + demo and the tests on the first screen
    assert "§" not in text and not re.search(r"\b[0-9a-f]{7,40}\b", text)  # no section refs, no commit hashes
    for target in re.findall(r"\]\(([^)#]+)\)", text):
        if not target.startswith("http"):
            assert (ROOT / target).exists(), target


def test_the_docs_link_only_to_pages_that_exist():
    for page in (ROOT / "docs").glob("*.md"):
        for target in re.findall(r"\]\(([^)#]+)\)", page.read_text()):
            if not target.startswith("http"):
                assert (page.parent / target).exists(), (page.name, target)


def test_every_benchmark_result_is_marked_current_or_superseded():
    import json

    results = ROOT / "benchmarks" / "results"
    index = json.loads((results / "index.json").read_text())["files"]
    on_disk = {p.name for p in results.iterdir() if p.name != "index.json"}
    assert set(index) == on_disk, sorted(on_disk ^ set(index))
    for name, entry in index.items():
        assert entry["status"] in ("current", "superseded"), name
        assert entry.get("why" if entry["status"] == "superseded" else "what"), name
