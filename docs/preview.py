"""A preview of the book where quarto is missing: `python docs/preview.py [--out _preview]`.

`make book` renders the book with quarto where the quarto binary exists. Where it does not (it
cannot come from PyPI without access to quarto's GitHub releases), this script renders every
chapter and appendix listed in `_quarto.yml` to HTML with nbconvert, from the committed outputs
(nothing is executed), into one folder with an index page and chapter navigation. It honours
what a reader relies on:

* cell options: `#|` lines are never shown; `include: false` cells are dropped, `echo: false`
  cells show only their output, `output: false` only their code, and `code-fold: true` cells
  fold their code under their `code-summary`;
* figures and tables: numbered per chapter as quarto numbers them, with their captions;
  `@fig-`, `@tbl-`, `@sec-` and `@eq-` cross-references become links ("Figure 3.2"), across
  chapters too; display equations with `{#eq-x}` are numbered;
* citations `[@key]` and `@key` become author-year links to a reference list at the end of the
  page; call-outs (`::: {.callout-note}`) become boxes;
* math is typeset by MathJax copied next to the pages from the `jupyter-server-mathjax`
  package, so the preview works without internet; figures and animations are embedded in the
  pages.

Open `_preview/index.html` in a browser. `tests/test_preview.py` builds it and checks every page
in headless Chromium.
"""

from __future__ import annotations

import argparse
import copy
import html
import re
import shutil
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

import nbformat
import yaml

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "tests"))
import book  # noqa: E402  (the book-structure parsers the tests use)

CALLOUT_TITLES = {"note": "Note", "tip": "Tip", "important": "Important", "warning": "Warning",
                  "caution": "Caution"}
KIND_NAMES = {"fig": "Figure", "tbl": "Table", "sec": "Section", "eq": "Eq."}


# ---------------------------------------------------------------------------------------------
# Pages and their numbering
# ---------------------------------------------------------------------------------------------


@dataclass
class Page:
    source: Path
    number: str | None  # "3" for chapter 3, "A" for the first appendix, None for the preface
    html_name: str
    title: str = ""
    cells: list = field(default_factory=list)  # nbformat cells, front matter removed


def _front_matter_title(nb) -> tuple[str | None, bool]:
    """(title, numbered) from a notebook's raw front-matter cell."""
    for cell in nb.cells:
        if cell.cell_type == "raw" and cell.source.lstrip().startswith("---"):
            meta = yaml.safe_load(cell.source.strip().strip("-")) or {}
            return meta.get("title"), meta.get("number-sections", True) is not False
    return None, True


def load_pages(root: Path = ROOT) -> list[Page]:
    """Every file of the book, in order, with its chapter number or appendix letter."""
    config = book.load_quarto(root / "_quarto.yml")
    pages, chapter = [], 0
    entries = [(rel, False) for rel in book.book_chapters(config)]
    entries += [(rel, True) for rel in book.book_appendices(config)]
    appendix = 0
    for rel, is_appendix in entries:
        path = root / rel
        html_name = "index.html" if rel == "index.qmd" else f"{path.stem}.html"
        if path.suffix == ".ipynb":
            nb = nbformat.read(str(path), as_version=4)
            title, numbered = _front_matter_title(nb)
            cells = [c for c in nb.cells if c.cell_type != "raw"]
            first = next((c for c in cells if c.cell_type == "markdown"), None)
            heading = re.match(r"\s*#\s+(.*?)\s*(\{[^}]*\})?\s*$", first.source.split("\n", 1)[0]) if first else None
            if title is None and heading:  # the title is the notebook's first heading
                title = heading.group(1)
                numbered = numbered and ".unnumbered" not in (heading.group(2) or "")
                first.source = first.source.split("\n", 1)[1] if "\n" in first.source else ""
        else:
            text = path.read_text(encoding="utf-8")
            text = re.sub(r"\A---\s*\n.*?\n---\s*\n", "", text, count=1, flags=re.S)
            heading = re.search(r"^#\s+(.*?)\s*(\{[^}]*\})?\s*$", text, re.M)
            title = heading.group(1) if heading else path.stem
            numbered = not (heading and heading.group(2) and ".unnumbered" in heading.group(2))
            if heading:
                text = text[: heading.start()] + text[heading.end():]
            cells = [nbformat.v4.new_markdown_cell(text)]
        if rel == "index.qmd" or not numbered:
            number = None
        elif is_appendix:
            number = chr(ord("A") + appendix)
            appendix += 1
        else:
            chapter += 1
            number = str(chapter)
        pages.append(Page(path, number, html_name, title or path.stem, cells))
    return pages


