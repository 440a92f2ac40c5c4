"""Every reference in the repository can be followed by someone who cloned it:

- no tracked file cites notes that live outside the repository;
- every "docs/<page>.md section N" names an existing page and an existing numbered heading in it (inside
  docs/, "<page>.md section N" and a bare "section N" count too);
- every relative link of README.md and docs/*.md points at an existing file (and heading, for a .md anchor).

The forbidden names are assembled from pieces, so that this file does not cite them itself.
"""
import functools
import os
import re
import subprocess

import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
DOCS = os.path.join(ROOT, "docs")

# Notes outside the repository: the sibling folder, its research folder, and the note files by name. A docs page
# of the same name would be fine (docs/<name>.md), and longer names (docs/lava-fixed-point.md) never match.
OUTSIDE = re.compile(
    re.escape(".." + "/shared")
    + "|" + r"(?<![\w/.-])" + "research" + "/"
    + "|" + r"(?<![\w-])(?<!docs/)" + "(?:" + "|".join(["DESIGN", "lava", "paper", "datasets", "anchors", "nir"])
    + r")\.md\b")

NUMBER = r"\d+(?:\.\d+)*"
NUMBERS = NUMBER + r"(?:\s*(?:,|and|to|-|–)\s*" + NUMBER + r")*"
# A page, optionally as a markdown link to it, then "section(s) N[, M | and M | to M | - M ...]".
CITATION = re.compile(r"(?<![\w/-])(docs/)?([\w.-]+\.md)(?:\]\([^)\s]*\))?,?\s+sections?\s+(" + NUMBERS + ")")
# Inside a docs page, "section N" with no page before it refers to the page itself, unless an acronym names
# another document ("SDM section 5" is a section of a paper).
BARE = re.compile(r"(?:(\S+)\s+)?\bsections?\s+(" + NUMBERS + ")")
ACRONYM = re.compile(r"\(?[A-Z][A-Z0-9]+")
HEADING = re.compile(r"^#{1,6}\s+(" + NUMBER + r")\.?\s")
LINK = re.compile(r"!?\[[^\]]*\]\(([^)\s]+)\)")
BINARY_SUFFIXES = (".pt", ".png", ".jpg", ".npz", ".npy", ".nir", ".h5", ".hdf5", ".onnx", ".gz", ".pkl")


@functools.lru_cache(maxsize=1)
def _tracked_text_files() -> dict[str, str]:
    try:
        out = subprocess.run(["git", "ls-files", "-z"], cwd=ROOT, capture_output=True, check=True).stdout
    except (OSError, subprocess.CalledProcessError):
        pytest.skip("not a git checkout")
    texts = {}
    for name in out.decode().split("\0"):
        path = os.path.join(ROOT, name)
        if not name or name.endswith(BINARY_SUFFIXES) or not os.path.isfile(path):  # deleted, or a submodule
            continue
        with open(path, "rb") as f:
            data = f.read()
        if b"\0" in data[:8192]:
            continue
        try:
            texts[name] = data.decode("utf-8")
        except UnicodeDecodeError:
            continue
    return texts


def _outside_code_fences(text: str) -> str:
    """The text with fenced code blocks blanked (their lines kept, so line numbers stay right)."""
    lines, fenced = [], False
    for line in text.splitlines():
        if line.lstrip().startswith("```"):
            fenced = not fenced
            lines.append("")
        else:
            lines.append("" if fenced else line)
    return "\n".join(lines)


def _sections(page: str) -> set[str]:
    with open(os.path.join(DOCS, page), encoding="utf-8") as f:
        text = _outside_code_fences(f.read())
    return {m.group(1) for line in text.splitlines() if (m := HEADING.match(line))}


def _numbers(group: str) -> list[str]:
    return re.findall(NUMBER, group)


def _slug(heading: str) -> str:
    """GitHub's anchor for a heading."""
    return re.sub(r"[^\w\- ]", "", heading.strip().lower()).replace(" ", "-")


def _anchors(path: str) -> set[str]:
    with open(path, encoding="utf-8") as f:
        text = _outside_code_fences(f.read())
    return {_slug(line.lstrip("#")) for line in text.splitlines() if re.match(r"^#{1,6}\s", line)}


