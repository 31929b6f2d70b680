"""What the --malloc recorder costs a program: the same command run plainly and under
the preload recorder (its trace body written to a scratch file), interleaved rounds,
best of each.  "after s": what record_malloc adds once the program has exited
(reading and validating the trace, writing it with its header, gzip), from one more
run through trace.record_malloc.

    PYTHONPATH=src python bench/record_malloc_cost.py [--rounds 5]

Workloads: CPython with every object through malloc (PYTHONMALLOC=malloc) round-
tripping JSON, and gzip -9 of 32 MiB of base64 text.
"""

from __future__ import annotations

import argparse
import base64
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from mempool import trace

PY = os.path.realpath(sys.executable)
JSON = ("import json\n"
        "for _ in range(30):\n"
        "    json.loads(json.dumps({str(i): list(range(50)) for i in range(2000)}))\n")


def timed(cmd: list[str], env: dict[str, str]) -> float:
    t0 = time.perf_counter()
    subprocess.run(cmd, env=env, check=True, stdout=subprocess.DEVNULL)
    return time.perf_counter() - t0


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--rounds", type=int, default=5)
    a = ap.parse_args()
    lib = str(trace.malloc_recorder())
    with tempfile.TemporaryDirectory() as tmp:
        text = Path(tmp, "in.txt")
        text.write_bytes(base64.encodebytes(os.urandom(24 << 20)))
        work = {
            "python json (PYTHONMALLOC=malloc)": [PY, "-S", "-c", JSON],
            "gzip -9 32 MiB": ["gzip", "-9", "-f", "-k", str(text)],
        }
        base = dict(os.environ, PYTHONMALLOC="malloc")
        base.pop("LD_PRELOAD", None)
        rec = dict(base, LD_PRELOAD=lib, MEMPOOL_MALLOC_OUT=os.path.join(tmp, "body"))
        print(f"{'workload':36} {'plain s':>8} {'recorded s':>10} {'ratio':>6} {'ops':>12} "
              f"{'after s':>8}")
        for name, cmd in work.items():
            plain, recorded = [], []
            for _ in range(a.rounds):
                plain.append(timed(cmd, base))
                recorded.append(timed(cmd, rec))
            os.environ["PYTHONMALLOC"] = "malloc"  # (for the command record_malloc runs)
            t0 = time.perf_counter()
            r = trace.record_malloc(cmd, os.path.join(tmp, "out.trace.gz"))
            after = time.perf_counter() - t0 - min(recorded)
            print(f"{name:36} {min(plain):8.2f} {min(recorded):10.2f} "
                  f"{min(recorded) / min(plain):6.2f} {r.ops:12,} {after:8.2f}")


if __name__ == "__main__":
    main()