_HEADING = re.compile(r"^(#{2,6})[ \t]+(.*?)[ \t]*(?:\{([^{}\n]*)\})?[ \t]*$", re.M)
_ATTR_ID = re.compile(r"#([A-Za-z][\w:.-]*)")
_EQUATION = re.compile(r"\$\$((?:(?!\$\$).)+?)\$\$[ \t]*\{#(eq-[\w:.-]+)\}", re.S)
_TABLE_CAPTION = re.compile(r"^:[ \t]+(.*?)[ \t]*\{#(tbl-[\w:.-]+)\}[ \t]*$", re.M)


def collect_labels(pages: list[Page]) -> dict[str, tuple[str, str]]:
    """label -> (page file, reference text), numbered per chapter as quarto does."""
    labels: dict[str, tuple[str, str]] = {}
    for page in pages:
        counters = {"fig": 0, "tbl": 0, "eq": 0, "sec": 0}

        def number(kind: str) -> str:
            counters[kind] += 1
            return f"{page.number}.{counters[kind]}" if page.number else str(counters[kind])

        for cell in page.cells:
            if cell.cell_type == "markdown":
                text = _outside_code(cell.source)
                for level, title, attrs in _HEADING.findall(text):
                    ids = _ATTR_ID.findall(attrs or "")
                    numbered = len(level) == 2 and page.number and ".unnumbered" not in (attrs or "")
                    sec = number("sec") if numbered else None
                    for label in ids:
                        labels[label] = (page.html_name, f"Section {sec}" if sec else title)
                for _, label in _EQUATION.findall(text):
                    labels[label] = (page.html_name, f"Eq. ({number('eq')})")
                for _, label in _TABLE_CAPTION.findall(text):
                    labels[label] = (page.html_name, f"Table {number('tbl')}")
            elif cell.cell_type == "code":
                options = book.cell_options(cell.source)
                label = options.get("label")
                if options.get("include") is False or not isinstance(label, str):
                    continue
                kind = label.split("-", 1)[0]
                if kind in ("fig", "tbl"):
                    labels[label] = (page.html_name, f"{KIND_NAMES[kind]} {number(kind)}")
    return labels


# ---------------------------------------------------------------------------------------------
# Markdown: quarto's extensions turned into what nbconvert's Markdown renders
# ---------------------------------------------------------------------------------------------

_CODE = re.compile(r"(^(`{3,}|~{3,}).*?^\2[ \t]*$|`+[^`\n]+?`+)", re.S | re.M)
_FENCED_CODE = re.compile(r"^(`{3,}|~{3,}).*?^\1[ \t]*$", re.S | re.M)


def _outside_code(text: str) -> str:
    return _CODE.sub(" ", text)


def _map_outside_code(text: str, fn, code: re.Pattern = _CODE) -> str:
    """Applies `fn` to the parts of `text` outside code (fenced and inline, by default)."""
    out, pos = [], 0
    for m in code.finditer(text):
        out.append(fn(text[pos : m.start()]))
        out.append(m.group(0))
        pos = m.end()
    out.append(fn(text[pos:]))
    return "".join(out)


_ACCENTS = {'"': "\u0308", "'": "\u0301", "`": "\u0300", "^": "\u0302", "~": "\u0303",
            "c": "\u0327", "=": "\u0304", "v": "\u030c", "u": "\u0306"}


