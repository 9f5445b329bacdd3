"""The docs site (`make docs`): mkdocs builds it in strict mode, and strict mode fails on what it should.

Runs the real ``mkdocs build --strict`` in a subprocess, with the repository's mkdocs.yml and hooks: once on the
repository (clean, with the API reference, the generated metrics tables and the plots in it), once on a copy
whose pages carry one defect of each kind the build must refuse. mkdocs comes from the ``docs`` extra, which the
``dev`` extra includes: a missing mkdocs fails here (never skips), so CI cannot go green without building.
"""

from __future__ import annotations

import importlib.util
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

import cachelayer

pytestmark = pytest.mark.slow

ROOT = Path(__file__).resolve().parent.parent
RESULTS = ROOT / "benchmarks" / "results"


def build(project: Path, site: Path) -> subprocess.CompletedProcess[str]:
    assert importlib.util.find_spec("mkdocs") is not None, "mkdocs is missing: pip install -e '.[docs]' (make venv)"
    return subprocess.run(
        [sys.executable, "-m", "mkdocs", "build", "--strict", "--config-file", str(project / "mkdocs.yml"),
         "--site-dir", str(site)],
        cwd=project, capture_output=True, text=True, timeout=110,
        env={**os.environ, "NO_MKDOCS_2_WARNING": "1"},
    )  # fmt: skip


def test_the_site_builds_in_strict_mode(tmp_path: Path) -> None:
    site = tmp_path / "site"
    result = build(ROOT, site)
    assert result.returncode == 0, result.stderr
    assert "WARNING" not in result.stderr, result.stderr

    # The API reference: a heading for every public name, read from the docstrings; no reST role left raw.
    reference = (site / "reference" / "index.html").read_text()
    for name in cachelayer.__all__:
        assert f'id="cachelayer.{name}"' in reference, name
    assert ":class:" not in re.sub(r"<[^>]+>", "", reference)

    # The metrics tables, generated from the code: every family the library's registry has, and the service's.
    metrics = (site / "metrics" / "index.html").read_text()
    for family in ("cachelayer_hits_total", "cachelayer_lease_waits_total", "cachelayer_function_gets_total",
                   "wallpaper_http_requests_total", "wallpaper_pool_connections"):  # fmt: skip
        assert f"<code>{family}</code>" in metrics, family
    assert "Times a caller waited for another process&#x27;s lease" in metrics or (
        "Times a caller waited for another process's lease" in metrics
    )

    # Every plot is shown on the plots page, and copied into the site; README.md is the home page.
    plots = (site / "benchmarks" / "index.html").read_text()
    for plot in sorted(RESULTS.glob("*.png")):
        assert f'src="results/{plot.name}"' in plots, plot.name
        assert (site / "benchmarks" / "results" / plot.name).is_file()
    home = (site / "index.html").read_text()
    assert 'href="operations/#redis-cluster"' in home  # README's docs/operations.md#redis-cluster, rewritten


def _copy_project(dest: Path) -> None:
    """The docs sources as they are (mkdocs.yml, README.md, docs/, the benchmark results); the code the API
    reference and the metrics tables read, linked."""
    shutil.copy(ROOT / "mkdocs.yml", dest / "mkdocs.yml")
    shutil.copy(ROOT / "README.md", dest / "README.md")
    shutil.copytree(ROOT / "docs", dest / "docs", ignore=shutil.ignore_patterns("__pycache__"))
    (dest / "benchmarks").mkdir()
    shutil.copytree(RESULTS, dest / "benchmarks" / "results", ignore=shutil.ignore_patterns("*.json*"))
    for code in ("cachelayer", "service", "config"):
        (dest / code).symlink_to(ROOT / code)


def _append(path: Path, text: str) -> None:
    path.write_text(path.read_text() + "\n" + text + "\n")


def test_strict_mode_fails_on_a_broken_link(tmp_path: Path) -> None:
    project = tmp_path / "project"
    project.mkdir()
    _copy_project(project)
    _append(project / "docs" / "contract.md", "See [the missing page](no-such-page.md).")
    result = build(project, tmp_path / "site")
    assert result.returncode != 0
    assert "contains a link 'no-such-page.md'" in result.stderr, result.stderr
    assert "Aborted with 1 warnings in strict mode" in result.stdout + result.stderr, result.stderr


def test_strict_mode_fails_on_each_kind_of_broken_reference(tmp_path: Path) -> None:
    project = tmp_path / "project"
    project.mkdir()
    _copy_project(project)
    docs = project / "docs"
    defects = {
        # a link out of docs/ to a file that is not there (the hook leaves it alone, mkdocs reports it)
        "../benchmarks/results/no-such-result.md": "[gone](../benchmarks/results/no-such-result.md)",
        # an anchor that no heading of the target page has
        "#no-such-section": "[gone](operations.md#no-such-section)",
        # an API reference target that does not exist
        "cachelayer.NoSuchName": "[`NoSuchName`][cachelayer.NoSuchName]",
    }
    _append(docs / "stampede.md", "\n\n".join(defects.values()))
    # README.md (the home page) links to a docs page that is not there
    _append(project / "README.md", "[gone](docs/no-such-doc.md)")
    defects["docs/no-such-doc.md"] = ""
    # a plot with no line on the plots page
    shutil.copy(RESULTS / "http.png", project / "benchmarks" / "results" / "uncaptioned.png")
    defects["benchmarks/results/uncaptioned.png is not shown"] = ""

    result = build(project, tmp_path / "site")
    assert result.returncode != 0
    for needle in defects:
        assert needle in result.stderr, (needle, result.stderr)
    assert f"Aborted with {len(defects)} warnings in strict mode" in result.stdout + result.stderr, result.stderr
