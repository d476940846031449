"""Parsing helpers and checkers for the book's structure (used by test_book.py and
test_rendering.py).

The quarto binary is not available in CI, so these helpers check what quarto would otherwise
complain about (missing chapter files, dangling cross-references, unknown citation keys) and
what the book promises its readers (executed notebooks, learning objectives, collapsed
solutions). Every ``*_problems`` function returns a list of human-readable strings, empty when
all is well, so a failing test prints exactly what to fix.

Conventions checked here (documented once, referenced from the tests):

* Labels: ``#| label: fig-x`` (or ``tbl-``, ``eq-``, ``sec-``, ...) cell options in code cells
  and ``{#fig-x}`` / ``{#sec-x}`` / ``{#eq-x}`` / ``{#tbl-x}`` attributes (also
  ``::: {#fig-x}`` divs) in markdown.
* Cross-references ``@fig-x`` (also ``@Fig-x``, ``[-@fig-x]``) must resolve to a label in the
  same file.
* Citations ``[@key]``, ``[@a; @b]``, ``@key`` and ``[-@key]`` must name an entry of
  references.bib. An ``@`` preceded by a letter, digit, ``.``, ``/`` or backslash is not a
  citation (e-mail addresses, URLs, escaped at-signs), nor is anything in inline code or a
  fenced code block.
* Collapsed solutions: a code cell whose options include ``#| code-fold: true``, placed in the
  chapter's "Exercises" section (from the heading containing "Exercises" to the next heading
  of the same or a higher level).
"""

from __future__ import annotations

import base64
import binascii
import re
from dataclasses import dataclass, field
from pathlib import Path

import nbformat
import yaml

ROOT = Path(__file__).resolve().parents[1]
QUARTO_YML = ROOT / "_quarto.yml"
BIBLIOGRAPHY = ROOT / "references.bib"

# Size budget for one committed, executed chapter notebook.
NOTEBOOK_SIZE_BUDGET_BYTES = 5 * 1024 * 1024

# Quarto's cross-reference prefixes (figures, tables, listings, callouts, theorems, equations,
# sections). ``@fig-x`` is a cross-reference, never a citation.
CROSSREF_PREFIXES = (
    "fig", "tbl", "lst", "tip", "nte", "wrn", "imp", "cau", "thm", "lem", "cor", "prp",
    "cnj", "def", "exm", "exr", "sol", "rem", "eq", "sec",
)
_PREFIX_ALT = "|".join(CROSSREF_PREFIXES)

# ---------------------------------------------------------------------------------------------
# _quarto.yml
# ---------------------------------------------------------------------------------------------


def load_quarto(path: Path = QUARTO_YML) -> dict:
    with open(path, encoding="utf-8") as f:
        config = yaml.safe_load(f)
    if not isinstance(config, dict):
        raise ValueError(f"{path}: expected a YAML mapping at the top level")
    return config


def _flatten_entries(entries) -> list[str]:
    """Chapter entries are file names, or ``{part: ..., chapters: [...]}`` groups."""
    files: list[str] = []
    for entry in entries or []:
        if isinstance(entry, str):
            files.append(entry)
        elif isinstance(entry, dict):
            if isinstance(entry.get("part"), str) and entry["part"].endswith((".qmd", ".md")):
                files.append(entry["part"])
            if "href" in entry:
                files.append(entry["href"])
            files.extend(_flatten_entries(entry.get("chapters")))
        else:
            raise ValueError(f"unexpected chapter entry in _quarto.yml: {entry!r}")
    return files


def book_chapters(config: dict) -> list[str]:
    return _flatten_entries(config.get("book", {}).get("chapters"))


def book_appendices(config: dict) -> list[str]:
    return _flatten_entries(config.get("book", {}).get("appendices"))


def book_files(config: dict) -> list[str]:
    """Every chapter and appendix file, in book order, relative to the repository root."""
    return book_chapters(config) + book_appendices(config)


def chapter_notebooks(config: dict) -> list[str]:
    return [f for f in book_chapters(config) if f.endswith(".ipynb")]