def latex_to_text(value: str) -> str:
    """BibTeX field text to plain text: accents to Unicode, braces and `--` resolved."""
    import unicodedata

    def accent(m):
        return unicodedata.normalize("NFC", m.group(2) + _ACCENTS[m.group(1)])

    value = re.sub(r"\{?\\([\"'`^~=cvu])\s*\{?([A-Za-z])\}?\}?", accent, value)
    value = value.replace("--", "\u2013").replace("\\&", "&")
    return re.sub(r"[{}]", "", value).strip()


@dataclass
class Bibliography:
    entries: dict

    @classmethod
    def load(cls, path: Path) -> "Bibliography":
        return cls({e.key: e for e in book.parse_bib(path.read_text(encoding="utf-8"))})

    def authors(self, key: str) -> list[str]:
        raw = self.entries[key].fields.get("author") or self.entries[key].fields.get("editor", "")
        return [latex_to_text(a) for a in re.split(r"\s+and\s+", raw) if a.strip()]

    def short(self, key: str) -> tuple[str, str]:
        """('Song and Ermon', '2019') for an in-text citation."""
        entry = self.entries[key]
        last = [a.split(",")[0].strip() if "," in a else a.split()[-1] for a in self.authors(key)]
        if not last:
            who = latex_to_text(entry.fields.get("title", key))
        elif len(last) == 1:
            who = last[0]
        elif len(last) == 2:
            who = f"{last[0]} and {last[1]}"
        else:
            who = f"{last[0]} et al."
        return who, entry.fields.get("year", "n.d.")

    def full(self, key: str) -> str:
        e = self.entries[key]
        f = {k: latex_to_text(v) for k, v in e.fields.items()}
        venue = f.get("journal") or f.get("booktitle") or f.get("publisher") or f.get("school") or \
            f.get("institution") or f.get("howpublished", "")
        link = f.get("url") or (f"https://doi.org/{f['doi']}" if "doi" in f else "")
        text = f"{html.escape(', '.join(self.authors(key)))} ({f.get('year', 'n.d.')}). " \
               f"{html.escape(f.get('title', key))}."
        if venue:
            text += f" <em>{html.escape(venue)}</em>."
        if link:
            text += f' <a href="{html.escape(link)}">{html.escape(link)}</a>'
        return text


