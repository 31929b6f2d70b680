#!/bin/bash
# Speed before / after a change, alternated in one session: pair.py, pool.py and the
# bench, three rounds each, medians compared (bench/results/cleanup_before_after.txt).
# usage: git worktree add ../base <commit> && (cd ../base && python setup.py build_ext --inplace); build this tree in place; run from the repo root
BASE=${BASE:-../base}
for r in 1 2 3; do
  for v in base main; do
    PYTHONPATH=$([ $v = base ] && echo $BASE || echo .)/src python bench/pair.py --rounds 3 --number 100000 --out /tmp/pair-$v-$r.csv > /tmp/pair-$v-$r.txt 2>&1
    PYTHONPATH=$([ $v = base ] && echo $BASE || echo .)/src python bench/pool.py --rounds 3 --number 50000 --out /tmp/pool-$v-$r.csv > /tmp/pool-$v-$r.txt 2>&1
    PYTHONPATH=$([ $v = base ] && echo $BASE || echo .)/src python -m mempool bench --csv /tmp/bench-$v-$r.csv > /tmp/bench-$v-$r.txt 2>&1
  done
done
python - <<'PY'
import csv, statistics as st
def load(kind, v, key, val):
    out = {}
    for r in (1, 2, 3):
        for row in csv.DictReader(open(f"/tmp/{kind}-{v}-{r}.csv")):
            out.setdefault(" / ".join(row[x] for x in key), []).append(float(row[val]))
    return {k: st.median(x) for k, x in out.items()}
for kind, key, val in [("pair", ["candidate"], "ns_per_pair_median"), ("pool", ["case"], "ns_median"),
                       ("bench", ["trace", "strategy"], "native_ns_per_op"),
                       ("bench", ["trace", "strategy"], "python_ns_per_op")]:
    b, m = load(kind, "base", key, val), load(kind, "main", key, val)
    print(f"== {kind} {val}: before after ratio")
    rs = []
    for k in b:
        if b[k] == b[k] and k in m:
            print(f"{k:40s} {b[k]:9.1f} {m[k]:9.1f} {m[k] / b[k]:.3f}")
            rs.append(m[k] / b[k])
    print("geomean", round(st.geometric_mean(rs), 3))
PY