def missing_listed_files(config: dict, root: Path = ROOT) -> list[str]:
    """Chapters and appendices named in _quarto.yml that do not exist under ``root``."""
    return [f for f in book_files(config) if not (root / f).is_file()]


def unlisted_chapter_notebooks(config: dict, root: Path = ROOT) -> list[str]:
    """Chapter notebooks (``notebooks/NN_*.ipynb``) that exist but are not in the book."""
    listed = set(book_files(config))
    found = sorted(p.relative_to(root).as_posix() for p in root.glob("notebooks/[0-9][0-9]_*.ipynb"))
    return [f for f in found if f not in listed]


def listed_or_empty(kind: str) -> list[str]:
    """For test parametrisation: the listed files, or [] when _quarto.yml cannot be read
    (then the dedicated _quarto.yml tests fail with the real error)."""
    try:
        config = load_quarto()
    except Exception:  # noqa: BLE001 - reported by test_quarto_yml_is_a_book
        return []
    return {"notebooks": chapter_notebooks, "files": book_files}[kind](config)


# ---------------------------------------------------------------------------------------------
# Documents: .qmd text and .ipynb notebooks, reduced to prose and code cells
# ---------------------------------------------------------------------------------------------


@dataclass
class Cell:
    kind: str  # "markdown" or "code"
    source: str
    index: int  # position in the notebook (or chunk number in a .qmd)
    options: dict = field(default_factory=dict)  # ``#|`` cell options (code cells)


@dataclass
class Document:
    name: str
    cells: list[Cell]

    @property
    def markdown(self) -> list[Cell]:
        return [c for c in self.cells if c.kind == "markdown"]

    @property
    def code(self) -> list[Cell]:
        return [c for c in self.cells if c.kind == "code"]


_OPTION_LINE = re.compile(r"^\s*#\|\s?(.*)$")


def cell_options(source: str) -> dict:
    """Quarto cell options: the leading ``#| key: value`` lines of a code cell, as YAML."""
    lines = []
    for line in source.splitlines():
        m = _OPTION_LINE.match(line)
        if not m:
            break
        lines.append(m.group(1))
    if not lines:
        return {}
    try:
        options = yaml.safe_load("\n".join(lines))
    except yaml.YAMLError as err:
        return {"__invalid__": str(err)}
    return options if isinstance(options, dict) else {"__invalid__": repr(options)}


_FRONT_MATTER = re.compile(r"\A---\s*\n.*?\n---\s*\n", re.S)
_QMD_CHUNK = re.compile(
    r"^(?P<fence>`{3,})\s*\{(?P<lang>[A-Za-z][\w-]*)[^}\n]*\}[^\n]*\n(?P<body>.*?)^(?P=fence)\s*$",
    re.S | re.M,
)


def parse_qmd(text: str, name: str = "<qmd>") -> Document:
    """Split a .qmd file into prose and executable chunks (```` ```{python} ````)."""
    text = _FRONT_MATTER.sub("", text, count=1)
    cells: list[Cell] = []
    pos = 0
    for m in _QMD_CHUNK.finditer(text):
        cells.append(Cell("markdown", text[pos : m.start()], len(cells)))
        body = m.group("body")
        cells.append(Cell("code", body, len(cells), cell_options(body)))
        pos = m.end()
    cells.append(Cell("markdown", text[pos:], len(cells)))
    return Document(name, cells)


def parse_notebook(nb, name: str = "<notebook>") -> Document:
    """Markdown and code cells, in order. A code cell's ``text/markdown`` outputs (numbers
    computed in the notebook and shown with ``IPython.display.Markdown``) are prose that quarto
    renders too, so they follow their cell as extra markdown cells with the same index."""
    cells = []
    for i, cell in enumerate(nb.cells):
        if cell.cell_type == "markdown":
            cells.append(Cell("markdown", cell.source, i))
        elif cell.cell_type == "code":
            cells.append(Cell("code", cell.source, i, cell_options(cell.source)))
            for out in cell.get("outputs", []):
                markdown = out.get("data", {}).get("text/markdown")
                if markdown is not None:
                    text = "".join(markdown) if isinstance(markdown, list) else str(markdown)
                    cells.append(Cell("markdown", text, i))
    return Document(name, cells)


