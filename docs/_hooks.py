"""mkdocs hooks of the docs site (mkdocs.yml ``hooks:``; `make docs`).

The pages link the way they read on GitHub: ``docs/*.md`` to each other, to ``../benchmarks/results/*.md`` and
to ``../README.md``; README.md to ``docs/*.md``. mkdocs knows only the files under ``docs_dir`` and, in strict
mode, fails on a link it cannot resolve. So:

- every file outside ``docs/`` that a page links to (found by scanning the pages, then the pages it brings in)
  joins the site under its repository path (``benchmarks/results/http.md``, ``.png``), read where it is: nothing
  is copied into ``docs/``; README.md is the home page (``docs/index.md`` includes it, below);
- a Markdown tree processor, run before mkdocs resolves links, rewrites each relative link from the repository
  path it has in the page's source file to the site path of its target. A target that does not exist is left
  alone, so strict mode reports it as the broken link it is;
- ``docs/index.md``'s ``<!-- include: ../README.md -->`` block is replaced with README.md, whose links are then
  taken relative to the repository root;
- ``docs/metrics.md``'s ``<!-- metrics-table: library|service -->`` markers become the tables that
  ``_metrics_table.py`` generates from the code;
- ``docs/benchmarks.md``'s ``<!-- benchmark-results -->`` becomes the list of result pages, and every plot under
  ``benchmarks/results/`` must be shown on that page (a plot without its line of caption fails the build).
"""

from __future__ import annotations

import logging
import posixpath
import re
from pathlib import Path
from typing import Any
from urllib.parse import unquote, urlsplit, urlunsplit
from xml.etree.ElementTree import Element

import _metrics_table
from markdown import Markdown
from markdown.extensions import Extension
from markdown.preprocessors import Preprocessor
from markdown.treeprocessors import Treeprocessor
from mkdocs.config.defaults import MkDocsConfig
from mkdocs.exceptions import PluginError
from mkdocs.plugins import event_priority
from mkdocs.structure.files import File, Files, InclusionLevel
from mkdocs.structure.pages import Page

log = logging.getLogger("mkdocs.hooks.cachelayer")

ROOT = Path(__file__).resolve().parent.parent
RESULTS = "benchmarks/results"  # repository path of the benchmark results: all of their pages and plots join
HOME = "README.md"  # the repository file that is the home page (docs/index.md)
# Never brought into the site, whatever links there.
_PRIVATE = (".git/", ".venv/", "var/", "site/")

_INCLUDE = re.compile(r"<!--\s*include:\s*(\S+)\s*-->.*?<!--\s*end include\s*-->", re.S)
_METRICS = re.compile(r"<!--\s*metrics-table:\s*(library|service)\s*-->")
_RESULTS = re.compile(r"<!--\s*benchmark-results\s*-->")
# reST cross-reference roles in docstrings (``:class:`Cache```, ``:meth:`~cachelayer.Cache.fetch```).
_ROLE = re.compile(r":(?:py:)?(?:class|func|meth|attr|exc|mod|data|obj|const):`(~?)([^`<>]+?)(?:\(\))?`")
# Link targets in Markdown source, for finding the outside files to bring in (the rewriting itself works on the
# parsed tree): inline links and images, reference definitions, HTML src/href.
_TARGETS = re.compile(r"\]\(\s*<?([^)\s>]+)|^[ ]{0,3}\[[^\]]+\]:\s*<?([^\s>]+)|\b(?:src|href)=\"([^\"]+)\"", re.M)


