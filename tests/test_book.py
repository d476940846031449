"""The book's structure, checked without the quarto binary.

What is checked, for every chapter and appendix listed in ``_quarto.yml``:

(a) every listed file exists, and every chapter notebook ``notebooks/NN_*.ipynb`` is listed;
(b) every cross-reference (``@fig-``, ``@tbl-``, ``@eq-``, ``@sec-`` and Quarto's other
    prefixes) in a chapter's prose resolves to a label in the same file: a ``#| label: fig-x``
    cell option in a code cell, or a ``{#fig-x}`` / ``{#sec-x}`` / ``{#eq-x}`` / ``{#tbl-x}``
    attribute in markdown; labels are unique across the book, and a labelled computed figure or
    table has a caption (``#| fig-cap:`` / ``#| tbl-cap:``), without which quarto cannot number
    it;
(c) every citation ``[@key]`` / ``@key`` names an entry of ``references.bib`` (e-mail
    addresses, cross-references and code are not citations), and every entry is complete;
(d) every chapter notebook is committed executed: each non-blank code cell has an
    ``execution_count``, the counts strictly increase from top to bottom, no output is an
    error, the kernelspec is ``python3``, and the file is at most 5 MB
    (``book.NOTEBOOK_SIZE_BUDGET_BYTES``);
(e) every chapter notebook has headings containing "Objectives" (e.g. "Learning
    objectives"), "Key takeaways" and "Exercises", and at least two exercise solutions in the
    Exercises section that are collapsed code cells. A solution is collapsed by the Quarto
    cell option ``#| code-fold: true`` as the cell's first lines (optionally with
    ``#| code-summary: "Solution"``); the Exercises section runs from its heading to the next
    heading of the same or a higher level.

Relative links between pages must also name existing files. Tests that take a notebook are
parametrised over the notebooks listed in ``_quarto.yml``: chapters that have not landed yet
are simply not listed. The last part of this file tests the checkers themselves on small fake
notebooks and texts, so that a checker that silently accepts everything cannot pass.
"""

from __future__ import annotations

import re
import sys
from pathlib import Path

import nbformat
import pytest
import yaml
from nbformat.v4 import new_code_cell, new_markdown_cell, new_notebook, new_output

sys.path.insert(0, str(Path(__file__).resolve().parent))
import book  # noqa: E402

BOOK_FILES = book.listed_or_empty("files")
NOTEBOOKS = book.listed_or_empty("notebooks")
EXPECTED_APPENDICES = ["instructor-guide.qmd", "reference.qmd", "artifacts.qmd"]
EXPECTED_BIB_KEYS = {
    "hyvarinen2005", "vincent2011", "song2019sliced", "song2019generative", "song2020improved",
    "song2021scorebased", "chen2018neural", "grathwohl2019ffjord", "hutchinson1989",
    "ronneberger2015unet", "heusel2017gans", "welling2011bayesian", "roberts1996exponential",
    "kidger2021equinox", "kidger2022diffrax", "anderson1982reverse", "szekely2013energy",
    "lecun1998mnist",
}


def _path(rel: str) -> Path:
    path = book.ROOT / rel
    if not path.is_file():
        pytest.skip(f"{rel} is listed in _quarto.yml but missing (see test_listed_files_exist)")
    return path


@pytest.fixture(scope="module")
def config() -> dict:
    return book.load_quarto()


@pytest.fixture(scope="module")
def bib_keys() -> set[str]:
    return book.bib_keys()


# ---------------------------------------------------------------------------------------------
# _quarto.yml
# ---------------------------------------------------------------------------------------------


def test_quarto_yml_is_a_book(config):
    assert config["project"]["type"] == "book"
    assert config["book"]["title"] == "Score-Based Generative Models from First Principles"
    assert config["bibliography"] == "references.bib"
    # Rendering uses the committed outputs: nothing is executed by quarto.
    assert config["execute"]["enabled"] is False
    assert config["execute"]["freeze"] == "auto"
    assert config["number-sections"] is True
    assert "crossref" in config
    html = config["format"]["html"]
    assert html["code-fold"] is False, "code is shown by default; solutions fold per cell"


