"""Differences of callgrind runs of bench/journal_loop.py: Ir per pair per function.

Runs of 20,000 and 40,000 pairs, files /tmp/cg2-{base,this}-{file,shared}-N.out, made by::

    for v in base this; do for k in file shared; do for n in 20000 40000; do
      PYTHONPATH=<tree>/src valgrind --tool=callgrind \\
        --callgrind-out-file=/tmp/cg2-$v-$k-$n.out <real python, not a pyenv shim> \\
        bench/journal_loop.py $k tlsf 4096 $n
    done; done; done
"""
import collections
import re
import subprocess


def per_fn(path):
    out = subprocess.run(["callgrind_annotate", "--inclusive=no", "--threshold=100", path],
                         capture_output=True, text=True).stdout
    d = collections.Counter()
    for line in out.splitlines():
        m = re.match(r"\s*([\d,]+) \([^)]*\)\s+(\S+?):(\S+)", line)
        if m:
            d[m.group(3).split()[0]] += int(m.group(1).replace(",", ""))
    return d
for v in ("base", "this"):
    for k in ("file", "shared"):
        a, b = per_fn(f"/tmp/cg2-{v}-{k}-20000.out"), per_fn(f"/tmp/cg2-{v}-{k}-40000.out")
        diff = {f: (b[f] - a[f]) / 20000 for f in set(a) | set(b)}
        tot = sum(diff.values())
        print(f"== {v} {k}: {tot:.0f} Ir per pair (4096 B, TLSF)")
        mp = {f: x for f, x in diff.items() if x >= 3}
        for f, x in sorted(mp.items(), key=lambda t: -t[1])[:30]:
            print(f"   {x:7.1f} {f}")