def _line(text: str, pos: int) -> int:
    return text.count("\n", 0, pos) + 1


def test_no_reference_to_notes_outside_the_repository():
    found = [f"{name}:{_line(text, m.start())}: {m.group(0)}"
             for name, text in _tracked_text_files().items() for m in OUTSIDE.finditer(text)]
    assert not found, "references to files outside the repository:\n" + "\n".join(found)


def test_the_pattern_catches_outside_references_and_spares_docs_pages():
    bad = [".." + "/shared/x", "(" + "research" + "/lava" + ".md section 3)", "DESIGN" + ".md",
           "(lava" + ".md 2.1)", "paper" + ".md", "datasets" + ".md", "nir" + ".md", "anchors" + ".md"]
    good = ["docs/lava-fixed-point.md section 2", "docs/sources.md", "docs/architecture.md",
            "https://example.org/" + "research" + "/page", "README.md"]
    assert all(OUTSIDE.search(s) for s in bad)
    assert not any(OUTSIDE.search(s) for s in good)


def test_every_docs_section_citation_exists():
    pages = {name for name in os.listdir(DOCS) if name.endswith(".md")}
    sections = {page: _sections(page) for page in pages}
    assert any(sections.values()), "the cited pages have numbered sections"
    broken, cited = [], 0
    for name, text in _tracked_text_files().items():
        in_docs = name.startswith("docs/") and name.endswith(".md") and "/" not in name[len("docs/"):]
        if in_docs:
            text = _outside_code_fences(text)
        for m in CITATION.finditer(text):
            prefix, page, numbers = m.groups()
            if not prefix and not in_docs:
                continue  # "README.md section ..." or a file of another folder: not a docs citation
            if not prefix and page not in pages:
                continue
            cited += 1
            where = f"{name}:{_line(text, m.start())}: {m.group(0)!r}"
            if page not in pages:
                broken.append(f"{where}: no docs/{page}")
                continue
            broken += [f"{where}: no section {n} in docs/{page}" for n in _numbers(numbers)
                       if n not in sections[page]]
        if in_docs:
            page = name[len("docs/"):]
            cited_spans = [m.span() for m in CITATION.finditer(text)]
            for m in BARE.finditer(text):
                if any(a <= m.start(2) < b for a, b in cited_spans):
                    continue  # counted above, with its page
                if m.group(1) and ACRONYM.fullmatch(m.group(1).rstrip(",;:")):
                    continue  # a section of another document, e.g. a paper
                cited += 1
                broken += [f"{name}:{_line(text, m.start())}: {m.group(0)!r}: no section {n} in this page"
                           for n in _numbers(m.group(2)) if n not in sections[page]]
    assert cited, "the citation pattern found nothing: it is broken"
    assert not broken, "\n".join(broken)


def test_relative_markdown_links_resolve():
    files = ["README.md"] + sorted(f"docs/{n}" for n in os.listdir(DOCS) if n.endswith(".md"))
    broken, checked = [], 0
    for name in files:
        with open(os.path.join(ROOT, name), encoding="utf-8") as f:
            text = _outside_code_fences(f.read())
        for m in LINK.finditer(text):
            target = m.group(1)
            if re.match(r"^[a-z][a-z0-9+.-]*:", target):
                continue  # http:, https:, mailto:
            checked += 1
            path, _, anchor = target.partition("#")
            full = os.path.normpath(os.path.join(ROOT, os.path.dirname(name), path)) if path \
                else os.path.join(ROOT, name)
            where = f"{name}:{_line(text, m.start())}: {target}"
            if not os.path.exists(full):
                broken.append(f"{where}: no such file")
            elif anchor and full.endswith(".md") and anchor not in _anchors(full):
                broken.append(f"{where}: no heading #{anchor}")
    assert checked, "the link pattern found nothing: it is broken"
    assert not broken, "\n".join(broken)


def test_the_command_reference_is_the_parsers():
    from toolchain.cli_reference import reference

    with open(os.path.join(DOCS, "cli.md")) as f:
        written = f.read()
    assert written == reference(), \
        "docs/cli.md is stale: python -m toolchain.cli_reference (make docs)"