def test_listed_files_exist(config):
    missing = book.missing_listed_files(config)
    assert not missing, f"_quarto.yml lists files that do not exist: {missing}"


def test_book_order(config):
    chapters, appendices = book.book_chapters(config), book.book_appendices(config)
    assert chapters[0] == "index.qmd", "the preface (index.qmd) must come first"
    assert appendices == EXPECTED_APPENDICES
    files = chapters + appendices
    assert len(files) == len(set(files)), "a file is listed twice"
    notebooks = book.chapter_notebooks(config)
    assert all(nb.startswith("notebooks/") for nb in notebooks)
    numbers = [int(Path(nb).name[:2]) for nb in notebooks]
    assert numbers == sorted(numbers), f"chapters out of order: {notebooks}"


def test_every_chapter_notebook_is_listed(config):
    unlisted = book.unlisted_chapter_notebooks(config)
    assert not unlisted, f"add these chapters to book.chapters in _quarto.yml: {unlisted}"


# ---------------------------------------------------------------------------------------------
# Cross-references, labels, citations, links (every listed file)
# ---------------------------------------------------------------------------------------------


@pytest.mark.parametrize("rel", BOOK_FILES)
def test_crossrefs_resolve(rel):
    doc = book.load_document(_path(rel))
    problems = book.dangling_crossrefs(doc) + book.duplicate_labels(doc) + book.caption_problems(doc)
    assert not problems, "\n".join(problems)


def test_labels_unique_across_book():
    owner: dict[str, str] = {}
    clashes = []
    for rel in BOOK_FILES:
        if not (book.ROOT / rel).is_file():
            continue
        for label in set(book.document_labels(book.load_document(book.ROOT / rel))):
            if label in owner:
                clashes.append(f"{label!r} in both {owner[label]} and {rel}")
            owner[label] = rel
    assert not clashes, "quarto cross-references are book-wide; rename:\n" + "\n".join(clashes)


@pytest.mark.parametrize("rel", BOOK_FILES)
def test_citations_resolve(rel, bib_keys):
    problems = book.missing_citations(book.load_document(_path(rel)), bib_keys)
    assert not problems, "\n".join(problems)


@pytest.mark.parametrize("rel", BOOK_FILES)
def test_local_links_resolve(rel):
    path = _path(rel)
    problems = book.broken_local_links(book.load_document(path), path.parent)
    assert not problems, "\n".join(problems)


def test_bibliography_is_complete():
    entries = book.parse_bib(book.BIBLIOGRAPHY.read_text(encoding="utf-8"))
    assert not book.bib_problems(entries), "\n".join(book.bib_problems(entries))
    missing = EXPECTED_BIB_KEYS - {e.key for e in entries}
    assert not missing, f"references.bib lacks {sorted(missing)}"


def test_preface_cites_the_foundations(bib_keys):
    cited = set()
    for cell in book.load_document(book.ROOT / "index.qmd").markdown:
        cited |= set(book.citations(cell.source))
    assert {"hyvarinen2005", "vincent2011", "song2019generative", "song2021scorebased"} <= cited


# ---------------------------------------------------------------------------------------------
# Chapter notebooks
# ---------------------------------------------------------------------------------------------


@pytest.mark.parametrize("rel", NOTEBOOKS)
def test_notebook_is_executed(rel):
    path = _path(rel)
    size = path.stat().st_size
    assert size <= book.NOTEBOOK_SIZE_BUDGET_BYTES, (
        f"{rel} is {size / 2**20:.1f} MiB, over the {book.NOTEBOOK_SIZE_BUDGET_BYTES / 2**20:.0f} MiB"
        " budget: lower figure dpi, thin animations"
    )
    problems = book.execution_problems(book.read_notebook(path), rel)
    assert not problems, "\n".join(problems)


@pytest.mark.parametrize("rel", NOTEBOOKS)
def test_chapter_structure(rel):
    problems = book.chapter_structure_problems(book.load_document(_path(rel)))
    assert not problems, "\n".join(problems)


@pytest.mark.parametrize("rel", NOTEBOOKS)
def test_chapter_furniture(rel):
    """Objectives, takeaways and exercises unnumbered; exercises as '### Exercise N' headings."""
    problems = book.furniture_problems(book.load_document(_path(rel)))
    assert not problems, "\n".join(problems)