class MarkdownRewriter:
    """Rewrites one page's Markdown; remembers the citation keys it met."""

    def __init__(self, page: Page, labels: dict, bib: Bibliography, names: dict[str, str]):
        self.page, self.labels, self.bib, self.names = page, labels, bib, names
        self.cited: list[str] = []
        self.sections = 0
        self.equations = 0

    # -- references ------------------------------------------------------------------------
    def _ref(self, label: str) -> str:
        if label not in self.labels:
            return f"?@{label}"
        target, text = self.labels[label]
        href = f"#{label}" if target == self.page.html_name else f"{target}#{label}"
        return f"[{text}]({href})"

    def _cite(self, key: str) -> tuple[str, str]:
        if key not in self.bib.entries:
            return f"?@{key}", ""
        if key not in self.cited:
            self.cited.append(key)
        return self.bib.short(key)

    def _bracketed(self, m: re.Match) -> str:
        parts = []
        for item in m.group(1).split(";"):
            cm = re.search(r"(-?)@([\w:.#$%&+?~-]*\w)", item)
            if not cm or cm.group(2).split("-")[0].lower() in book.CROSSREF_PREFIXES:
                return m.group(0)
            who, year = self._cite(cm.group(2))
            before, after = item[: cm.start()].strip(), item[cm.end():].strip()
            body = year if cm.group(1) else f"{who} {year}"
            link = f"[{body}](#ref-{cm.group(2)})" if year else body
            parts.append(" ".join(p for p in (before, link + (after and f" {after}")) if p))
        return "(" + "; ".join(parts) + ")"

    def _intext(self, m: re.Match) -> str:
        key = m.group("braced") or m.group("key")
        prefix = key.split("-", 1)[0].lower()
        if "-" in key and prefix in book.CROSSREF_PREFIXES:
            return self._ref(prefix + "-" + key.split("-", 1)[1])
        who, year = self._cite(key)
        return f"{who} ([{year}](#ref-{key}))" if year else who

    # -- blocks ----------------------------------------------------------------------------
    def _heading(self, m: re.Match) -> str:
        level, title, attrs = m.group(1), m.group(2), m.group(3) or ""
        ids = _ATTR_ID.findall(attrs)
        numbered = len(level) == 2 and self.page.number and ".unnumbered" not in attrs
        if numbered:
            self.sections += 1
            title = f"{self.page.number}.{self.sections}&ensp;{title}"
        anchors = "".join(f'<a id="{i}"></a>' for i in ids)
        return (anchors + "\n\n" if anchors else "") + f"{level} {title}"

    def _equation(self, m: re.Match) -> str:
        self.equations += 1
        number = f"{self.page.number}.{self.equations}" if self.page.number else str(self.equations)
        # The number sits beside the equation in HTML: browsers' native MathML has no \\tag.
        return (f'\n\n<div class="equation" id="{m.group(2)}"><span class="eqno">({number})</span>'
                f"\n\n$${m.group(1).rstrip()}$$\n\n</div>\n\n")

    def _table_caption(self, m: re.Match) -> str:
        _, text = self.labels.get(m.group(2), (None, "Table"))
        return (f'<div class="caption" id="{m.group(2)}">\n\n**{text}:** {m.group(1)}\n\n</div>')

    def _divs(self, text: str) -> str:
        """Pandoc fenced divs (`::: {.callout-note}` ... `:::`) to HTML blocks."""
        out, stack = [], []
        lines = text.split("\n")
        i = 0
        while i < len(lines):
            line = lines[i]
            opening = re.match(r"^(:{3,})\s*\{([^}]*)\}\s*$", line) or re.match(r"^(:{3,})\s*([\w-]+)\s*$", line)
            if opening:
                attrs = opening.group(2)
                classes = re.findall(r"\.([\w-]+)", attrs) or [attrs.strip()]
                ids = _ATTR_ID.findall(attrs)
                callout = next((c for c in classes if c.startswith("callout-")), None)
                id_attr = f' id="{ids[0]}"' if ids else ""
                if callout:
                    kind = callout.split("-", 1)[1]
                    tm = re.search(r'title="([^"]*)"', attrs)
                    title = tm.group(1) if tm else None
                    j = i + 1
                    while j < len(lines) and not lines[j].strip():
                        j += 1
                    hm = re.match(r"^#{1,6}\s+(.*)$", lines[j]) if j < len(lines) else None
                    if hm and title is None:
                        title, i = hm.group(1), j
                    title = title or CALLOUT_TITLES.get(kind, kind.title())
                    collapsed = re.search(r'collapse="?true"?', attrs)
                    tag = "details" if collapsed else "div"
                    head = (f"<summary>{html.escape(title)}</summary>" if collapsed
                            else f'<div class="callout-title">{html.escape(title)}</div>')
                    out += [f'<{tag} class="callout callout-{kind}"{id_attr}>{head}', ""]
                    stack.append(tag)
                else:
                    out += [f'<div class="{" ".join(classes)}"{id_attr}>', ""]
                    stack.append("div")
            elif re.match(r"^:{3,}\s*$", line) and stack:
                out += ["", f"</{stack.pop()}>", ""]
            else:
                out.append(line)
            i += 1
        out += [f"</{tag}>" for tag in reversed(stack)]
        return "\n".join(out)

    def _links(self, m: re.Match) -> str:
        target = m.group(2)
        path, _, anchor = target.partition("#")
        name = Path(path).name
        if not re.match(r"^[a-z][a-z0-9+.-]*:", target, re.I) and name in self.names:
            target = self.names[name] + (f"#{anchor}" if anchor else "")
        return f"{m.group(1)}({target})"

    def blocks(self, text: str) -> str:
        """Headings, numbered equations and table captions (whole lines, inline code allowed)."""
        text = _HEADING.sub(self._heading, text)
        text = _EQUATION.sub(self._equation, text)
        return _TABLE_CAPTION.sub(self._table_caption, text)

    def prose(self, text: str) -> str:
        """Citations, cross-references and links (outside inline code)."""
        text = re.sub(r"\[([^\[\]]*@[^\[\]]*)\](?!\()", self._bracketed, text)
        text = book._CITATION.sub(self._intext, text)
        text = re.sub(r"(\]\s*)\(([^)\s]+)\)", self._links, text)
        return text

    def __call__(self, markdown: str) -> str:
        text = _map_outside_code(self._divs(markdown), self.blocks, _FENCED_CODE)
        return _map_outside_code(text, self.prose)


