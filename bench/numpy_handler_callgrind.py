"""Instructions per ``np.empty(8)`` and its ``del``: NumPy's default handler against a
pool's (``activate(numpy=True)``), under callgrind, which counts the same on every run.

    python bench/numpy_handler_callgrind.py

Runs ``timeit`` of ``np.empty(8)`` (the bench's own statement, bench/numpy_handler.py)
for 10,000 and for 20,000 calls in each case, one process each under
``valgrind --tool=callgrind``, and divides the difference by 10,000: what start-up and
import cost cancels out.  Prints instructions per call in all and in the functions
where the two differ (the handlers' own, NumPy's lookup of its context variable, and
whatever else moved by more than half an instruction, e.g. pymalloc's pools).  Needs
valgrind.  Writes bench/results/numpy_handler_callgrind.txt.
"""

from __future__ import annotations

import datetime
import os
import re
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

CHILD = r"""
import sys, timeit, contextlib, numpy as np, mempool
mode, n = sys.argv[1], int(sys.argv[2])
pool = mempool.Pool("256MiB")
cm = pool.activate(numpy=True) if mode == "pool" else contextlib.nullcontext()
t = timeit.Timer("np.empty(8)", globals={"np": np})
with cm:
    t.timeit(1000)   # warm: the caches and bins of this size
with cm:
    t.timeit(n)
"""
COUNTS = (10_000, 20_000)


def profile(d: Path, mode: str, n: int) -> dict[str, int]:
    """Instructions by function name for one run."""
    out = d / f"{mode}-{n}.out"
    env = dict(os.environ, OPENBLAS_NUM_THREADS="1", PYTHONHASHSEED="0")
    subprocess.run(["valgrind", "--tool=callgrind", f"--callgrind-out-file={out}",
                    sys.executable, str(d / "child.py"), mode, str(n)],
                   check=True, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    text = subprocess.run(["callgrind_annotate", "--auto=no", "--threshold=100", str(out)],
                          check=True, capture_output=True, text=True).stdout
    fns: dict[str, int] = {"(total)": 0}
    for line in text.splitlines():
        m = re.match(r"\s*([\d,]+)\s+\(\s*[\d.]+%\)\s+(\S+)", line)
        if not m:
            continue
        ir = int(m.group(1).replace(",", ""))
        if m.group(2) == "PROGRAM":
            fns["(total)"] = ir
        elif ":" in m.group(2):
            name = m.group(2).rsplit(":", 1)[1]
            fns[name] = fns.get(name, 0) + ir
    return fns


def main() -> None:
    if not shutil.which("valgrind"):
        sys.exit("needs valgrind (apt install valgrind)")
    per: dict[str, dict[str, float]] = {}
    with tempfile.TemporaryDirectory() as td:
        d = Path(td)
        (d / "child.py").write_text(CHILD)
        for mode in ("default", "pool"):
            lo, hi = (profile(d, mode, n) for n in COUNTS)
            span = COUNTS[1] - COUNTS[0]
            per[mode] = {k: (hi.get(k, 0) - lo.get(k, 0)) / span for k in set(lo) | set(hi)}
    out = [f"command: python {' '.join(sys.argv)}",
           "date:    " + datetime.datetime.now(datetime.timezone.utc).strftime("%Y-%m-%d %H:%M:%S UTC"),
           f"python:  {sys.version.split()[0]}",
           "",
           "instructions per np.empty(8) and its del (callgrind; runs of "
           f"{COUNTS[1]:,} and {COUNTS[0]:,} calls, difference / {COUNTS[1] - COUNTS[0]:,})",
           f"   {'':<28} {'default':>9} {'pool':>9} {'pool - default':>15}"]
    d, p = per["default"], per["pool"]
    names = sorted((k for k in set(d) | set(p) if k != "(total)"
                    and abs(p.get(k, 0) - d.get(k, 0)) >= 0.5),
                   key=lambda k: -abs(p.get(k, 0) - d.get(k, 0)))
    for k in ["(total)", *names]:
        out.append(f"   {k:<28} {d.get(k, 0):>9.1f} {p.get(k, 0):>9.1f} "
                   f"{p.get(k, 0) - d.get(k, 0):>+15.1f}")
    tot = d["(total)"]
    out.append(f"   pool / default: {p['(total)'] / tot:.4f}x")
    print("\n".join(out))
    res = Path(__file__).parent / "results" / "numpy_handler_callgrind.txt"
    res.write_text("\n".join(out) + "\n")


if __name__ == "__main__":
    main()
