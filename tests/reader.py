"""What a reader of the rendered book sees: checkers for the committed chapter notebooks.

The rendered book shows each chapter's committed outputs. These checkers fail when a reader
would see something wrong, whatever the unit tests say:

* a figure cell (``#| label: fig-*``) without an image or animation output, and an image that
  is tiny, blank or a single colour (``figure_problems``);
* a ``@fig-``/``@tbl-`` cross-reference whose target cell has no output, so the rendered
  chapter has nothing to point at (``crossref_target_problems``; labels and citations that do
  not exist at all are ``book.dangling_crossrefs`` / ``book.missing_citations``);
* a cell that only writes prose (``display(Markdown(...))``) and shows its code
  (``shown_prose_problems``): it needs ``#| echo: false``;
* scaffolding a reader sees (``scaffolding_problems``): ``NBVAL_*`` comments (nbval reads the
  cell tag ``nbval-check-output`` instead), ``noqa`` comments, internal issue numbers, and cells
  that exist only for the test harness (a shown cell of bare ``assert`` statements).

Every checker returns a list of strings, empty when all is well.
"""

from __future__ import annotations

import ast
import base64
import io
import re

import numpy as np

from book import cell_options, crossrefs, is_animation_html

# Smallest figure a reader can read, in pixels (a 2.5 x 1.5 inch figure at 60 dpi).
MIN_FIGURE_WIDTH = 150
MIN_FIGURE_HEIGHT = 90
# An image whose most common colour covers more than this fraction of its pixels shows nothing.
MAX_BACKGROUND_FRACTION = 0.995


def _text(value) -> str:
    return "".join(value) if isinstance(value, list) else str(value)


def is_hidden(options: dict) -> bool:
    """``#| include: false``: neither the code nor the output reaches the reader."""
    return options.get("include") is False


def code_is_hidden(options: dict) -> bool:
    """The code is not shown: ``include: false`` or ``echo: false``."""
    return is_hidden(options) or options.get("echo") is False


def _figure_outputs(cell) -> list:
    """Image, animation and video outputs of a code cell."""
    found = []
    for out in cell.get("outputs", []):
        data = out.get("data", {})
        if "image/png" in data or "image/svg+xml" in data:
            found.append(out)
        elif is_animation_html(_text(data.get("text/html", ""))) or "<video" in _text(
            data.get("text/html", "")
        ):
            found.append(out)
    return found


def png_problems(payload: str) -> list[str]:
    """Problems of one base64 PNG: not a PNG, too small, blank or one colour."""
    from PIL import Image

    try:
        image = Image.open(io.BytesIO(base64.b64decode("".join(payload.split()))))
        image.load()
    except Exception as err:  # any decoding failure is the finding
        return [f"image/png output does not decode ({type(err).__name__}: {err})"]
    width, height = image.size
    problems = []
    if width < MIN_FIGURE_WIDTH or height < MIN_FIGURE_HEIGHT:
        problems.append(
            f"image is {width}x{height} px, smaller than {MIN_FIGURE_WIDTH}x{MIN_FIGURE_HEIGHT}"
        )
    pixels = np.asarray(image.convert("RGB")).reshape(-1, 3)
    colours, counts = np.unique(pixels, axis=0, return_counts=True)
    if len(colours) == 1:
        problems.append("image is a single colour")
    elif counts.max() / len(pixels) > MAX_BACKGROUND_FRACTION:
        problems.append(
            f"image is blank: {counts.max() / len(pixels):.1%} of its pixels are one colour"
        )
    return problems


def figure_problems(nb, name: str = "<notebook>") -> list[str]:
    """Every figure cell has an image or animation output; every image is readable."""
    problems = []
    for i, cell in enumerate(nb.cells):
        if cell.cell_type != "code":
            continue
        options = cell_options(cell.source)
        label = options.get("label")
        if (
            isinstance(label, str)
            and label.startswith("fig-")
            and not is_hidden(options)
            and not _figure_outputs(cell)
        ):
            problems.append(
                f"{name} cell {i}: figure cell '{label}' has no image or animation output "
                "(re-execute with the inline backend, never with MPLBACKEND=Agg)"
            )
        for out in cell.get("outputs", []):
            payload = out.get("data", {}).get("image/png")
            if payload is not None:
                problems += [f"{name} cell {i}: {p}" for p in png_problems(_text(payload))]
    return problems


