"""The chapters as a reader sees them (see ``reader.py`` for what each check means).

The first half runs every check on every chapter in ``_quarto.yml``; the second half checks the
checkers on small synthetic notebooks, so that a check that cannot fail is caught too.
"""

from __future__ import annotations

import base64
import io
import sys
from pathlib import Path

import numpy as np
import pytest
from nbformat.v4 import new_code_cell, new_markdown_cell, new_notebook, new_output

sys.path.insert(0, str(Path(__file__).resolve().parent))
import book  # noqa: E402
import reader  # noqa: E402

NOTEBOOKS = book.listed_or_empty("notebooks")
CHECKS = {
    "figures": reader.figure_problems,
    "crossref-targets": reader.crossref_target_problems,
    "shown-prose": reader.shown_prose_problems,
    "scaffolding": reader.scaffolding_problems,
}


@pytest.mark.parametrize("check", CHECKS)
@pytest.mark.parametrize("rel", NOTEBOOKS)
def test_chapter_as_a_reader_sees_it(rel, check):
    path = book.ROOT / rel
    if not path.is_file():
        pytest.skip(f"{rel} is listed but missing (see test_book.py::test_listed_files_exist)")
    problems = CHECKS[check](book.read_notebook(path), rel)
    assert not problems, "\n".join(problems)


def test_every_chapter_has_figures():
    """A chapter of this book without a single image is a rendering accident, not a choice."""
    empty = []
    for rel in NOTEBOOKS:
        nb = book.read_notebook(book.ROOT / rel)
        images = sum(
            "image/png" in out.get("data", {}) for c in nb.cells for out in c.get("outputs", [])
        )
        if images == 0 and "primer" not in rel:
            empty.append(rel)
    assert not empty, f"chapters without a single image output: {empty}"


# =============================================================================================
# The checkers themselves
# =============================================================================================


def _png(pixels: np.ndarray) -> str:
    from PIL import Image

    buf = io.BytesIO()
    Image.fromarray(pixels.astype(np.uint8)).save(buf, format="PNG")
    return base64.b64encode(buf.getvalue()).decode()