def test_notation_table_is_in_the_book_and_linked(config):
    """The notation table is a page of the book, and the preface points readers to it."""
    files = book.book_files(config)
    assert "notation.qmd" in files, "notation.qmd is not listed in _quarto.yml"
    preface = (book.ROOT / "index.qmd").read_text(encoding="utf-8")
    labels = book.document_labels(book.load_document(book.ROOT / "notation.qmd"))
    linked = "notation.qmd" in preface or any(f"@{label}" in preface for label in labels)
    assert linked, "index.qmd does not link to the notation table (notation.qmd or @sec-notation)"
    table = [line for line in (book.ROOT / "notation.qmd").read_text().splitlines() if line.startswith("|")]
    assert len(table) >= 10, "the notation table has fewer than 8 symbols"


def test_jax_primer_comes_before_chapter_1(config):
    chapters = book.book_chapters(config)
    primer = [c for c in chapters if "primer" in c]
    assert primer, "no JAX primer among the chapters of _quarto.yml"
    assert chapters.index(primer[0]) < chapters.index("notebooks/01_score_functions.ipynb")


def test_environment_yml_matches_pyproject():
    tomllib = pytest.importorskip("tomllib")  # Python 3.11+
    env = yaml.safe_load((book.ROOT / "environment.yml").read_text(encoding="utf-8"))
    assert env["name"] == "score-models"
    assert env["channels"] == ["conda-forge"]
    deps = env["dependencies"]
    assert "python=3.11" in deps
    pip = next(d["pip"] for d in deps if isinstance(d, dict) and "pip" in d)
    assert "-e ." in pip and "celluloid" in pip
    names = {str(d).split("=")[0].split("<")[0].split(">")[0].strip().lower() for d in deps
             if isinstance(d, str)} | {p.lower() for p in pip}
    pyproject = tomllib.loads((book.ROOT / "pyproject.toml").read_text(encoding="utf-8"))
    required = {
        _requirement_name(r) for r in pyproject["project"]["dependencies"]
    } | {_requirement_name(r) for r in pyproject["project"].get("optional-dependencies", {}).get("test", [])}
    assert not required - names, f"environment.yml lacks {sorted(required - names)}"


def test_instructor_guide_times_match_measurements():
    """The guide's timing table is `benchmarks/chapter_times.json` rendered, for every chapter
    in the book, and the guide has no placeholders left."""
    sys.path.insert(0, str(book.ROOT))
    import json

    from benchmarks import chapters

    results = json.loads(chapters.RESULTS.read_text())
    text = chapters.GUIDE.read_text(encoding="utf-8")
    table = text.split(chapters.START, 1)[1].split(chapters.END, 1)[0].strip()
    assert table == chapters.guide_table(results).strip(), (
        "instructor-guide.qmd's timing table is stale: run `python -m benchmarks.chapters "
        "--write-guide` (or rewrite it from the JSON with benchmarks.chapters.write_guide)")
    measured = {int(c) for c, r in results["chapters"].items() if "run_seconds" in r}
    in_book = {int(Path(rel).name[:2]) for rel in NOTEBOOKS}
    assert in_book <= measured, f"chapters without measured times: {sorted(in_book - measured)}"
    for word in ("placeholder", "to be filled", "TODO", "Draft"):
        assert word not in text, f"instructor-guide.qmd still says {word!r}"


def _requirement_name(requirement: str) -> str:
    return re.split(r"[\s\[<>=!~;]", requirement, maxsplit=1)[0].lower().replace("_", "-")


# =============================================================================================
# The checkers themselves: they must catch what they are meant to catch.
# =============================================================================================


def _notebook(*cells, kernel="python3"):
    """Cells: ("md", source) or ("code", source, execution_count[, outputs])."""
    nb = new_notebook()
    nb.metadata["kernelspec"] = {"name": kernel, "display_name": "Python 3", "language": "python"}
    for spec in cells:
        if spec[0] == "md":
            nb.cells.append(new_markdown_cell(spec[1]))
        else:
            outputs = spec[3] if len(spec) > 3 else []
            nb.cells.append(new_code_cell(spec[1], execution_count=spec[2], outputs=outputs))
    nbformat.validate(nb)
    return nb


