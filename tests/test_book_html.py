"""The book as a reader sees it: build it, then check the rendered HTML of its pages.

An experiment page is the executed notebook of its largest complete preset; its results table is
an HTML table; MathJax is served from the book itself (formulas render offline) and no TeX
delimiter is left outside the elements MathJax typesets. Where Chromium is installed (CI installs
it) the page is also loaded headless, offline, and the typeset DOM is checked.
"""
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import yaml
from bs4 import BeautifulSoup

from sidlib.book import runner as book

ROOT = Path(__file__).resolve().parents[1]
JUPYTER_BOOK = Path(sys.executable).parent / "jupyter-book"
CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")
THEORY_PAGE = "notebooks/01_sid_lemma1_prop1"


def toc_chapter(caption):
    toc = yaml.safe_load((ROOT / "_toc.yml").read_text())
    part = next(p for p in toc["parts"] if p["caption"] == caption)
    return [section["file"] for chapter in part["chapters"] for section in chapter.get("sections", [])]


EXPERIMENT_PAGES = toc_chapter("Experiments")


@pytest.fixture(scope="module")
def html(tmp_path_factory):
    out = tmp_path_factory.mktemp("book")
    done = subprocess.run([str(JUPYTER_BOOK), "build", str(ROOT), "--path-output", str(out), "--warningiserror",
                           "--keep-going"], capture_output=True, text=True, timeout=900)
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    return out / "_build" / "html"


def page(html, name):
    return BeautifulSoup((html / f"{name}.html").read_text(encoding="utf-8"), "html.parser")


def visible_text(soup):
    """The page's text outside scripts, styles and the math elements MathJax typesets."""
    for element in soup.select("script, style, .math, mjx-container"):
        element.decompose()
    return soup.get_text(" ")


def test_each_experiment_page_is_its_largest_complete_preset():
    assert EXPERIMENT_PAGES
    for name in EXPERIMENT_PAGES:
        match = re.fullmatch(r"results/(?P<stem>[^/]+)/(?P<preset>[^/]+)/(?P=stem)", name)
        assert match, f"{name}: an experiment page is results/<notebook>/<preset>/<notebook>"
        preset, _ = book.largest_complete_preset(match["stem"], ROOT / "results")
        assert match["preset"] == preset != "smoke", f"{name}: the largest complete preset is {preset}"


def test_experiment_page_shows_its_results_as_an_html_table_and_no_smoke_run(html):
    for name in EXPERIMENT_PAGES:
        soup = page(html, name)
        # our numbers in a rendered table: accuracies beside the paper's, or (memory) ratios to BP
        tables = [t for t in soup.find_all("table")
                  if any(mark in t.get_text() for mark in ("(ours)", "BP / method", "final test acc"))]
        assert tables, f"{name}: no HTML results table"
        text = visible_text(soup)
        assert "| --- |" not in text, f"{name}: a Markdown table left as text"
        preset = name.split("/")[2]
        assert f"preset '{preset}'" in text and "preset 'smoke'" not in text


def pages_with_formulas(html):
    """The theory page and every experiment page that has formulas (a page without any loads no MathJax)."""
    names = [THEORY_PAGE] + [n for n in EXPERIMENT_PAGES if page(html, n).select(".math")]
    assert "results/02_sid_vs_bp/converged/02_sid_vs_bp" in names
    return names


def test_mathjax_is_served_by_the_book(html):
    for name in pages_with_formulas(html):
        sources = [s["src"] for s in page(html, name).find_all("script", src=True)]
        mathjax = [s for s in sources if "mathjax" in s.lower()]
        assert mathjax and not any(s.startswith(("http:", "https:", "//")) for s in mathjax), mathjax
        assert all((html / Path(name).parent / s.split("?")[0]).resolve().is_file() for s in mathjax), mathjax


def test_no_tex_left_outside_math(html):
    assert page(html, THEORY_PAGE).select(".math")
    for name in [THEORY_PAGE, *EXPERIMENT_PAGES]:
        soup = page(html, name)
        text = visible_text(soup)
        for delimiter in ("\\(", "\\)", "\\[", "$$"):
            assert delimiter not in text, f"{name}: {delimiter!r} in the text"


def test_code_is_folded_on_every_notebook_page(html):
    for name in [THEORY_PAGE, *EXPERIMENT_PAGES]:
        soup = page(html, name)
        cells = soup.select("div.cell")
        assert cells and all("tag_hide-input" in c["class"] or "tag_hide-cell" in c["class"] for c in cells), name


@pytest.mark.skipif(CHROMIUM is None, reason="no Chromium on this machine (CI installs it)")
def test_formulas_are_typeset_offline_in_chromium(html, tmp_path):
    for name in pages_with_formulas(html):
        done = subprocess.run([CHROMIUM, "--headless", "--no-sandbox", "--disable-gpu", "--no-first-run",
                               "--disable-background-networking", "--disable-component-update", "--disable-sync",
                               f"--user-data-dir={tmp_path / 'profile'}", "--virtual-time-budget=20000", "--dump-dom",
                               (html / f"{name}.html").as_uri()], capture_output=True, text=True, timeout=180)
        soup = BeautifulSoup(done.stdout, "html.parser")
        assert soup.find("mjx-container"), f"{name}: MathJax typeset nothing"
        for element in soup.select("script, style, mjx-container"):
            element.decompose()
        assert "\\(" not in soup.get_text(" "), f"{name}: raw TeX visible after MathJax ran"