# ---------------------------------------------------------------------------------------------
# Cells: quarto's options applied, captions and anchors added
# ---------------------------------------------------------------------------------------------


def _strip_options(source: str) -> str:
    lines = source.split("\n")
    while lines and re.match(r"^\s*#\|", lines[0]):
        lines.pop(0)
    return "\n".join(lines).strip("\n")


def prepare_cells(page: Page, rewrite: MarkdownRewriter, labels: dict) -> list:
    md = nbformat.v4.new_markdown_cell
    number = f"{page.number}&ensp;" if page.number else ""
    cells = [md(f"# {number}{page.title}")]
    for original in page.cells:
        cell = copy.deepcopy(original)
        if cell.cell_type == "markdown":
            cell.source = rewrite(cell.source)
            cells.append(cell)
            continue
        options = book.cell_options(cell.source)
        if options.get("include") is False:
            continue
        cell.source = _strip_options(cell.source)
        cell.metadata = {k: v for k, v in cell.metadata.items() if k not in ("tags", "jupyter")}
        tags = []
        for out in cell.get("outputs", []):
            if "text/markdown" in out.get("data", {}):
                out["data"]["text/markdown"] = rewrite(book._output_text(out["data"]["text/markdown"]))
        if options.get("output") is False:
            cell.outputs = []
        label = options.get("label") if isinstance(options.get("label"), str) else None
        caption = None
        for kind in ("fig", "tbl"):
            if label and label.startswith(kind + "-") and options.get(f"{kind}-cap"):
                caption = (f'<div class="caption" id="{label}">\n\n**{labels[label][1]}:** '
                           f"{rewrite(str(options[f'{kind}-cap']))}\n\n</div>")
        if label and label.startswith("tbl-") and caption:
            cells.append(md(caption))
        if options.get("echo") is False or not cell.source.strip():
            tags.append("remove-input")
        elif options.get("code-fold") in (True, "true"):
            summary = html.escape(str(options.get("code-summary", "Show the code")))
            cells.append(md(f'<details class="code-fold"><summary>{summary}</summary>\n\n'
                            f"```python\n{cell.source}\n```\n\n</details>"))
            tags.append("remove-input")
        if "remove-input" in tags and not cell.get("outputs"):
            continue
        cell.metadata["tags"] = tags
        cells.append(cell)
        if label and label.startswith("fig-") and caption:
            cells.append(md(caption))
    if rewrite.cited:
        items = "\n".join(f'<li id="ref-{k}">{rewrite.bib.full(k)}</li>' for k in rewrite.cited)
        cells.append(md(f'## References\n\n<ol class="references">\n{items}\n</ol>'))
    return cells


# ---------------------------------------------------------------------------------------------
# HTML: nbconvert, then navigation and offline MathJax
# ---------------------------------------------------------------------------------------------