def read_notebook(path: Path):
    return nbformat.read(str(path), as_version=4)


def load_document(path: Path) -> Document:
    name = str(path.relative_to(ROOT)) if path.is_relative_to(ROOT) else str(path)
    if path.suffix == ".ipynb":
        return parse_notebook(read_notebook(path), name)
    return parse_qmd(path.read_text(encoding="utf-8"), name)


# ---------------------------------------------------------------------------------------------
# Prose scanning: code stripped, labels, cross-references, citations, headings, links
# ---------------------------------------------------------------------------------------------

_FENCED = re.compile(r"^(?P<fence>`{3,}|~{3,}).*?^(?P=fence)\s*$", re.S | re.M)
_INLINE_CODE = re.compile(r"(`+)(?!`).+?(?<!`)\1(?!`)", re.S)
_HTML_COMMENT = re.compile(r"<!--.*?-->", re.S)


def strip_code(markdown: str) -> str:
    """Prose only: fenced code blocks, inline code spans and HTML comments removed (replaced
    by a space so that words on either side stay apart)."""
    markdown = _HTML_COMMENT.sub(" ", markdown)
    markdown = _FENCED.sub(" ", markdown)
    return _INLINE_CODE.sub(" ", markdown)


# ``{#fig-x}``, ``{#sec-x .unnumbered}``, ``{.class #tbl-x}``, ``::: {#fig-x}``
_ATTR_BLOCK = re.compile(r"\{([^{}\n]*)\}")
_ATTR_ID = re.compile(r"(?:^|\s)#([A-Za-z][\w:.-]*\w|[A-Za-z])")


def markdown_labels(markdown: str) -> list[str]:
    labels = []
    for block in _ATTR_BLOCK.finditer(strip_code(markdown)):
        labels += _ATTR_ID.findall(block.group(1))
    return labels


def document_labels(doc: Document) -> list[str]:
    """All labels defined in a document, with repetitions (so duplicates can be reported)."""
    labels: list[str] = []
    for cell in doc.cells:
        if cell.kind == "markdown":
            labels += markdown_labels(cell.source)
        else:
            label = cell.options.get("label")
            if isinstance(label, str):
                labels.append(label)
    return labels


# An at-sign that starts a citation or cross-reference: not preceded by a word character,
# '.', '/', '\\' or another '@'.
_AT = r"(?<![\w.@/\\])@"
_CROSSREF = re.compile(_AT + rf"((?:{_PREFIX_ALT})-[\w:-]*\w|(?:{_PREFIX_ALT})-\w)", re.I)
_CITATION = re.compile(
    _AT + r"(?:\{(?P<braced>[^{}\s]+)\}|(?P<key>[A-Za-z0-9_](?:\w|[:.#$%&+?~-](?=\w))*))"
)


def crossrefs(markdown: str) -> list[str]:
    """Cross-references in prose (``@Fig-x`` is normalised to ``fig-x``)."""
    refs = []
    for ref in _CROSSREF.findall(strip_code(markdown)):
        prefix, rest = ref.split("-", 1)
        refs.append(f"{prefix.lower()}-{rest}")
    return refs


def citations(markdown: str) -> list[str]:
    """Citation keys in prose, cross-references excluded."""
    keys = []
    for m in _CITATION.finditer(strip_code(markdown)):
        key = m.group("braced") or m.group("key")
        prefix = key.split("-", 1)[0].lower()
        if "-" in key and prefix in CROSSREF_PREFIXES:
            continue
        keys.append(key)
    return keys


def dangling_crossrefs(doc: Document) -> list[str]:
    labels = set(document_labels(doc))
    problems = []
    for cell in doc.markdown:
        for ref in crossrefs(cell.source):
            if ref not in labels:
                problems.append(f"{doc.name} (cell {cell.index}): @{ref} has no label {{#{ref}}}")
    return problems


