"""Optional extras: say which one to install instead of ending in ``ModuleNotFoundError``.

pyproject.toml's ``[project.optional-dependencies]`` names the extras; this table maps the
modules they provide (import names, which differ from package names: ``skimage`` is
scikit-image) to the extra and the package.
"""

from __future__ import annotations

import importlib.util

# import name -> (extra, package)
PROVIDED_BY = {
    "matplotlib": ("bench", "matplotlib"),
    "skimage": ("bench", "scikit-image"),
    "hypothesis": ("test", "hypothesis"),
    "cryptography": ("test", "cryptography"),
    "pytest": ("test", "pytest"),
}


class MissingExtra(RuntimeError):
    pass


def _message(command: str, extra: str, packages: list[str]) -> str:
    return (f"{command} needs the '{extra}' extra ({', '.join(packages)} not installed): "
            f"pip install 'alignedvq[{extra}]' (or `pip install -e '.[{extra}]'` in a checkout)")


def require(command: str, *modules: str) -> None:
    """Raise :class:`MissingExtra` naming the extra when any of ``modules`` is missing; checked
    before a long run starts, not when its last step imports them."""
    missing = [m for m in modules if importlib.util.find_spec(m) is None]
    if missing:
        extra = PROVIDED_BY[missing[0]][0]
        raise MissingExtra(_message(command, extra, [PROVIDED_BY[m][1] for m in missing]))


def explain(error: ModuleNotFoundError, command: str) -> str | None:
    """The install hint for a module an extra provides; None for any other missing module
    (a broken install, which the traceback explains better)."""
    top = (error.name or "").split(".")[0]
    if top not in PROVIDED_BY:
        return None
    extra, package = PROVIDED_BY[top]
    return _message(command, extra, [package])