# MathJax from jupyter-server-mathjax: its combined TeX/MathML configuration, writing MathML that
# the browser typesets itself (native MathML output), so no web font has to load: browsers refuse
# fonts to pages opened from file://, and the package ships no TeX fonts.
MATHJAX_URL = "mathjax/MathJax.js?config=TeX-AMS-MML_HTMLorMML-full,Safe"
MATHJAX_FONTS = """
<script type="text/x-mathjax-config">
MathJax.Hub.Config({menuSettings: {renderer: "NativeMML"}, showMathMenu: false,
  "HTML-CSS": {availableFonts: [], webFont: null, imageFont: null},
});
MathJax.Hub.Register.StartupHook("NativeMML Jax Ready", function () {
  var styles = MathJax.OutputJax.NativeMML.config.styles;
  for (var key in styles) { if (key.indexOf("@font-face") === 0) { delete styles[key]; } }
});
</script>
"""
# matplotlib's animation player takes its button icons from a web font on a CDN; offline, the
# buttons show these characters instead.
PLAYER_ICONS = {"fa-minus": "&minus;", "fa-fast-backward": "&laquo;", "fa-step-backward": "&lsaquo;",
                "fa-play fa-flip-horizontal": "&#x25C0;", "fa-pause": "||", "fa-play": "&#x25B6;",
                "fa-step-forward": "&rsaquo;", "fa-fast-forward": "&raquo;", "fa-plus": "+"}

CSS = """
<style>
body { margin: 0; }
nav.book-nav { position: fixed; top: 0; left: 0; bottom: 0; width: 250px; overflow-y: auto;
  padding: 1em; box-sizing: border-box; background: #f7f7f9; border-right: 1px solid #ddd;
  font: 14px/1.4 system-ui, sans-serif; }
nav.book-nav a { color: #333; text-decoration: none; display: block; padding: 0.2em 0; }
nav.book-nav a.current { font-weight: bold; color: #0d6efd; }
nav.book-nav .book-title { font-weight: bold; font-size: 15px; margin-bottom: 0.8em; }
nav.book-nav .preview-note { color: #777; font-size: 12px; margin-top: 1.5em; }
main.book-page { margin-left: 250px; max-width: 1000px; padding: 0 2em 3em; }
.page-links { display: flex; justify-content: space-between; margin: 2em 0;
  font: 14px system-ui, sans-serif; }
.caption { font-size: 0.92em; color: #444; margin: 0.2em 0 1.2em; }
.callout { border-left: 4px solid #0d6efd; background: #f3f7ff; padding: 0.3em 1em;
  margin: 1em 0; }
.callout-title, details.callout > summary { font-weight: bold; margin: 0.4em 0; }
.callout-warning, .callout-caution { border-color: #e09b00; background: #fff8e6; }
.callout-important { border-color: #dc3545; background: #fff1f2; }
.callout-tip { border-color: #198754; background: #f0fff5; }
details.code-fold > summary { cursor: pointer; color: #0d6efd; margin: 0.5em 0; }
ol.references { font-size: 0.92em; }
.equation .eqno { float: right; margin-top: 1.1em; }
</style>
"""


def _nav(pages: list[Page], current: Page) -> str:
    def label(p: Page) -> str:
        return f"{p.number}&ensp;{html.escape(p.title)}" if p.number else html.escape(p.title)

    current_class = ' class="current"'
    links = "\n".join(
        f'<a href="{p.html_name}"{current_class if p is current else ""}>{label(p)}</a>'
        for p in pages
    )
    return (f'<nav class="book-nav"><div class="book-title"><a href="index.html">'
            f"{html.escape(BOOK_TITLE)}</a></div>\n{links}\n"
            f'<div class="preview-note">Preview rendered without quarto '
            f"({time.strftime('%Y-%m-%d')}).</div></nav>")


def _page_links(pages: list[Page], current: Page) -> str:
    i = pages.index(current)
    prev = f'<a href="{pages[i - 1].html_name}">&larr; {html.escape(pages[i - 1].title)}</a>' if i else "<span></span>"
    nxt = (f'<a href="{pages[i + 1].html_name}">{html.escape(pages[i + 1].title)} &rarr;</a>'
           if i + 1 < len(pages) else "<span></span>")
    return f'<div class="page-links">{prev}{nxt}</div>'