def duplicate_labels(doc: Document) -> list[str]:
    seen: set[str] = set()
    problems = []
    for label in document_labels(doc):
        if label in seen:
            problems.append(f"{doc.name}: label {label!r} is defined more than once")
        seen.add(label)
    return problems


def caption_problems(doc: Document) -> list[str]:
    """Quarto only numbers (and so only resolves references to) a computed figure or table
    that has a caption: ``#| label: fig-x`` needs ``#| fig-cap:``, ``tbl-x`` needs ``tbl-cap``."""
    problems = []
    for cell in doc.code:
        if "__invalid__" in cell.options:
            problems.append(
                f"{doc.name} (cell {cell.index}): cell options are not valid YAML: "
                f"{cell.options['__invalid__']}"
            )
            continue
        label = cell.options.get("label")
        if not isinstance(label, str):
            continue
        for kind in ("fig", "tbl"):
            if label.startswith(kind + "-") and not cell.options.get(f"{kind}-cap"):
                problems.append(
                    f"{doc.name} (cell {cell.index}): '#| label: {label}' needs '#| {kind}-cap:'"
                )
    return problems


def missing_citations(doc: Document, bib_keys) -> list[str]:
    bib_keys = set(bib_keys)
    problems = []
    for cell in doc.markdown:
        for key in citations(cell.source):
            if key not in bib_keys:
                problems.append(
                    f"{doc.name} (cell {cell.index}): citation @{key} is not in references.bib"
                )
    return problems


_LINK = re.compile(r"!?\[[^\]\n]*\]\(\s*<?([^)\s>]+)>?(?:\s+\"[^\"]*\")?\s*\)")


def broken_local_links(doc: Document, base: Path) -> list[str]:
    """Relative links and images (``[text](path)``, ``![alt](path)``) that name no file."""
    problems = []
    for cell in doc.markdown:
        for target in _LINK.findall(strip_code(cell.source)):
            if re.match(r"^([a-z][a-z0-9+.-]*:|#|/)", target, re.I):
                continue  # URL, mailto:, data:, in-page anchor or site-absolute path
            path = target.split("#", 1)[0].split("?", 1)[0]
            if path and not (base / path).exists():
                problems.append(f"{doc.name} (cell {cell.index}): link target {target!r} not found")
    return problems


_HEADING = re.compile(r"^(#{1,6})\s+(.*?)\s*(?:\{[^{}]*\})?\s*#*\s*$", re.M)


def headings(doc: Document) -> list[tuple[int, str, int]]:
    """(level, text, cell index) for every ATX heading in markdown cells, in order."""
    found = []
    for cell in doc.markdown:
        for m in _HEADING.finditer(_FENCED.sub(" ", cell.source)):
            found.append((len(m.group(1)), m.group(2).strip(), cell.index))
    return found


def section_cells(doc: Document, contains: str) -> list[Cell]:
    """Cells of the first section whose heading contains ``contains`` (case-insensitive),
    from its heading to the next heading of the same or a higher level."""
    start = level = None
    end = None
    for lvl, text, idx in headings(doc):
        if start is None:
            if contains.lower() in text.lower():
                start, level = idx, lvl
        elif lvl <= level and idx > start:
            end = idx
            break
    if start is None:
        return []
    return [c for c in doc.cells if c.index > start and (end is None or c.index < end)]


def is_collapsed(cell: Cell) -> bool:
    fold = cell.options.get("code-fold")
    return fold is True or (isinstance(fold, str) and fold.strip().lower() == "true")


REQUIRED_SECTIONS = {
    "learning objectives": ("objectives",),
    "key takeaways": ("key takeaways",),
    "exercises": ("exercises",),
}
MIN_COLLAPSED_SOLUTIONS = 2


