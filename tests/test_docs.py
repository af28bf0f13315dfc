"""The documentation cannot go stale: docs/cli.md is the rendering of the parsers, every repo
path and relative link in README.md and docs/ exists, and nothing points into ``shared/`` (a
user's clone does not have it)."""

from __future__ import annotations

import re
from pathlib import Path

from common.paths import REPO_ROOT

PAGES = sorted([REPO_ROOT / "README.md", *(REPO_ROOT / "docs").rglob("*.md")])
# Top-level names a backticked path may start with: what the checkout holds, plus the folders
# the layout no longer has (so a stale `models/...` or `offline/...` path fails).
TOP = {p.name for p in REPO_ROOT.iterdir()} | {"models", "offline", "training", "benchmarks"}
TOP -= {".git"}
# Written by a command, never committed (.gitignore).
GENERATED = ("common/models/tiny-llava-edge",)
CODE = re.compile(r"(`+)(.+?)\1", re.S)
LINK = re.compile(r"\[[^\]]*\]\(([^)\s]+)\)")
SHARED = re.compile(r"shared/[A-Za-z_]+\.md")
SKIP_DIRS = {".git", ".venv", ".venv-lmms", "venv", "node_modules", "__pycache__", "runs", "build", "dist",
             "tests", ".pytest_cache", ".hypothesis", "tiny-llava-edge"}


def _repo_paths(text: str) -> set[str]:
    found = set()
    for _, span in CODE.findall(text):
        token = span.strip()
        if not token or any(c.isspace() for c in token):
            continue
        token = re.sub(r":\d+$", "", token).rstrip(".,;:)")
        if token.split("/")[0] in TOP:
            found.add(token)
    return found


def _exists(path: str) -> bool:
    if path.startswith(GENERATED):
        return True
    if "*" in path:
        return any(REPO_ROOT.glob(path))
    return (REPO_ROOT / path).exists()


def test_cli_reference_is_current():
    from alignedvq.cli_reference import OUT, render

    assert OUT.read_text() == render(), (
        "docs/cli.md differs from the parsers: run `python -m alignedvq.cli_reference`")


def test_every_backticked_repo_path_exists():
    missing = [f"{page.relative_to(REPO_ROOT)}: `{path}`" for page in PAGES
               for path in sorted(_repo_paths(page.read_text())) if not _exists(path)]
    assert not missing, "paths that do not exist:\n" + "\n".join(missing)


def test_every_relative_link_exists():
    missing = []
    for page in PAGES:
        for target in LINK.findall(page.read_text()):
            if re.match(r"[a-z]+:", target) or target.startswith("#"):
                continue
            path = target.split("#")[0]
            if "shared/" in path or not (page.parent / path).exists():
                missing.append(f"{page.relative_to(REPO_ROOT)}: ({target})")
    assert not missing, "links to nothing:\n" + "\n".join(missing)


def _text_files(root: Path):
    for path in root.iterdir():
        if path.is_dir():
            if path.name not in SKIP_DIRS and not path.name.endswith(".egg-info"):
                yield from _text_files(path)
        elif path.is_file() and path.stat().st_size < 2_000_000:
            try:
                yield path, path.read_text()
            except (UnicodeDecodeError, OSError):
                continue


def test_nothing_outside_tests_points_into_shared():
    # What `git grep -E "shared/[A-Za-z_]+\.md"` would find, read in-process (a unit test
    # starts no process).
    hits = [f"{path.relative_to(REPO_ROOT)}:{text.count(chr(10), 0, m.start()) + 1}: {m.group()}"
            for path, text in _text_files(REPO_ROOT) for m in SHARED.finditer(text)]
    assert not hits, "references to shared/ (use docs/ instead):\n" + "\n".join(hits)