def _rendered_markdown(nb):
    """(cell index, markdown) for every piece of prose a reader sees: markdown cells and the
    ``text/markdown`` outputs of cells that are not hidden."""
    for i, cell in enumerate(nb.cells):
        if cell.cell_type == "markdown":
            yield i, cell.source
        elif cell.cell_type == "code" and not is_hidden(cell_options(cell.source)):
            for out in cell.get("outputs", []):
                if "text/markdown" in out.get("data", {}):
                    yield i, _text(out["data"]["text/markdown"])


def crossref_target_problems(nb, name: str = "<notebook>") -> list[str]:
    """A ``@fig-x`` points at a cell that shows a figure, a ``@tbl-x`` at one with output."""
    targets = {}
    for i, cell in enumerate(nb.cells):
        if cell.cell_type != "code":
            continue
        options = cell_options(cell.source)
        label = options.get("label")
        if not isinstance(label, str) or not label.startswith(("fig-", "tbl-")):
            continue
        if is_hidden(options):
            shown = False
        elif label.startswith("fig-"):
            shown = bool(_figure_outputs(cell))
        else:
            shown = any(
                out.get("output_type") in ("display_data", "execute_result", "stream")
                for out in cell.get("outputs", [])
            )
        targets[label] = (i, shown)
    problems = []
    for i, markdown in _rendered_markdown(nb):
        for ref in crossrefs(markdown):
            if ref in targets and not targets[ref][1]:
                problems.append(
                    f"{name} cell {i}: @{ref} points at cell {targets[ref][0]}, which shows "
                    "nothing to a reader"
                )
    return problems


def _is_table(markdown: str) -> bool:
    lines = [line.strip() for line in markdown.strip().splitlines() if line.strip()]
    return bool(lines) and all(line.startswith("|") for line in lines)


def shown_prose_problems(nb, name: str = "<notebook>") -> list[str]:
    """A cell whose output is prose (``Markdown(...)``, displayed or as the cell's value) must
    hide its code (``#| echo: false``): the reader should see the paragraph, not the f-string.
    Tables may show the code that computes them, and folded solutions may write prose."""
    problems = []
    for i, cell in enumerate(nb.cells):
        if cell.cell_type != "code":
            continue
        options = cell_options(cell.source)
        if code_is_hidden(options) or options.get("code-fold") is True:
            continue
        prose = [
            _text(out["data"]["text/markdown"])
            for out in cell.get("outputs", [])
            if "text/markdown" in out.get("data", {})
        ]
        if any(not _is_table(p) for p in prose):
            problems.append(
                f"{name} cell {i}: writes prose with Markdown(...) and shows its code; "
                "add '#| echo: false'"
            )
    return problems


_NBVAL_COMMENT = re.compile(r"#\s*NBVAL_\w+")
_NOQA = re.compile(r"#.*\bnoqa\b", re.I)
_ISSUE_NUMBER = re.compile(r"\bissues?\s*#?\s*\d+\b", re.I)


def _only_asserts(source: str) -> bool:
    try:
        body = ast.parse(source).body
    except SyntaxError:
        return False
    return bool(body) and all(isinstance(node, ast.Assert) for node in body)


def scaffolding_problems(nb, name: str = "<notebook>") -> list[str]:
    """Test and lint scaffolding in what a reader sees (rendered or opened in Jupyter)."""
    problems = []
    for i, cell in enumerate(nb.cells):
        source = cell.source
        if _ISSUE_NUMBER.search(source):
            problems.append(
                f"{name} cell {i}: mentions an internal issue number "
                f"({_ISSUE_NUMBER.search(source).group(0)!r})"
            )
        if cell.cell_type != "code":
            continue
        if _NBVAL_COMMENT.search(source):
            problems.append(
                f"{name} cell {i}: '{_NBVAL_COMMENT.search(source).group(0)}' comment; use the "
                "cell tag 'nbval-check-output' instead"
            )
        if _NOQA.search(source):
            problems.append(f"{name} cell {i}: a 'noqa' comment")
        options = cell_options(source)
        code = "\n".join(line for line in source.splitlines() if not line.lstrip().startswith("#|"))
        if not is_hidden(options) and _only_asserts(code):
            problems.append(
                f"{name} cell {i}: a shown cell of bare asserts (test harness); "
                "hide it with '#| include: false'"
            )
    return problems


def reader_problems(nb, name: str = "<notebook>") -> list[str]:
    """Every check of this module."""
    return (
        figure_problems(nb, name)
        + crossref_target_problems(nb, name)
        + shown_prose_problems(nb, name)
        + scaffolding_problems(nb, name)
    )