GOOD_CHAPTER = [
    ("md", "# Chapter {#sec-chapter}\n\n## Learning objectives\n\n- one\n"),
    ("code", "#| label: fig-score\n#| fig-cap: The score.\nplot()", 1),
    ("md", "As @fig-score shows, and as @Fig-score says again [@known2020; see @other2021, p. 3]."),
    ("md", "$$ s(x) = -x $$ {#eq-score}\n\nIn @eq-score and [-@sec-chapter]."),
    ("md", "## Key takeaways\n\n- takeaway\n"),
    ("md", "## Exercises\n\n### Exercise 1\n\nDo it."),
    ("code", "#| code-fold: true\n#| code-summary: Solution\nsolution_1()", 2),
    ("md", "### Exercise 2 {#sec-ex2}\n\nAnd this, see @sec-ex2."),
    ("code", "#| code-fold: true\nsolution_2()", 3),
]


def test_good_chapter_passes_every_check():
    nb = _notebook(*GOOD_CHAPTER)
    doc = book.parse_notebook(nb, "good")
    assert book.dangling_crossrefs(doc) == []
    assert book.duplicate_labels(doc) == []
    assert book.caption_problems(doc) == []
    assert book.missing_citations(doc, {"known2020", "other2021"}) == []
    assert book.execution_problems(nb, "good") == []
    assert book.chapter_structure_problems(doc) == []
    assert set(book.document_labels(doc)) == {"sec-chapter", "fig-score", "eq-score", "sec-ex2"}


def test_dangling_crossref_is_reported():
    nb = _notebook(
        ("md", "See @fig-missing and @tbl-gone, but not `@fig-in-code` or mail@fig-host.org."),
        ("code", "#| label: fig-present\n#| fig-cap: Here.\nplot()", 1),
        ("md", "Here @fig-present is fine, and so is {@sec-intro} once labelled."),
        ("md", "```python\n# @fig-in-a-fence is code\n```\n## Intro {#sec-intro}"),
    )
    problems = book.dangling_crossrefs(book.parse_notebook(nb, "fake"))
    assert len(problems) == 2, problems
    assert "@fig-missing" in problems[0] and "@tbl-gone" in problems[1]


def test_crossref_in_qmd_resolves_to_code_chunk_label():
    text = (
        "---\ntitle: x\n---\n\nSee @fig-chunk and @eq-one and @sec-a.\n\n# A {#sec-a}\n\n"
        "```{python}\n#| label: fig-chunk\n#| fig-cap: A chunk.\nplot()\n```\n\n"
        "$$x$$ {#eq-one}\n\n```bash\necho @fig-not-a-ref\n```\n"
    )
    doc = book.parse_qmd(text, "fake.qmd")
    assert book.dangling_crossrefs(doc) == []
    assert [c.options.get("label") for c in doc.code] == ["fig-chunk"]
    doc = book.parse_qmd(text.replace("fig-chunk\n#|", "fig-other\n#|"), "fake.qmd")
    assert book.dangling_crossrefs(doc) == ["fake.qmd (cell 0): @fig-chunk has no label {#fig-chunk}"]


def test_duplicate_labels_and_missing_captions_are_reported():
    nb = _notebook(
        ("md", "## One {#sec-same}\n\n## Two {#sec-same}"),
        ("code", "#| label: fig-nocap\nplot()", 1),
        ("code", "#| label: tbl-nocap\ntable()", 2),
        ("code", "#| label: [broken\nx = 1", 3),
    )
    doc = book.parse_notebook(nb, "fake")
    assert book.duplicate_labels(doc) == ["fake: label 'sec-same' is defined more than once"]
    problems = book.caption_problems(doc)
    assert len(problems) == 3, problems
    assert "fig-cap" in problems[0] and "tbl-cap" in problems[1] and "valid YAML" in problems[2]


