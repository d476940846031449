"""The chapters survive conversion to HTML.

Every chapter notebook listed in ``_quarto.yml`` is converted with nbconvert's
``HTMLExporter`` (no execution: the committed outputs are what is rendered), and the HTML is
compared with the notebook's outputs (``book.rendering_problems``):

- every ``image/png`` output (``display_data`` or ``execute_result``) is valid base64 PNG data
  and became an ``<img>`` whose ``src`` is a ``data:image/png;base64,`` URI of the same data;
- every animation output, matplotlib's ``Animation.to_jshtml()`` player (``text/html`` with a
  ``<script>``, the ``Animation`` player and frames embedded as ``data:image/png;base64``), is
  still a ``<script>`` player in the HTML with all its frames, and an embedded
  ``data:video/...`` survives too;
- no output is an error.

The second half checks the checker on a small synthetic notebook with a real figure and a real
animation, and on HTML from which they were removed.
"""

from __future__ import annotations

import base64
import io
import re
import sys
from pathlib import Path

import pytest
from nbformat.v4 import new_code_cell, new_markdown_cell, new_notebook, new_output

sys.path.insert(0, str(Path(__file__).resolve().parent))
import book  # noqa: E402

NOTEBOOKS = book.listed_or_empty("notebooks")


@pytest.fixture(scope="module")
def exporter():
    from nbconvert import HTMLExporter

    return HTMLExporter()


@pytest.mark.parametrize("rel", NOTEBOOKS)
def test_chapter_renders_to_html(rel, exporter):
    path = book.ROOT / rel
    if not path.is_file():
        pytest.skip(f"{rel} is listed but missing (see test_book.py::test_listed_files_exist)")
    nb = book.read_notebook(path)
    html, _ = exporter.from_notebook_node(nb)
    problems = book.rendering_problems(nb, html, rel)
    assert not problems, "\n".join(problems)


# =============================================================================================
# The checker itself
# =============================================================================================


@pytest.fixture(scope="module")
def figure_and_animation():
    """A real PNG figure and a real ``to_jshtml`` animation, tiny and fast to make."""
    matplotlib = pytest.importorskip("matplotlib")
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from matplotlib.animation import FuncAnimation

    fig, ax = plt.subplots(figsize=(1, 1), dpi=20)
    (line,) = ax.plot([0, 1], [0, 1])
    buf = io.BytesIO()
    fig.savefig(buf, format="png")
    png = base64.b64encode(buf.getvalue()).decode()
    anim = FuncAnimation(fig, lambda i: line.set_ydata([0, i]), frames=3)
    jshtml = anim.to_jshtml()
    plt.close(fig)
    return png, jshtml


def _synthetic_notebook(png: str, jshtml: str):
    nb = new_notebook()
    nb.metadata["kernelspec"] = {"name": "python3", "display_name": "Python 3", "language": "python"}
    nb.cells = [
        new_markdown_cell("# A chapter"),
        new_code_cell("fig", execution_count=1, outputs=[
            new_output("display_data", data={"image/png": png, "text/plain": "<Figure>"}),
        ]),
        new_code_cell("anim", execution_count=2, outputs=[
            new_output("display_data", data={"text/html": jshtml, "text/plain": "<HTML>"}),
        ]),
        new_code_cell("fig", execution_count=3, outputs=[
            new_output("execute_result", data={"image/png": png + "\n"}, execution_count=3),
        ]),
    ]
    return nb


def test_checker_accepts_a_faithful_rendering(figure_and_animation, exporter):
    png, jshtml = figure_and_animation
    assert book.is_animation_html(jshtml), "to_jshtml output no longer looks like a JS player"
    nb = _synthetic_notebook(png, jshtml)
    html, _ = exporter.from_notebook_node(nb)
    assert book.rendering_problems(nb, html, "synthetic") == []


def test_checker_reports_lost_images_and_players(figure_and_animation, exporter):
    png, jshtml = figure_and_animation
    nb = _synthetic_notebook(png, jshtml)
    html, _ = exporter.from_notebook_node(nb)

    no_images = re.sub(r"<img\b[^>]*>", "<p>image</p>", html)
    problems = book.rendering_problems(nb, no_images, "synthetic")
    assert len(problems) == 2 and all("did not become a data: <img>" in p for p in problems)

    no_scripts = re.sub(r"<script\b[^>]*>.*?</script>", "", html, flags=re.S | re.I)
    problems = book.rendering_problems(nb, no_scripts, "synthetic")
    assert problems == ["synthetic cell 2: animation player <script> is missing"]

    # Sanitised HTML (scripts turned into text) is as good as no player.
    escaped = html.replace("<script", "&lt;script")
    assert "animation player <script> is missing" in book.rendering_problems(nb, escaped, "s")[0]

    # A player that lost frames.
    first_frame = re.search(r'frames\[0\] = "data:image/png;base64,[^"]*";?', html).group(0)
    problems = book.rendering_problems(nb, html.replace(first_frame, ""), "synthetic")
    assert problems == ["synthetic cell 2: animation lost frames in the HTML"]


def test_checker_reports_errors_and_bad_png(exporter):
    nb = new_notebook()
    nb.metadata["kernelspec"] = {"name": "python3", "display_name": "Python 3", "language": "python"}
    nb.cells = [
        new_code_cell("bad", execution_count=1, outputs=[
            new_output("display_data", data={"image/png": "bm90IGEgcG5n"}),  # "not a png"
            new_output("error", ename="RuntimeError", evalue="kaput", traceback=["kaput"]),
        ]),
    ]
    html, _ = exporter.from_notebook_node(nb)
    problems = book.rendering_problems(nb, html, "fake")
    assert any("RuntimeError: kaput" in p for p in problems), problems
    assert any("not base64 PNG data" in p for p in problems), problems


def test_checker_reports_a_lost_video():
    video = base64.b64encode(bytes(range(256)) * 2).decode()
    html_out = f'<video controls><source src="data:video/mp4;base64,{video}"></video>'
    nb = new_notebook()
    nb.cells = [new_code_cell("v", execution_count=1, outputs=[
        new_output("display_data", data={"text/html": html_out}),
    ])]
    assert book.rendering_problems(nb, f"<html>{html_out}</html>", "v") == []
    assert book.rendering_problems(nb, "<html></html>", "v") == [
        "v cell 0: embedded video did not survive"
    ]
