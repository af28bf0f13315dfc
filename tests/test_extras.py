"""A command that needs an optional extra names the extra to install."""

import sys

from alignedvq.cli import main
from alignedvq.extras import explain


def test_bench_without_the_bench_extra_names_it(monkeypatch, tmp_path, capsys):
    # None in sys.modules makes the import fail as if scikit-image were not installed.
    monkeypatch.setitem(sys.modules, "skimage", None)
    assert main(["bench", "--quick", "--out", str(tmp_path)]) == 2
    err = capsys.readouterr().err
    assert "'bench' extra" in err and "scikit-image" in err
    assert "pip install 'alignedvq[bench]'" in err and "Traceback" not in err
    assert not any(tmp_path.iterdir())  # refused before any work


def test_only_modules_of_an_extra_get_the_hint():
    assert "'bench' extra" in explain(ModuleNotFoundError(name="matplotlib.pyplot"), "x")
    assert explain(ModuleNotFoundError(name="torch"), "x") is None