def chapter_structure_problems(doc: Document) -> list[str]:
    titles = [text.lower() for _, text, _ in headings(doc)]
    problems = []
    for section, needles in REQUIRED_SECTIONS.items():
        if not any(needle in t for t in titles for needle in needles):
            problems.append(f"{doc.name}: no heading for {section!r} (looked for {needles})")
    solutions = [c for c in section_cells(doc, "exercises") if c.kind == "code" and is_collapsed(c)]
    if len(solutions) < MIN_COLLAPSED_SOLUTIONS:
        problems.append(
            f"{doc.name}: the Exercises section has {len(solutions)} collapsed solution cell(s) "
            f"('#| code-fold: true'); at least {MIN_COLLAPSED_SOLUTIONS} are required"
        )
    return problems


_RAW_HEADING = re.compile(r"^(#{1,6})\s+(.*?)\s*(\{[^{}]*\})?\s*#*\s*$", re.M)
FURNITURE_SECTIONS = ("learning objectives", "key takeaways", "exercises")


def furniture_problems(doc: Document) -> list[str]:
    """Every chapter's furniture looks the same: "Learning objectives", "Key takeaways" and
    "Exercises" are unnumbered level-2 sections (``{.unnumbered}``), and each exercise is a
    ``### Exercise N`` heading, numbered 1, 2, ... (so exercises appear in the table of
    contents and can be named by a syllabus)."""
    problems = []
    found = {name: False for name in FURNITURE_SECTIONS}
    numbers = []
    in_exercises = False
    for cell in doc.markdown:
        for m in _RAW_HEADING.finditer(_FENCED.sub(" ", cell.source)):
            level, text, attrs = len(m.group(1)), m.group(2).strip(), m.group(3) or ""
            lowered = text.lower()
            if level == 2:
                in_exercises = lowered.startswith("exercises")
                for name in FURNITURE_SECTIONS:
                    if lowered.startswith(name):
                        found[name] = True
                        if ".unnumbered" not in attrs:
                            problems.append(f"{doc.name} (cell {cell.index}): '## {text}' needs "
                                            "{.unnumbered}")
            elif level == 3 and in_exercises:
                em = re.match(r"Exercise (\d+)\b", text)
                if em:
                    numbers.append(int(em.group(1)))
                else:
                    problems.append(f"{doc.name} (cell {cell.index}): heading '### {text}' in the "
                                    "Exercises section is not '### Exercise N: ...'")
    problems += [f"{doc.name}: no '## {name.capitalize()} {{.unnumbered}}' section"
                 for name, ok in found.items() if not ok]
    if numbers != list(range(1, len(numbers) + 1)) or len(numbers) < MIN_COLLAPSED_SOLUTIONS:
        problems.append(f"{doc.name}: exercise headings are numbered {numbers}; expected "
                        f"'### Exercise 1', '### Exercise 2', ... (at least {MIN_COLLAPSED_SOLUTIONS})")
    return problems


# ---------------------------------------------------------------------------------------------
# Executed notebooks
# ---------------------------------------------------------------------------------------------


def error_outputs(nb) -> list[str]:
    problems = []
    for i, cell in enumerate(nb.cells):
        for out in cell.get("outputs", []) if cell.cell_type == "code" else []:
            if out.get("output_type") == "error":
                problems.append(f"cell {i}: error output {out.get('ename')}: {out.get('evalue')}")
    return problems


def execution_problems(nb, name: str = "<notebook>") -> list[str]:
    """Executed top to bottom in one kernel, without errors, with a python3 kernelspec.

    Code cells whose source is blank are ignored (Jupyter does not execute them)."""
    problems = []
    previous = 0
    for i, cell in enumerate(nb.cells):
        if cell.cell_type != "code" or not cell.source.strip():
            continue
        count = cell.get("execution_count")
        if count is None:
            problems.append(f"{name} cell {i}: not executed (execution_count is null)")
            continue
        if count <= previous:
            problems.append(
                f"{name} cell {i}: execution_count {count} does not increase (previous {previous});"
                " re-run the notebook top to bottom"
            )
        previous = count
    problems += [f"{name} {p}" for p in error_outputs(nb)]
    kernelspec = nb.metadata.get("kernelspec", {})
    if kernelspec.get("name") != "python3":
        problems.append(f"{name}: kernelspec name is {kernelspec.get('name')!r}, expected 'python3'")
    language = kernelspec.get("language", nb.metadata.get("language_info", {}).get("name"))
    if language not in (None, "python"):
        problems.append(f"{name}: kernel language is {language!r}, expected 'python'")
    return problems


