"""The book preview (`docs/preview.py`, what `make book` renders where quarto is missing),
opened in a real browser.

Headless Chromium opens every page and checks what a reader would see: every image loaded
(`naturalWidth > 0`) and none is broken, no raw LaTeX, `#|` option line or unresolved
cross-reference (`?@fig-x`) in the page text once MathJax has typeset it, the animations'
JavaScript runs (the player shows a frame and steps to the next), and the page logs no
JavaScript error. A screenshot of every page goes to a temporary folder (or to
`$SCORE_MODELS_SCREENSHOTS`), printed at the end, for a person to look at.

Chromium comes from Debian (`apt-get install chromium chromium-driver`) with selenium from PyPI
(the `test` extra). Where it is absent the browser tests are skipped with that message, except
when `SCORE_MODELS_REQUIRE_BROWSER=1` (set by CI), where its absence is a failure.
"""

from __future__ import annotations

import os
import re
import shutil
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "docs"))
import preview  # noqa: E402

CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser") or shutil.which("google-chrome")
CHROMEDRIVER = shutil.which("chromedriver")
HOW_TO_GET = ("headless Chromium is not installed: `apt-get install chromium chromium-driver` "
              "(Debian/Ubuntu) and `pip install selenium`")

# LaTeX that MathJax should have typeset: a command, or display-math delimiters.
RAW_LATEX = re.compile(r"\\(?:frac|sigma|nabla|mathbb|mathcal|sum|int|log|begin|left|right|"
                       r"alpha|theta|epsilon|mathrm|tag|sqrt|partial)\b|\$\$")


# MathJax's native-MathML output asks for its TeX fonts for \\mathbb and \\mathcal; the
# jupyter-server-mathjax package does not ship them, and the browser falls back to its own fonts.
# Which font format a browser asks for first (otf, woff, eot) depends on its version.
MISSING_MATHJAX_FONT = re.compile(r"mathjax/fonts/HTML-CSS/TeX/\w+/MathJax_\w+-\w+\.\w+ - Failed to load")


def _require_browser():
    try:
        import selenium  # noqa: F401
    except ImportError:
        missing = "selenium is not installed (`pip install selenium`)"
    else:
        missing = None if CHROMIUM and CHROMEDRIVER else HOW_TO_GET
    if missing:
        if os.environ.get("SCORE_MODELS_REQUIRE_BROWSER") == "1":
            pytest.fail(f"SCORE_MODELS_REQUIRE_BROWSER=1 but {missing}")
        pytest.skip(missing)


@pytest.fixture(scope="module")
def built_preview(tmp_path_factory):
    out = tmp_path_factory.mktemp("preview") / "book"
    pages = preview.build(out)
    return out, pages


@pytest.fixture(scope="module")
def browser():
    _require_browser()
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service

    options = webdriver.ChromeOptions()
    options.binary_location = CHROMIUM
    for flag in ("--headless=new", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage",
                 "--disable-quic", "--no-first-run", "--disable-background-networking",
                 "--disable-component-update", "--disable-sync", "--allow-file-access-from-files",
                 "--window-size=1280,1600"):
        options.add_argument(flag)
    options.set_capability("goog:loggingPrefs", {"browser": "ALL"})
    driver = webdriver.Chrome(service=Service(CHROMEDRIVER), options=options)
    driver.set_script_timeout(120)
    yield driver
    driver.quit()


@pytest.fixture(scope="module")
def screenshots(tmp_path_factory):
    folder = os.environ.get("SCORE_MODELS_SCREENSHOTS")
    path = Path(folder) if folder else tmp_path_factory.mktemp("screenshots")
    path.mkdir(parents=True, exist_ok=True)
    yield path
    print(f"\nscreenshots of the preview pages: {path}")


def test_preview_has_every_page_of_the_book(built_preview):
    out, pages = built_preview
    expected = [p.html_name for p in preview.load_pages()]
    assert [p.name for p in pages] == expected
    assert (out / "index.html").is_file() and (out / "mathjax" / "MathJax.js").is_file()
    for page in pages:
        text = page.read_text(encoding="utf-8")
        assert "https://cdn" not in text, f"{page.name} loads something from the internet"
        for other in expected:
            assert f'href="{other}"' in text, f"{page.name} has no navigation link to {other}"


def _wait_for_mathjax(driver):
    return driver.execute_async_script(
        "const done = arguments[arguments.length - 1];"
        "if (!window.MathJax || !MathJax.Hub) { done('no MathJax'); return; }"
        "MathJax.Hub.Queue(function () { done('typeset'); });"
    )


READER_TEXT = """
const clone = document.querySelector('main').cloneNode(true);
clone.querySelectorAll('pre, code, script, style, .jp-InputArea, .MathJax_Preview, .highlight')
     .forEach(e => e.remove());
document.body.appendChild(clone);
const text = clone.innerText;
clone.remove();
return text;
"""


def _pages():
    return [p.html_name for p in preview.load_pages()]


@pytest.mark.parametrize("name", _pages())
def test_page_in_a_browser(name, built_preview, browser, screenshots):
    out, _ = built_preview
    browser.get_log("browser")  # discard what earlier pages logged
    browser.get((out / name).as_uri())
    assert _wait_for_mathjax(browser) == "typeset", f"{name}: MathJax did not load"

    images = browser.execute_script(
        "return Array.from(document.images).map(i => [i.complete, i.naturalWidth, i.id || i.alt || '', i.src.slice(0, 40)]);"
    )
    broken = [img for img in images if not img[0] or img[1] == 0]
    assert not broken, f"{name}: {len(broken)} of {len(images)} images did not load: {broken[:5]}"

    text = browser.execute_script(READER_TEXT)
    for pattern, what in [(RAW_LATEX, "raw LaTeX"), (re.compile(r"(?m)^\s*#\|"), "a '#|' line"),
                          (re.compile(r"\?@[\w-]+"), "an unresolved reference")]:
        found = pattern.search(text)
        assert not found, f"{name}: {what} in the page text: ...{text[max(0, found.start() - 80):found.end() + 40]}..."

    players = browser.execute_script(
        "return Array.from(document.querySelectorAll('img[id^=_anim_img]')).map(i => i.id);"
    )
    for img_id in players:
        first = browser.execute_script(f"return document.getElementById('{img_id}').src;")
        assert first.startswith("data:image"), f"{name}: animation {img_id} shows no frame"
        anim_id = img_id[len("_anim_img"):]
        browser.execute_script(f"anim{anim_id}.next_frame();")
        second = browser.execute_script(f"return document.getElementById('{img_id}').src;")
        assert second != first, f"{name}: animation {img_id} does not step to its next frame"

    errors = [e for e in browser.get_log("browser")
              if e["level"] == "SEVERE" and not MISSING_MATHJAX_FONT.search(e["message"])]
    assert not errors, f"{name}: JavaScript errors: {errors[:3]}"

    height = browser.execute_script("return document.body.scrollHeight;")
    browser.set_window_size(1280, min(max(height, 800), 16000))
    browser.save_screenshot(str(screenshots / (Path(name).stem + ".png")))
    browser.set_window_size(1280, 1600)
    if name[0].isdigit() and "primer" not in name:
        assert images, f"{name}: a chapter page without a single image"