@pytest.fixture(scope="module")
def figure_png():
    """A real matplotlib figure, small but readable."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(3, 2), dpi=80)
    ax.plot(np.linspace(0, 1, 50), np.linspace(0, 1, 50) ** 2)
    ax.set_xlabel("x")
    ax.set_ylabel("y")
    buf = io.BytesIO()
    fig.savefig(buf, format="png")
    plt.close(fig)
    return base64.b64encode(buf.getvalue()).decode()


def _figure_cell(png: str | None, label="fig-a", extra=""):
    outputs = [] if png is None else [
        new_output("display_data", data={"image/png": png, "text/plain": "<Figure>"})
    ]
    return new_code_cell(
        f'#| label: {label}\n#| fig-cap: "A."\n{extra}plot()', execution_count=1, outputs=outputs
    )


def _nb(*cells):
    nb = new_notebook()
    nb.cells = list(cells)
    return nb


def test_figure_checker(figure_png):
    assert reader.figure_problems(_nb(_figure_cell(figure_png))) == []
    problems = reader.figure_problems(_nb(_figure_cell(None)), "ch")
    assert problems == [
        "ch cell 0: figure cell 'fig-a' has no image or animation output (re-execute with the "
        "inline backend, never with MPLBACKEND=Agg)"
    ]
    # A hidden figure cell shows nothing by design.
    assert reader.figure_problems(_nb(_figure_cell(None, extra="#| include: false\n"))) == []

    white = np.full((200, 300, 3), 255)
    assert "single colour" in reader.figure_problems(_nb(_figure_cell(_png(white))))[0]
    speck = white.copy()
    speck[100, 150] = 0
    assert "blank" in reader.figure_problems(_nb(_figure_cell(_png(speck))))[0]
    noise = np.random.default_rng(0).integers(0, 256, (40, 60, 3))
    assert "smaller than" in reader.figure_problems(_nb(_figure_cell(_png(noise))))[0]
    assert "does not decode" in reader.figure_problems(_nb(_figure_cell("bm90IGEgcG5n")))[0]


def test_figure_checker_accepts_animations():
    player = (
        '<script>var frames = new Array(2);\nframes[0] = "data:image/png;base64,AAAA";\n'
        "var anim = new Animation(frames, 'a', 50);</script>"
    )
    cell = new_code_cell('#| label: fig-anim\n#| fig-cap: "A."\nHTML(a)', execution_count=1,
                         outputs=[new_output("display_data", data={"text/html": player})])
    assert reader.figure_problems(_nb(cell)) == []


def test_crossref_target_checker(figure_png):
    prose = new_markdown_cell("As @fig-a shows, and @tbl-b lists.")
    table = new_code_cell('#| label: tbl-b\n#| tbl-cap: "B."\nshow()', execution_count=2,
                          outputs=[new_output("display_data", data={"text/markdown": "|a|\n|-|"})])
    assert reader.crossref_target_problems(_nb(prose, _figure_cell(figure_png), table)) == []
    problems = reader.crossref_target_problems(_nb(prose, _figure_cell(None), table), "ch")
    assert problems == ["ch cell 0: @fig-a points at cell 1, which shows nothing to a reader"]
    empty_table = new_code_cell('#| label: tbl-b\n#| tbl-cap: "B."\nshow()', execution_count=2)
    problems = reader.crossref_target_problems(_nb(prose, _figure_cell(figure_png), empty_table))
    assert len(problems) == 1 and "@tbl-b" in problems[0]
    # References inside computed prose count too.
    computed = new_code_cell("#| echo: false\nsay()", execution_count=3, outputs=[
        new_output("display_data", data={"text/markdown": "See @fig-a."})])
    assert len(reader.crossref_target_problems(_nb(computed, _figure_cell(None)))) == 1


def test_shown_prose_checker():
    def prose_cell(source, text):
        return new_code_cell(source, execution_count=1, outputs=[
            new_output("display_data", data={"text/markdown": text, "text/plain": "<Markdown>"})])

    shown = prose_cell('display(Markdown(f"The error is {e:.2f}."))', "The error is 0.10.")
    problems = reader.shown_prose_problems(_nb(shown), "ch")
    assert problems == [
        "ch cell 0: writes prose with Markdown(...) and shows its code; "
        "add '#| echo: false'"
    ]
    hidden = prose_cell('#| echo: false\ndisplay(Markdown(f"The error is {e:.2f}."))', "x")
    assert reader.shown_prose_problems(_nb(hidden)) == []
    table = prose_cell('#| label: tbl-a\ndisplay(Markdown(rows))', "| a | b |\n|---|---|\n| 1 | 2 |")
    assert reader.shown_prose_problems(_nb(table)) == []
    solution = prose_cell('#| code-fold: true\ndisplay(Markdown(f"{x}"))', "The answer.")
    assert reader.shown_prose_problems(_nb(solution)) == []


def test_scaffolding_checker():
    def code(source):
        return new_code_cell(source, execution_count=1)

    assert reader.scaffolding_problems(_nb(code("x = 1"), new_markdown_cell("Prose."))) == []
    cases = {
        "# NBVAL_CHECK_OUTPUT\nprint(x)": "use the cell tag 'nbval-check-output'",
        "f = lambda x: x  # noqa: E731": "a 'noqa' comment",
        "#| include: false\n# Claim (issue 3): weights\nassert w < 1": "internal issue number",
        "assert x > 0\nassert y > 0": "a shown cell of bare asserts",
    }
    for source, message in cases.items():
        problems = reader.scaffolding_problems(_nb(code(source)), "ch")
        assert len(problems) == 1 and message in problems[0], (source, problems)
    assert reader.scaffolding_problems(_nb(new_markdown_cell("Fixed in issue #12."))) != []
    assert reader.scaffolding_problems(_nb(code("#| include: false\nassert x > 0"))) == []
