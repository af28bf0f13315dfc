"""The wire contract under buf: `buf lint` (buf.yaml, STANDARD rules) and `buf breaking` (FILE
rules: no field renumbered, retyped or renamed), so a v1 client keeps working.

`buf breaking` runs against two baselines:
- each released contract (v1.0, v1.1, v1.2), committed as a buf image (protos/released/*.json), which
  every clone has, shallow or not;
- the previous commit's protos (and HEAD's, for edits not committed yet), read from git. A clone
  without that history (a shallow CI clone, a source tarball) skips this one with a reason in
  the summary; it never passes silently.
"""

from __future__ import annotations

import io
import os
import shutil
import subprocess
import sys
import tarfile
from pathlib import Path

import pytest

from common.paths import REPO_ROOT

pytestmark = pytest.mark.integration  # the buf binary and git

RELEASED = [REPO_ROOT / "protos" / "released" / f"alignedvq-{v}.json" for v in ("v1.0", "v1.1", "v1.2")]


def buf_binary() -> str:
    """The buf CLI from the `buf-bin` wheel (pyproject's test extra), next to this interpreter."""
    exe = Path(sys.executable).parent / "buf"
    if exe.exists():
        return str(exe)
    found = shutil.which("buf")
    if not found:
        pytest.fail("the buf CLI is not installed; `make install` installs it (buf-bin, in "
                    "pyproject's test extra)")
    return found


def buf(*args: str, tmp_path: Path) -> subprocess.CompletedProcess:
    # Its own cache directory: nothing is written to the user's home, and no state carries over.
    env = {**os.environ, "BUF_CACHE_DIR": str(tmp_path / "buf-cache")}
    return subprocess.run([buf_binary(), *args], cwd=REPO_ROOT, capture_output=True, text=True,
                          timeout=120, env=env)


def git(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run(["git", "-C", str(REPO_ROOT), *args], capture_output=True,
                          timeout=60)


def protos_at(ref: str, out: Path) -> Path | None:
    """protos/ as of ``ref``, extracted into ``out``; None when this clone lacks that commit."""
    if shutil.which("git") is None or git("rev-parse", "--verify", "-q",
                                          f"{ref}^{{commit}}").returncode != 0:
        return None
    archive = git("archive", "--format=tar", ref, "protos")
    if archive.returncode != 0:  # the commit predates protos/
        return None
    with tarfile.open(fileobj=io.BytesIO(archive.stdout)) as tar:
        tar.extractall(out, filter="data")
    return out / "protos"


def test_buf_lint_passes(tmp_path):
    result = buf("lint", tmp_path=tmp_path)
    assert result.returncode == 0, result.stdout + result.stderr


@pytest.mark.parametrize("released", RELEASED, ids=lambda p: p.stem)
def test_no_breaking_change_against_the_released_v1(released, tmp_path):
    assert released.is_file(), f"{released} is missing: the baseline buf breaking needs"
    result = buf("breaking", "--against", str(released), tmp_path=tmp_path)
    assert result.returncode == 0, result.stdout + result.stderr


def test_no_breaking_change_against_the_previous_commit(tmp_path):
    checked = []
    for ref in ("HEAD~1", "HEAD"):
        previous = protos_at(ref, tmp_path / ref.replace("~", "-"))
        if previous is None:
            continue
        result = buf("breaking", "--against", str(previous), tmp_path=tmp_path)
        assert result.returncode == 0, f"against {ref}:\n{result.stdout}{result.stderr}"
        checked.append(ref)
    if "HEAD~1" not in checked:
        shallow = (git("rev-parse", "--is-shallow-repository").stdout.decode().strip()
                   if shutil.which("git") else "")
        pytest.skip(f"this clone has no previous commit to compare with (shallow clone: "
                    f"{shallow or 'not a git clone'}; compared with: {checked or 'nothing'}); "
                    f"the released baselines were still checked. `git fetch --deepen=1` "
                    f"brings the history back")


def test_breaking_check_catches_a_retyped_field(tmp_path):
    """The check itself can fail: a copy of the contract with a field's type changed is refused."""
    copy = tmp_path / "changed"
    shutil.copytree(REPO_ROOT / "protos", copy / "protos")
    (copy / "buf.yaml").write_text((REPO_ROOT / "buf.yaml").read_text())
    proto = copy / "protos" / "alignedvq" / "v1" / "inference.proto"
    text = proto.read_text()
    assert "  uint32 bits = 5;" in text
    proto.write_text(text.replace("  uint32 bits = 5;", "  uint64 bits = 5;", 1))
    env = {**os.environ, "BUF_CACHE_DIR": str(tmp_path / "buf-cache")}
    result = subprocess.run([buf_binary(), "breaking", "--against", str(RELEASED[-1])], cwd=copy,
                            capture_output=True, text=True, timeout=120, env=env)
    assert result.returncode != 0
    assert 'changed type from "uint32" to "uint64"' in result.stdout, result.stdout
