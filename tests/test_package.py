"""The package as users get it: its public namespace, and what the wheel and the sdist
carry."""

import os
import pkgutil
import subprocess
import sys
import tarfile
import zipfile
from pathlib import Path

import pytest

import mempool

ROOT = Path(__file__).resolve().parents[1]


def test_public_names_are_all():
    # every public attribute of the package is in __all__, or one of its own modules
    # (importing a submodule sets it as an attribute); nothing else, so no stray name
    # (a `from __future__ import annotations` left `mempool.annotations`) can come back
    modules = {m.name for m in pkgutil.iter_modules(mempool.__path__)}
    public = {n for n in dir(mempool) if not n.startswith("_")}
    assert public - set(mempool.__all__) <= modules, public - set(mempool.__all__) - modules
    assert set(mempool.__all__) <= public
    assert len(mempool.__all__) == len(set(mempool.__all__))
    assert "annotations" not in dir(mempool)


def test_star_import_gives_all():
    ns: dict[str, object] = {}
    exec("from mempool import *", ns)
    assert {n for n in ns if n != "__builtins__"} == set(mempool.__all__)


# Building a wheel and an sdist takes about a minute on two cores: .ci/run runs this
# with MEMPOOL_TEST_DIST=1, after the plain build (it needs setuptools and numpy, which
# the plain build installed).
@pytest.mark.skipif(os.environ.get("MEMPOOL_TEST_DIST") != "1",
                    reason="builds a wheel and an sdist (~1 min): MEMPOOL_TEST_DIST=1")
def test_wheel_and_sdist_contents(tmp_path):
    if not (ROOT / "pyproject.toml").exists():
        pytest.skip("not run from a source tree")

    def build(what, *args):
        r = subprocess.run([sys.executable, "-m", "pip", what, *args, "--no-deps",
                            "--no-build-isolation", "-q", "-w", str(tmp_path / what)],
                           capture_output=True, text=True, cwd=ROOT)
        assert r.returncode == 0, r.stdout + r.stderr
        return next((tmp_path / what).glob("*.whl"))

    r = subprocess.run([sys.executable, "-c",
                        "import sys; from setuptools import build_meta as b; "
                        "print(b.build_sdist(sys.argv[1]))", str(tmp_path / "sdist")],
                       capture_output=True, text=True, cwd=ROOT)
    assert r.returncode == 0, r.stdout + r.stderr
    sdist = tmp_path / "sdist" / r.stdout.split()[-1]
    wheel = build("wheel", str(ROOT))
    from_sdist = build("wheel", str(sdist))  # the sdist alone builds the package

    for whl in (wheel, from_sdist):
        names = zipfile.ZipFile(whl).namelist()
        pkg = [n for n in names if n.startswith("mempool/")]
        # no C sources or headers: the built extension is what an installed package needs
        assert not [n for n in pkg if n.endswith((".c", ".h"))], pkg
        assert not [n for n in pkg if "/_core/" in n or "/_native/" in n or "/_preload/" in n], pkg
        assert any(n.startswith("mempool/_mempool.") and n.endswith(".so") for n in pkg)
        assert any(n.startswith("mempool/_malloc_record.") and n.endswith(".so") for n in pkg)
        for need in ("mempool/__init__.py", "mempool/_mempool.pyi", "mempool/py.typed"):
            assert need in pkg
        # the traces: `python -m mempool bench` replays them from the installed package
        traces = {n for n in pkg if n.startswith("mempool/traces/")}
        assert traces == {f"mempool/traces/{p.name}" for p in mempool.trace.bundled()}
        assert traces

    with tarfile.open(sdist) as t:
        members = {m.split("/", 1)[1] for m in t.getnames() if "/" in m}
    for src in (ROOT / "src/mempool/_core").glob("*.[ch]"):
        assert f"src/mempool/_core/{src.name}" in members
    for src in (ROOT / "src/mempool/_native").glob("*.[ch]"):
        assert f"src/mempool/_native/{src.name}" in members
    assert "src/mempool/_preload/malloc_record.c" in members
    assert {"setup.py", "pyproject.toml", "README.md"} <= members
