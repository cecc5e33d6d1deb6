"""The README stays a ten-minute read and its numbers trace to pasted tables: at most 250 lines of at most
110 characters; every mean ± std of its headline table appears on the results page it cites (those pages'
tables are pasted by analysis/readme_results.py from the files their commands wrote); every docs link
resolves; and readme_results links a plot relative to the page that shows it."""
import re

from analysis.readme_results import paste
from tests.readme import REPO, documented_pages

README = REPO / "README.md"


def test_readme_is_short_and_narrow():
    lines = README.read_text().splitlines()
    assert len(lines) <= 250, len(lines)
    wide = [(i, len(line)) for i, line in enumerate(lines, 1) if len(line) > 110]
    assert not wide, wide


def headline_rows() -> list[str]:
    text = README.read_text()
    table = text[text.index("| budget | model | origin |"):]
    return [line for line in table.split("\n\n")[0].splitlines()[2:]]


def test_headline_numbers_are_on_the_pages_the_readme_cites():
    text = README.read_text()
    sources = text[text.index("Sources: "):].split("\n\n")[0]
    links = dict(re.findall(r"^\[([^\]]+)\]: (\S+)$", text, re.M))
    pages = "\n".join((REPO / links[name]).read_text() for name in re.findall(r"\[([^\]]+)\]", sources))
    rows = headline_rows()
    assert len(rows) >= 4
    for row in rows:
        numbers = re.findall(r"\d+\.\d+ ± \d+\.\d+", row)
        assert len(numbers) == 2, row
        for n in numbers:
            assert n in pages, (n, row)


def test_every_relative_link_of_the_readme_and_docs_resolves():
    for page in documented_pages():
        for target in re.findall(r"\]\(([^)#\s]+)\)", page.read_text()):
            if "://" in target:
                continue
            assert (page.parent / target).exists(), (page.relative_to(REPO), target)


def test_a_plot_is_linked_relative_to_the_page_that_shows_it(tmp_path):
    out = tmp_path / "outputs"
    md = out / "review/frontier-resnet18-cifar100-b0.02-v4"
    md.mkdir(parents=True)
    (md / "pareto.md").write_text("Command: `python analysis/review.py --experiment x`\n\n| a |\n|---|\n| 1 |\n")
    (md / "frontier.png").write_bytes(b"png")
    docs = tmp_path / "docs"
    (docs / "results").mkdir(parents=True)
    marker = "<!-- result: frontier-resnet18-v4 -->\nold\n<!-- /result: frontier-resnet18-v4 -->\n"
    for page, link in ((tmp_path / "README.md", "docs/frontier-resnet18-v4-frontier.png"),
                       (docs / "results" / "fronts.md", "../frontier-resnet18-v4-frontier.png")):
        text, pasted, missing = paste(marker, out, docs, page)
        assert pasted == ["frontier-resnet18-v4"] and not missing
        assert f"]({link})" in text and "| 1 |" in text and "old" not in text
        assert (page.parent / link).exists()
