"""What ``pip install cachelayer`` installs: the library only. The service, the benchmarks and the test harness run
from the repository (docs/development.md, "Packaging"): installed as top-level packages, our ``service`` would
shadow a user's own ``service/``."""

from __future__ import annotations

import importlib.util
import os
import re
import shutil
import subprocess
import sys
import zipfile
from pathlib import Path

import pytest

from harness import REPO_ROOT

pytestmark = pytest.mark.slow

REPOSITORY_PACKAGES = ("service", "benchmarks", "harness")
# Not part of a build: the venv, run-time data, caches and earlier builds.
NOT_COPIED = shutil.ignore_patterns(
    ".venv", "var", ".git", "build", "dist", "*.egg-info", "__pycache__", ".mypy_cache", ".ruff_cache",
    ".pytest_cache", ".hypothesis",
)  # fmt: skip


def _offline_build_possible() -> bool:
    """setuptools can build a wheel in this venv (no index needed): 70.1+ has bdist_wheel, older needs ``wheel``."""
    if importlib.util.find_spec("setuptools") is None:
        return False
    import setuptools

    major, minor = (int(part) for part in setuptools.__version__.split(".")[:2])
    return (major, minor) >= (70, 1) or importlib.util.find_spec("wheel") is not None


@pytest.fixture(scope="module")
def wheel(tmp_path_factory: pytest.TempPathFactory) -> zipfile.ZipFile:
    # A copy of the tree, so the build leaves no build/ or egg-info in the repository and no stale build/lib
    # from an earlier build can slip into the wheel.
    source = tmp_path_factory.mktemp("source") / "cachelayer"
    shutil.copytree(REPO_ROOT, source, ignore=NOT_COPIED)
    out = tmp_path_factory.mktemp("wheel")
    argv = [sys.executable, "-m", "pip", "wheel", str(source), "--no-deps", "--quiet", "-w", str(out)]
    if _offline_build_possible():
        argv.append("--no-build-isolation")
    built = subprocess.run(argv, capture_output=True, text=True, timeout=300)
    assert built.returncode == 0, built.stdout + built.stderr
    (path,) = out.glob("cachelayer-*.whl")
    return zipfile.ZipFile(path)


def test_the_wheel_holds_cachelayer_only(wheel: zipfile.ZipFile) -> None:
    names = wheel.namelist()
    top_level = {name.split("/", 1)[0] for name in names}
    dist_info = {entry for entry in top_level if entry.endswith(".dist-info")}
    assert top_level - dist_info == {"cachelayer"}
    (info,) = dist_info
    assert wheel.read(f"{info}/top_level.txt").decode().split() == ["cachelayer"]


def test_the_wheel_holds_every_module_and_the_typing_marker(wheel: zipfile.ZipFile) -> None:
    source = {path.relative_to(REPO_ROOT).as_posix() for path in (REPO_ROOT / "cachelayer").rglob("*.py")}
    packaged = set(wheel.namelist())
    assert source <= packaged
    assert "cachelayer/py.typed" in packaged


def test_the_repository_packages_are_not_installed(tmp_path: Path) -> None:
    """Outside the repository (and without PYTHONPATH) only cachelayer imports: after a change to packaging,
    ``make venv`` reinstalls the editable package."""
    probe = "import importlib.util as u, sys; print(*[u.find_spec(n) is not None for n in sys.argv[1:]])"
    env = {key: value for key, value in os.environ.items() if key != "PYTHONPATH"}
    found = subprocess.run(
        [sys.executable, "-c", probe, "cachelayer", *REPOSITORY_PACKAGES], cwd=tmp_path, env=env,
        capture_output=True, text=True, timeout=60, check=True,
    )  # fmt: skip
    assert found.stdout.split() == ["True"] + ["False"] * len(REPOSITORY_PACKAGES)


def test_the_repository_packages_run_from_its_root() -> None:
    for module in REPOSITORY_PACKAGES:
        ran = subprocess.run(
            [sys.executable, "-c", f"import {module}"], cwd=REPO_ROOT, capture_output=True, text=True, timeout=60
        )
        assert ran.returncode == 0, ran.stderr


def test_nothing_edits_sys_path() -> None:
    """Tests, benchmarks, the service and the harness import each other normally (the repository root is on the
    path: the current directory for ``python -m``, ``pythonpath`` for pytest), never through a sys.path edit."""
    edit = re.compile(r"\bsys\.path\s*(?:\.(?:insert|append|extend)\b|\[|\+?=)")
    offenders = [
        f"{path.relative_to(REPO_ROOT)}:{number}: {line.strip()}"
        for top in ("tests", *REPOSITORY_PACKAGES)
        for path in sorted((REPO_ROOT / top).rglob("*.py"))
        if path != Path(__file__).resolve()
        for number, line in enumerate(path.read_text(encoding="utf-8").splitlines(), 1)
        if edit.search(line)
    ]
    assert offenders == []