def test_citation_parsing():
    text = (
        "Score matching [@hyvarinen2005; @vincent2011, sec. 2] and @song2019sliced. "
        "As [-@song2021scorebased] shows; see also @{weird:key}. Write to me@example.org, "
        "https://x.org/@handle, `@jax.jit`, \\@escaped, and @fig-x or @Sec-y are references. "
        "Ends with @lecun1998mnist.\n\n```python\n@decorator\ndef f(): ...\n```\n"
        "<!-- @commented2000 -->"
    )
    assert book.citations(text) == [
        "hyvarinen2005", "vincent2011", "song2019sliced", "song2021scorebased", "weird:key",
        "lecun1998mnist",
    ]
    assert book.crossrefs(text) == ["fig-x", "sec-y"]


def test_markdown_outputs_are_prose():
    shown = new_output("display_data", data={"text/markdown": "As @fig-gone shows [@unknown2000]."})
    nb = _notebook(("code", "display(Markdown(text))", 1, [shown]))
    doc = book.parse_notebook(nb, "fake")
    assert book.dangling_crossrefs(doc) == ["fake (cell 0): @fig-gone has no label {#fig-gone}"]
    assert len(book.missing_citations(doc, set())) == 1


def test_missing_citation_is_reported():
    doc = book.parse_notebook(_notebook(("md", "Known [@known2020]; unknown [@nobody1999].")))
    problems = book.missing_citations(doc, {"known2020"})
    assert len(problems) == 1 and "@nobody1999" in problems[0]


def test_execution_problems_are_reported():
    error = new_output("error", ename="ValueError", evalue="boom", traceback=[])
    nb = _notebook(
        ("code", "a = 1", 1),
        ("code", "   \n", None),  # blank cells are never executed; not a problem
        ("code", "b = 2", None),
        ("code", "c = 3", 5),
        ("code", "d = 4", 3),
        ("code", "raise ValueError('boom')", 6, [error]),
        kernel="julia-1.9",
    )
    problems = book.execution_problems(nb, "fake")
    assert any("cell 2: not executed" in p for p in problems), problems
    assert any("cell 4: execution_count 3 does not increase" in p for p in problems), problems
    assert any("ValueError: boom" in p for p in problems), problems
    assert any("kernelspec" in p for p in problems), problems
    assert len(problems) == 4, problems


def test_equal_execution_counts_are_not_increasing():
    nb = _notebook(("code", "a = 1", 2), ("code", "b = 1", 2))
    assert len(book.execution_problems(nb, "fake")) == 1


def test_missing_sections_are_reported():
    nb = _notebook(("md", "# Chapter\n\n## Takeaways\n\nNo objectives, no exercises."))
    problems = book.chapter_structure_problems(book.parse_notebook(nb, "fake"))
    joined = "\n".join(problems)
    assert "learning objectives" in joined and "key takeaways" in joined and "exercises" in joined
    assert "0 collapsed solution" in joined


def test_solutions_must_be_collapsed_and_inside_exercises():
    cells = [
        ("md", "## Objectives"),
        ("code", "#| code-fold: true\nnot_a_solution()", 1),  # folded, but before Exercises
        ("md", "## Exercises\n\n1. First."),
        ("code", "#| code-fold: true\nsolution_1()", 2),
        ("code", "#| code-fold: show\nvisible_solution()", 3),  # shown, not collapsed
        ("code", "# code-fold: true\nplain_comment()", 4),  # not a cell option
        ("md", "## Key takeaways"),
        ("code", "#| code-fold: true\nafter_exercises()", 5),  # next section
    ]
    doc = book.parse_notebook(_notebook(*cells), "fake")
    problems = book.chapter_structure_problems(doc)
    assert len(problems) == 1 and "has 1 collapsed solution" in problems[0], problems
    cells.insert(6, ("code", "#| code-fold: true\nsolution_2()", 6))
    cells[-1] = ("code", "#| code-fold: true\nafter_exercises()", 7)
    assert book.chapter_structure_problems(book.parse_notebook(_notebook(*cells), "fake")) == []


def test_subsections_stay_inside_exercises():
    doc = book.parse_notebook(_notebook(*GOOD_CHAPTER), "good")
    inside = book.section_cells(doc, "exercises")
    assert [c.index for c in inside] == [6, 7, 8]


