"""Differences of callgrind runs of bench/journal_loop.py: Ir per pair, per function and in all.

Runs of 20,000 and 40,000 pairs, files /tmp/cg2-{variant}-{strategy}-{pool}-N.out (variant:
base = a build of c4ece70, nojournal = this tree built by bench/journal_nojournal.sh,
this = this tree), made by::

    for v in base nojournal this; do for s in tlsf bestfit; do for k in file shared; do
      for n in 20000 40000; do
        PYTHONPATH=<v's tree>/src OPENBLAS_NUM_THREADS=1 PYTHONHASHSEED=0 valgrind \\
          --tool=callgrind --callgrind-out-file=/tmp/cg2-$v-$s-$k-$n.out \\
          <real python, not a pyenv shim> bench/journal_loop.py $k $s 4096 $n
    done; done; done; done

    python bench/journal_callgrind_diff.py            # the summary table
    python bench/journal_callgrind_diff.py --functions  # and each run's functions
(a variant without files is left out)
"""
import collections
import os
import re
import subprocess
import sys

VARIANTS = ("base", "nojournal", "this")


def per_fn(path):
    out = subprocess.run(["callgrind_annotate", "--inclusive=no", "--threshold=100", path],
                         capture_output=True, text=True, check=True).stdout
    d = collections.Counter()
    for line in out.splitlines():
        m = re.match(r"\s*([\d,]+) \([^)]*\)\s+(\S+?):(\S+)", line)
        if m:
            d[m.group(3).split()[0]] += int(m.group(1).replace(",", ""))
    return d


def pair(v, s, k):
    f = f"/tmp/cg2-{v}-{s}-{k}-%d.out"
    have = [os.path.exists(f % n) for n in (20000, 40000)]
    if not any(have):
        return None
    if not all(have):
        sys.exit(f"{f % 20000} and {f % 40000}: one of the two runs is missing")
    a, b = per_fn(f % 20000), per_fn(f % 40000)
    return {fn: (b[fn] - a[fn]) / 20000 for fn in set(a) | set(b)}


runs = {(v, s, k): pair(v, s, k) for v in VARIANTS for s in ("tlsf", "bestfit")
        for k in ("file", "shared")}
have = [v for v in VARIANTS if any(runs[v, s, k] for s in ("tlsf", "bestfit") for k in ("file", "shared"))]
print(f"{'strategy':8s} {'pool':7s}" + "".join(f" {v:>9s}" for v in have)
      + "".join(f" {'this/' + v[:4]:>9s}" for v in have if v != "this") + f" {'memcpy':>7s}")
for s in ("tlsf", "bestfit"):
    for k in ("file", "shared"):
        tot = {v: sum(runs[v, s, k].values()) for v in have if runs[v, s, k]}
        if "this" not in tot:
            continue
        memcpy = sum(x for fn, x in runs["this", s, k].items() if "memcpy" in fn or "memmove" in fn)
        print(f"{s:8s} {k:7s}" + "".join(f" {tot[v]:9.0f}" if v in tot else f" {'-':>9s}" for v in have)
              + "".join(f" {tot['this'] / tot[v]:9.3f}" if v in tot else f" {'-':>9s}"
                        for v in have if v != "this") + f" {memcpy:7.0f}")
if "--functions" in sys.argv:
    for (v, s, k), d in runs.items():
        if d:
            print(f"== {v} {s} {k}: {sum(d.values()):.0f} Ir per pair (4096 B)")
            for fn, x in sorted(((fn, x) for fn, x in d.items() if x >= 3), key=lambda t: -t[1])[:30]:
                print(f"   {x:7.1f} {fn}")