BOOK_TITLE = "Score-Based Generative Models"


def render_page(page: Page, pages: list[Page], labels: dict, bib: Bibliography, exporter) -> str:
    names = {p.source.name: p.html_name for p in pages}
    rewrite = MarkdownRewriter(page, labels, bib, names)
    nb = nbformat.v4.new_notebook()
    nb.metadata = {"kernelspec": {"name": "python3", "display_name": "Python 3", "language": "python"},
                   "language_info": {"name": "python"}, "title": page.title}
    nb.cells = prepare_cells(page, rewrite, labels)
    body, _ = exporter.from_notebook_node(nb)
    # Nothing is fetched from the internet: drop the CDN scripts nbconvert adds (require.js is
    # unused by these pages; MathJax comes from the local copy).
    body = re.sub(r'<script[^>]*\bsrc="https?://[^"]*"[^>]*>\s*</script>', "", body)
    body = re.sub(r'<script type="module">(?:(?!</script>).)*?mermaid(?:(?!</script>).)*</script>', "",
                  body, flags=re.S)
    body = re.sub(r'<link[^>]*\bhref="https?://[^"]*"[^>]*>', "", body)
    for icon, text in PLAYER_ICONS.items():
        body = body.replace(f'<i class="fa {icon}"></i>', text)
    # An empty icon: browsers would otherwise request favicon.ico, which a folder of pages lacks.
    body = body.replace("</head>", '<link rel="icon" href="data:,">' + MATHJAX_FONTS + CSS + "</head>", 1)
    body = re.sub(r"(<body[^>]*>)", lambda m: m.group(1) + _nav(pages, page) + '<main class="book-page">',
                  body, count=1)
    body = body.replace("</body>", _page_links(pages, page) + "</main></body>", 1)
    return body


def mathjax_dir() -> Path:
    import jupyter_server_mathjax

    return Path(jupyter_server_mathjax.__file__).parent / "static"


def build(out: Path, root: Path = ROOT) -> list[Path]:
    """Renders the preview into `out` (replaced); returns the pages written."""
    from nbconvert import HTMLExporter
    from traitlets.config import Config

    global BOOK_TITLE
    BOOK_TITLE = book.load_quarto(root / "_quarto.yml").get("book", {}).get("title", BOOK_TITLE)
    config = Config()
    config.TagRemovePreprocessor.enabled = True
    config.TagRemovePreprocessor.remove_input_tags = {"remove-input"}
    exporter = HTMLExporter(config=config, template_name="lab", exclude_input_prompt=True,
                            exclude_output_prompt=True,
                            mathjax_url=MATHJAX_URL)
    pages = load_pages(root)
    labels = collect_labels(pages)
    bib = Bibliography.load(root / "references.bib")
    tmp = out.with_name(out.name + ".tmp")
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir(parents=True)
    shutil.copytree(mathjax_dir(), tmp / "mathjax")
    written = []
    for page in pages:
        (tmp / page.html_name).write_text(render_page(page, pages, labels, bib, exporter), encoding="utf-8")
        written.append(out / page.html_name)
    shutil.rmtree(out, ignore_errors=True)
    tmp.rename(out)
    return written


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description="Render a preview of the book without quarto.")
    parser.add_argument("--out", type=Path, default=ROOT / "_preview", help="output folder")
    args = parser.parse_args(argv)
    t0 = time.perf_counter()
    pages = build(args.out.resolve())
    size = sum(f.stat().st_size for f in args.out.rglob("*") if f.is_file())
    print(f"Preview: {len(pages)} pages in {args.out}/ ({size / 1e6:.1f} MB with MathJax) "
          f"in {time.perf_counter() - t0:.1f} s. Open {args.out / 'index.html'} in a browser.")
    return 0


if __name__ == "__main__":
    sys.exit(main())