def test_missing_listed_file_is_reported(tmp_path):
    (tmp_path / "index.qmd").write_text("# Preface\n")
    (tmp_path / "notebooks").mkdir()
    (tmp_path / "notebooks" / "01_a.ipynb").write_text("{}")
    (tmp_path / "notebooks" / "02_b.ipynb").write_text("{}")
    config = yaml.safe_load(
        "book:\n  chapters:\n    - index.qmd\n    - part: Basics\n      chapters:\n"
        "        - notebooks/01_a.ipynb\n        - notebooks/09_missing.ipynb\n"
        "  appendices:\n    - gone.qmd\n"
    )
    assert book.book_files(config) == [
        "index.qmd", "notebooks/01_a.ipynb", "notebooks/09_missing.ipynb", "gone.qmd",
    ]
    assert book.missing_listed_files(config, tmp_path) == ["notebooks/09_missing.ipynb", "gone.qmd"]
    assert book.unlisted_chapter_notebooks(config, tmp_path) == ["notebooks/02_b.ipynb"]


def test_broken_links_are_reported(tmp_path):
    (tmp_path / "there.qmd").write_text("x")
    doc = book.parse_qmd(
        "[ok](there.qmd) [anchor](#sec-x) [web](https://example.org) ![img](missing.png) "
        "[gone](nowhere.qmd#sec-y) `[code](not-a-link.qmd)`",
        "fake.qmd",
    )
    problems = book.broken_local_links(doc, tmp_path)
    assert len(problems) == 2 and "missing.png" in problems[0] and "nowhere.qmd" in problems[1]


def test_bib_parser_and_problems():
    text = """
    @comment{ignored @article{not, an entry} }
    @article{good2020,
      author = {Sz{\\'e}kely, G{\\'a}bor and Other, Ann},
      title = "A {Nested {Brace}} Title",
      journal = {J},
      year = 2020,
    }
    @inproceedings{good2020, author = {A}, title = {T}, year = {2021}}
    @misc{noyear, author = {A}, title = {T}}
    @article{weird(year), author = {A}, title = {T}, journal = {J}, year = {99}}
    """
    entries = book.parse_bib(text)
    assert [e.key for e in entries] == ["good2020", "good2020", "noyear", "weird(year)"]
    assert entries[0].fields["title"] == "A {Nested {Brace}} Title"
    assert entries[0].fields["year"] == "2020"
    problems = book.bib_problems(entries)
    assert "duplicate entry key 'good2020'" in problems
    assert "good2020: @inproceedings needs a 'booktitle' field" in problems
    assert "noyear: @misc needs a 'year' field" in problems
    assert any("weird(year)" in p and "plain citation key" in p for p in problems)
    assert any("'99' is not a four-digit year" in p for p in problems)
    with pytest.raises(ValueError):
        book.parse_bib("@article{open, title = {never closed}")


def test_cell_options():
    assert book.cell_options("#| label: fig-a\n#| fig-cap: 'A: b'\n#| code-fold: true\nx") == {
        "label": "fig-a", "fig-cap": "A: b", "code-fold": True,
    }
    assert book.cell_options("x = 1\n#| label: late") == {}
    assert "__invalid__" in book.cell_options("#| label: [unclosed")


def test_furniture_checker():
    good = _notebook(
        ("md", "## Learning objectives {.unnumbered}\n\n- a"),
        ("md", "## Key takeaways {.unnumbered}\n\n- b"),
        ("md", "## Exercises {.unnumbered}\n\n### Exercise 1: one\n\nDo it."),
        ("md", "### Exercise 2: two\n\nDo it too."),
    )
    assert book.furniture_problems(book.parse_notebook(good, "good")) == []
    bad = _notebook(
        ("md", "## Learning objectives\n\n- a"),
        ("md", "## Exercises {.unnumbered}\n\n**Exercise 1.** Do it.\n\n### Exercise 3: x"),
    )
    problems = book.furniture_problems(book.parse_notebook(bad, "bad"))
    assert any("needs {.unnumbered}" in p for p in problems)
    assert any("Key takeaways" in p for p in problems)
    assert any("numbered [3]" in p for p in problems)
