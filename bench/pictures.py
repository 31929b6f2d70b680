"""Draw the README's pictures into docs/ (matplotlib needed: pip install 'mempool[plot]').

    python bench/pictures.py [--out docs]

  docs/replay.png       python3-compileall through the strategies that serve a malloc
                        trace (Slab and Bump fail most of it by design): used, high water,
                        largest free, fragmentation over the operations
  docs/memory-map.png   a TLSF pool after the first 361,344 operations of that trace (the
                        op where its fragmentation peaks), replayed op by op from Python
  docs/bench.png        bench/results/bench.csv (the README's bench table), side by side
"""

from __future__ import annotations

import argparse
import csv
import os
import sys

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, os.path.join(HERE, "..", "src"))

from mempool import plot  # noqa: E402
from mempool import trace as tr  # noqa: E402
from mempool.cli import BENCH_OPTIONS  # noqa: E402
from mempool.view import view_pool  # noqa: E402


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--out", default=os.path.join(HERE, "..", "docs"))
    a = ap.parse_args()
    os.makedirs(a.out, exist_ok=True)
    t = tr.read(next(p for p in tr.bundled() if "python3" in p.name))
    names = ["tlsf", "bestfit", "buddy", "bitmap", "heap"]
    series = [tr.replay_series(t, n, samples=400, **BENCH_OPTIONS.get(n, {})) for n in names]
    plot.replay_chart(series, os.path.join(a.out, "replay.png"),
                      title=f"python -m mempool replay {t.name} (capacity 2 x maxlive)")

    head = t.head(361_344)
    s = tr.strategy_for(t, "tlsf")
    assert s is not None
    where: dict[int, int] = {}
    for o, i, n, al in zip(head.op.tolist(), head.id.tolist(), head.size.tolist(),
                           head.align.tolist(), strict=True):
        if o == 0:
            where[i] = s.alloc(n or 1, al)
        elif o == 1:
            s.free(where.pop(i))
        else:
            where[i] = s.realloc(where[i], n)
    plot.memory_map(view_pool(s, source=f"{t.name}, first {len(head):,} ops"),
                    os.path.join(a.out, "memory-map.png"), rows=48, cols=256)

    with open(os.path.join(HERE, "results", "bench.csv")) as f:
        rows = [r for r in csv.DictReader(f) if r["strategy"] not in ("slab", "bump")]
    plot.bench_chart(rows, os.path.join(a.out, "bench.png"),
                     title="python -m mempool bench (bench/results/bench.csv; Slab and Bump "
                     "left out: they fail most requests by design)")
    from PIL import Image  # matplotlib's own dependency

    for f in ("replay.png", "memory-map.png", "bench.png"):
        p = os.path.join(a.out, f)
        # a palette of 96 colours: a third of the bytes, no visible change (kept < 150 KB)
        Image.open(p).convert("RGB").quantize(96).save(p, optimize=True)
        print(f"{p}: {os.path.getsize(p):,} bytes")


if __name__ == "__main__":
    main()