class _Site:
    """Where each page's source lives in the repository, and the site path of each repository file."""

    def __init__(self) -> None:
        self.docs = "docs"
        self.page_source: dict[str, str] = {}  # site src_uri of a page -> its source's repository path
        self.current: str | None = None  # src_uri of the page being rendered

    def repo_path(self, src_uri: str) -> str:
        return self.page_source.get(src_uri, posixpath.join(self.docs, src_uri))

    def site_path(self, repo_path: str) -> str:
        """The site src_uri of a repository file: under docs/, its path there; README.md, the home page; any
        other, its repository path."""
        if repo_path == HOME:
            return "index.md"
        prefix = self.docs + "/"
        return repo_path[len(prefix) :] if repo_path.startswith(prefix) else repo_path

    def target(self, from_repo_path: str, link_path: str) -> str | None:
        """The repository path a relative link of a file points to, or None when it leaves the repository."""
        joined = posixpath.normpath(posixpath.join(posixpath.dirname(from_repo_path), link_path))
        return None if joined == ".." or joined.startswith("../") else joined


SITE = _Site()


def _relative_target(url: str) -> str | None:
    """The path of a relative link to a file (no scheme, host or leading slash; not a bare #anchor)."""
    scheme, netloc, path, _, _ = urlsplit(url)
    if scheme or netloc or not path or path.startswith(("/", "\\")):
        return None
    return unquote(path)


class _RewriteLinks(Treeprocessor):
    def run(self, root: Element) -> None:
        page = SITE.current
        if page is None:
            return
        source = SITE.repo_path(page)
        for element in root.iter():
            key = {"a": "href", "img": "src"}.get(element.tag)
            url = element.get(key) if key else None
            if key is None or url is None or (path := _relative_target(url)) is None:
                continue
            target = SITE.target(source, path)
            if target is None or not (ROOT / target).exists():
                continue  # not there: left as written, for mkdocs to report
            site_path = SITE.site_path(target)
            relative = posixpath.relpath(site_path, posixpath.dirname(page) or ".")
            if path.endswith("/") and not relative.endswith("/"):
                relative += "/"
            _, _, _, query, fragment = urlsplit(url)
            element.set(key, urlunsplit(("", "", relative, query, fragment)))


class _Roles(Preprocessor):
    """reST roles as Markdown: a link to the API reference when the name is one of ``cachelayer.__all__`` (its
    anchor there is ``cachelayer.<name>``; autorefs resolves it, and strict mode fails on one it cannot), else the
    name as code."""

    def __init__(self, md: Markdown, public: frozenset[str]) -> None:
        super().__init__(md)
        self.public = public

    def role(self, match: re.Match[str]) -> str:
        short, name = match.group(1), match.group(2).strip()
        local = name.removeprefix("cachelayer.")
        shown = name.rsplit(".", 1)[-1] if short else name
        return f"[`{shown}`][cachelayer.{local}]" if local in self.public else f"`{shown}`"

    def run(self, lines: list[str]) -> list[str]:
        return [_ROLE.sub(self.role, line) if ":`" in line else line for line in lines]


class _Extension(Extension):
    def __init__(self, public: frozenset[str]) -> None:
        super().__init__()
        self.public = public

    def extendMarkdown(self, md: Markdown) -> None:
        md.preprocessors.register(_Roles(md, self.public), "cachelayer_rest_roles", 25)
        # mkdocs resolves links in its "relpath" processor (priority 0); this runs just before it.
        md.treeprocessors.register(_RewriteLinks(md), "cachelayer_repo_links", 1)


@event_priority(100)  # before mkdocstrings reads the Markdown extensions
def on_config(config: MkDocsConfig) -> MkDocsConfig:
    docs = Path(config.docs_dir).resolve()
    if docs.parent != ROOT:
        raise PluginError(f"docs_dir must be a folder of the repository root ({ROOT}), not {docs}")
    SITE.docs = docs.name
    SITE.page_source = {"index.md": HOME}
    import cachelayer

    config.markdown_extensions.append(_Extension(frozenset(cachelayer.__all__)))  # type: ignore[arg-type]
    return config