# ---------------------------------------------------------------------------------------------
# Bibliography
# ---------------------------------------------------------------------------------------------


@dataclass
class BibEntry:
    type: str
    key: str
    fields: dict[str, str]


def _read_braced(text: str, i: int) -> tuple[str, int]:
    """text[i] is '{' or '('; return (content, index after the matching closer)."""
    opener = text[i]
    closer = "}" if opener == "{" else ")"
    depth = 0
    j = i
    while j < len(text):
        ch = text[j]
        if ch == "\\":  # an escaped character never opens or closes
            j += 2
            continue
        if ch == opener or (opener == "(" and ch == "{"):
            depth += 1
        elif ch == closer or (opener == "(" and ch == "}"):
            depth -= 1
            if depth == 0:
                return text[i + 1 : j], j + 1
        j += 1
    raise ValueError(f"unbalanced {opener!r} starting at offset {i}")


def _parse_fields(body: str) -> dict[str, str]:
    fields: dict[str, str] = {}
    i, n = 0, len(body)
    while i < n:
        m = re.compile(r"\s*,?\s*([A-Za-z][\w-]*)\s*=\s*").match(body, i)
        if not m:
            if body[i:].strip(" \t\n,"):
                raise ValueError(f"cannot parse field at {body[i:i + 40]!r}")
            break
        name, i = m.group(1).lower(), m.end()
        parts = []
        while True:  # value: {..} | ".." | number | macro, joined by '#'
            if i < n and body[i] == "{":
                value, i = _read_braced(body, i)
            elif i < n and body[i] == '"':
                j = i + 1
                depth = 0
                while j < n and not (body[j] == '"' and depth == 0):
                    depth += body[j] == "{"
                    depth -= body[j] == "}"
                    j += 1
                value, i = body[i + 1 : j], j + 1
            else:
                mm = re.compile(r"[\w.-]+").match(body, i)
                if not mm:
                    raise ValueError(f"field {name!r} has no value")
                value, i = mm.group(0), mm.end()
            parts.append(value)
            mm = re.compile(r"\s*#\s*").match(body, i)
            if not mm:
                break
            i = mm.end()
        if name in fields:
            raise ValueError(f"field {name!r} given twice")
        fields[name] = " ".join(" ".join(parts).split())
    return fields


def parse_bib(text: str) -> list[BibEntry]:
    """A small BibTeX reader: entries in order (duplicates kept, so they can be reported)."""
    entries = []
    entry_start = re.compile(r"@\s*([A-Za-z]+)\s*(?=[{(])")
    pos = 0
    while (m := entry_start.search(text, pos)) is not None:
        etype = m.group(1).lower()
        body, pos = _read_braced(text, m.end())  # continue after the whole entry
        if etype in ("comment", "string", "preamble"):
            continue
        key, _, rest = body.partition(",")
        key = key.strip()
        try:
            fields = _parse_fields(rest)
        except ValueError as err:
            raise ValueError(f"references.bib entry {key!r}: {err}") from None
        entries.append(BibEntry(etype, key, fields))
    return entries


def bib_keys(path: Path = BIBLIOGRAPHY) -> set[str]:
    return {e.key for e in parse_bib(path.read_text(encoding="utf-8"))}


# Fields each entry type must carry for a complete reference.
BIB_REQUIRED = {
    "article": ("author", "title", "journal", "year"),
    "inproceedings": ("author", "title", "booktitle", "year"),
    "incollection": ("author", "title", "booktitle", "year"),
    "phdthesis": ("author", "title", "school", "year"),
    "book": ("title", "publisher", "year"),
    "misc": ("author", "title", "year"),
    "online": ("author", "title", "year"),
    "techreport": ("author", "title", "institution", "year"),
}


