import os
import shutil
import sys
from pathlib import Path

import pytest

from common.paths import DEFAULT_MODEL_DIR

# Nothing in the suite may reach a model hub.
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")


def cli(name: str) -> list[str]:
    """The installed console script, as a user runs it (next to this interpreter)."""
    exe = Path(sys.executable).parent / name
    if exe.exists():
        return [str(exe)]
    found = shutil.which(name)
    if not found:
        pytest.fail(f"console script {name!r} not installed; run `make install`")
    return [found]


@pytest.fixture(scope="session")
def embedded_model():
    from common.llava_io import load_llava

    return load_llava(DEFAULT_MODEL_DIR)


@pytest.fixture(scope="session")
def exported_edge(tmp_path_factory) -> Path:
    """The embedded model's edge exported to ONNX once per session, by the command a user runs
    (`alignedvq export-edge`); its output is kept in export.log."""
    import subprocess

    out = tmp_path_factory.mktemp("edge-onnx")
    r = subprocess.run(cli("alignedvq") + ["export-edge", "--out", str(out)], capture_output=True,
                       text=True, timeout=600)
    assert r.returncode == 0, r.stderr[-3000:]
    (out / "export.log").write_text(r.stdout)
    return out