def _links_out(repo_path: str) -> set[str]:
    """Repository paths of the files outside docs/ that the Markdown file at ``repo_path`` links to."""
    found: set[str] = set()
    text = (ROOT / repo_path).read_text(encoding="utf-8")
    for match in _TARGETS.finditer(text):
        url = next(group for group in match.groups() if group)
        path = _relative_target(url)
        target = SITE.target(repo_path, path) if path else None
        if target is None or target.startswith(SITE.docs + "/") or target == HOME:
            continue
        if not target.startswith(_PRIVATE) and (ROOT / target).is_file():
            found.add(target)
    return found


def on_files(files: Files, config: MkDocsConfig) -> Files:
    wanted = {p.relative_to(ROOT).as_posix() for p in sorted((ROOT / RESULTS).glob("*")) if p.suffix in (".md", ".png")}
    pending = [HOME, *(posixpath.join(SITE.docs, f.src_uri) for f in files.documentation_pages())]
    pending += sorted(p for p in wanted if p.endswith(".md"))
    seen: set[str] = set()
    while pending:
        source = pending.pop()
        if source in seen:
            continue
        seen.add(source)
        for target in _links_out(source):
            if target not in wanted:
                wanted.add(target)
                if target.endswith(".md"):
                    pending.append(target)
    for repo_path in sorted(wanted):
        site_path = SITE.site_path(repo_path)
        if files.get_file_from_path(site_path) is not None:
            raise PluginError(f"{repo_path} would be the site's {site_path}, which docs/ already has")
        files.append(
            File.generated(config, site_path, abs_src_path=str(ROOT / repo_path), inclusion=InclusionLevel.NOT_IN_NAV)
        )
        if repo_path.endswith(".md"):
            SITE.page_source[site_path] = repo_path
    return files


def _include(match: re.Match[str]) -> str:
    target = SITE.target(posixpath.join(SITE.docs, "index.md"), match.group(1))
    if target != HOME:
        raise PluginError(f"docs/index.md includes {match.group(1)}: only ../{HOME} is supported")
    return (ROOT / HOME).read_text(encoding="utf-8")


def _benchmark_results(markdown: str, page: Page) -> str:
    """The result pages as a list; and every plot must be on the page."""
    source = SITE.repo_path(page.file.src_uri)
    shown = {SITE.target(source, path) for path in re.findall(r"!\[[^\]]*\]\(\s*<?([^)\s>]+)", markdown)}
    for plot in sorted((ROOT / RESULTS).glob("*.png")):
        repo_path = plot.relative_to(ROOT).as_posix()
        if repo_path not in shown:
            log.warning(
                f"{page.file.src_uri}: the plot {repo_path} is not shown; add it with a line saying what it shows"
            )
    items = []
    for result in sorted((ROOT / RESULTS).glob("*.md")):
        title = next(
            (line[2:].strip() for line in result.read_text(encoding="utf-8").splitlines() if line.startswith("# ")),
            result.stem,
        )
        link = posixpath.relpath(result.relative_to(ROOT).as_posix(), posixpath.dirname(source))
        items.append(f"- [{result.stem}]({link}): {title}")
    return _RESULTS.sub(lambda _: "\n".join(items), markdown)


def on_page_markdown(markdown: str, page: Page, config: MkDocsConfig, files: Files) -> str:
    SITE.current = page.file.src_uri
    if page.file.src_uri == "index.md":
        markdown, count = _INCLUDE.subn(_include, markdown)
        if count != 1:
            raise PluginError("docs/index.md must hold one <!-- include: ../README.md --> ... <!-- end include -->")
    if _METRICS.search(markdown):
        try:
            library = _metrics_table.library_families()
            tables = {
                "library": _metrics_table.library_markdown(library),
                "service": _metrics_table.service_markdown(library),
            }
        except _metrics_table.MetricsTableError as exc:
            raise PluginError(f"{page.file.src_uri}: the metrics tables: {exc}") from exc
        markdown = _METRICS.sub(lambda m: tables[m.group(1)], markdown)
    if _RESULTS.search(markdown):
        markdown = _benchmark_results(markdown, page)
    return markdown


def on_page_content(html: str, page: Page, **kwargs: Any) -> str:
    SITE.current = None
    return html