def bib_problems(entries: list[BibEntry]) -> list[str]:
    problems = []
    seen: set[str] = set()
    for e in entries:
        if not re.fullmatch(r"[A-Za-z0-9_][\w:.-]*", e.key):
            problems.append(f"entry key {e.key!r} is not a plain citation key")
        if e.key in seen:
            problems.append(f"duplicate entry key {e.key!r}")
        seen.add(e.key)
        required = BIB_REQUIRED.get(e.type)
        if required is None:
            problems.append(f"{e.key}: unexpected entry type @{e.type}")
            continue
        for name in required:
            if not e.fields.get(name):
                problems.append(f"{e.key}: @{e.type} needs a {name!r} field")
        year = e.fields.get("year", "")
        if year and not re.fullmatch(r"(19|20)\d\d", year):
            problems.append(f"{e.key}: year {year!r} is not a four-digit year")
    return problems


# ---------------------------------------------------------------------------------------------
# Rendering (nbconvert HTML)
# ---------------------------------------------------------------------------------------------

_IMG_SRC = re.compile(r"<img\b[^>]*?\bsrc=\"data:image/png;base64,([^\"]*)\"", re.I)
_SCRIPT = re.compile(r"<script\b[^>]*>(.*?)</script>", re.I | re.S)
_ANIM_ID = re.compile(r"_anim_img(\w+)")
_FRAME = re.compile(r"frames\[\d+\]\s*=\s*\"data:image/[\w+.-]+;base64,")
_VIDEO_SRC = re.compile(r"data:video/[\w.+-]+;base64,([A-Za-z0-9+/=\s]{64})")


def _squash(s: str) -> str:
    return "".join(s.split())


def is_animation_html(html: str) -> bool:
    """matplotlib's ``Animation.to_jshtml()`` player: a script with embedded data-URI frames."""
    return "<script" in html and "anim" in html.lower() and bool(_FRAME.search(html))


def _output_text(value) -> str:
    return "".join(value) if isinstance(value, list) else str(value)


def rendering_problems(nb, html: str, name: str = "<notebook>") -> list[str]:
    """Compare a notebook's outputs with its nbconvert HTML: every PNG is an inline <img>,
    every JS animation player is still a <script> with all its frames, every embedded video
    survived, and nothing is an error."""
    problems = [f"{name} {p}" for p in error_outputs(nb)]
    images = {_squash(src) for src in _IMG_SRC.findall(html)}
    scripts = _SCRIPT.findall(html)
    squashed_html = None
    for i, cell in enumerate(nb.cells):
        if cell.cell_type != "code":
            continue
        for out in cell.get("outputs", []):
            if out.get("output_type") not in ("display_data", "execute_result"):
                continue
            data = out.get("data", {})
            if "image/png" in data:
                payload = _squash(_output_text(data["image/png"]))
                try:
                    raw = base64.b64decode(payload[:64], validate=True)
                except (binascii.Error, ValueError):
                    raw = b""
                if not raw.startswith(b"\x89PNG"):
                    problems.append(f"{name} cell {i}: image/png output is not base64 PNG data")
                if payload not in images:
                    problems.append(f"{name} cell {i}: PNG output did not become a data: <img>")
            html_out = _output_text(data.get("text/html", ""))
            if is_animation_html(html_out):
                ids = set(_ANIM_ID.findall(html_out))
                n_frames = len(_FRAME.findall(html_out))
                players = [
                    s for s in scripts
                    if any(f"_anim_img{a}" in s for a in ids) and _FRAME.search(s)
                ]
                if not players:
                    problems.append(f"{name} cell {i}: animation player <script> is missing")
                elif sum(len(_FRAME.findall(s)) for s in players) < n_frames:
                    problems.append(f"{name} cell {i}: animation lost frames in the HTML")
            for video in _VIDEO_SRC.findall(html_out):
                if squashed_html is None:
                    squashed_html = _squash(html)
                if _squash(video) not in squashed_html:
                    problems.append(f"{name} cell {i}: embedded video did not survive")
    return problems
