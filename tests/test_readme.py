"""Every ```python block of the README runs as written, on its own, in a fresh
interpreter in an empty temporary directory (the definition of done).  A block that
starts processes runs once under each start method (fork, spawn, forkserver: the
default changes with the platform and the Python version, forkserver from 3.14)."""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

README = Path(__file__).resolve().parent.parent / "README.md"
BLOCKS = re.findall(r"^```python\n(.*?)^```", README.read_text(), flags=re.S | re.M)


def test_the_readme_has_python_blocks() -> None:
    assert len(BLOCKS) >= 5


def _starts_processes(code: str) -> bool:
    return any(w in code for w in ("multiprocessing", "ProcessPoolExecutor", "mp.Process"))


CASES = [
    pytest.param(code, method, id=f"block{i}" + (f"-{method}" if method else ""))
    for i, code in enumerate(BLOCKS)
    for method in (("fork", "spawn", "forkserver") if _starts_processes(code) else (None,))
]


def test_blocks_that_start_processes_are_found() -> None:
    assert sum(1 for c in CASES if c.values[1]) >= 6  # the crash storm, the executor, ...


@pytest.mark.parametrize(("code", "method"), CASES)
def test_readme_block_runs(code: str, method: str | None, tmp_path: Path) -> None:
    script = tmp_path / "block.py"
    # the block as written; the start method is the process-wide default it inherits
    prelude = (f"import multiprocessing; multiprocessing.set_start_method({method!r}, "
               f"force=True)\n" if method else "")
    script.write_text(prelude + code)
    env = dict(os.environ)
    src = str(Path(__file__).resolve().parent.parent / "src")
    if (Path(src) / "mempool").is_dir() and any((Path(src) / "mempool").glob("_mempool*.so")):
        env["PYTHONPATH"] = os.pathsep.join(filter(None, [src, env.get("PYTHONPATH")]))
    r = subprocess.run([sys.executable, str(script)], cwd=tmp_path, env=env,
                       capture_output=True, text=True, timeout=120)
    assert r.returncode == 0, f"README block failed:\n{code}\n--- stderr:\n{r.stderr[-3000:]}"
