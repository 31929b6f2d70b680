#!/bin/bash
# The journal's cost, alternated in one session: bench/journal.py run against
#   base       a tree from before the journal (and before the rest of issue 10: leases,
#              block_at references, attach checks; c4ece70),
#   nojournal  this tree built with MEMPOOL_NO_JOURNAL=1 (setup.py): the journal compiled
#              out and nothing else, so this/nojournal is the journal's own cost,
#   this       this tree, built in place,
# base, nojournal, this, base, ... ROUNDS times each; per-case medians of the per-run
# medians, and the ratios (bench/results/journal_before_after.txt).
# usage (from the repo root, this tree built in place):
#   git worktree add /tmp/jbase c4ece70 && (cd /tmp/jbase && python setup.py build_ext --inplace -q)
#   bench/journal_nojournal.sh /tmp/jnoj    # a copy of this tree, MEMPOOL_NO_JOURNAL=1
#   BASE=/tmp/jbase NOJ=/tmp/jnoj ROUNDS=7 bench/journal_before_after.sh [journal.py options]
# (without NOJ: base and this only)
set -e
BASE=${BASE:-/tmp/jbase}
NOJ=${NOJ:-}
ROUNDS=${ROUNDS:-7}
TMP=${TMP_OUT:-$(mktemp -d /tmp/journal-ba.XXXXXX)}
ARGS=${*:---repeat 7 --number 20000 --rt-number 400}
VARIANTS="base${NOJ:+ nojournal} this"
echo "# bench/journal_before_after.sh  BASE=$BASE ($(git -C "$BASE" rev-parse --short HEAD))${NOJ:+  NOJ=$NOJ} this=$(git rev-parse --short HEAD)$(git diff --quiet HEAD -- src || echo +dirty)  ROUNDS=$ROUNDS  journal.py $ARGS"
echo "# $(date -u '+%Y-%m-%d %H:%M UTC'); nproc $(nproc); $(grep -m1 'model name' /proc/cpuinfo | sed 's/\s\+/ /g'); $(python -V); $(uname -r)"
src_of() { case $1 in base) echo "$BASE/src" ;; nojournal) echo "$NOJ/src" ;; *) echo ./src ;; esac; }
# each variant imports the build it names (not another mempool on the path), and the
# nojournal one is that build
for v in $VARIANTS; do
  src=$(src_of "$v")
  PYTHONPATH=$src python -W ignore - "$src" "$v" <<'PY'
import os, sys
import mempool
src, v = os.path.realpath(sys.argv[1]), sys.argv[2]
at = os.path.realpath(os.path.dirname(mempool.__file__))
if at != os.path.join(src, "mempool"):
    sys.exit(f"{v}: imported mempool from {at}, not {src}/mempool (built in place?)")
journal = getattr(mempool._mempool, "JOURNAL_BUILD", True)
if journal != (v != "nojournal"):
    sys.exit(f"{v}: its build has JOURNAL_BUILD={journal}")
PY
done
for r in $(seq 1 "$ROUNDS"); do
  for v in $VARIANTS; do
    src=$(src_of "$v")
    # shellcheck disable=SC2086
    PYTHONPATH=$src python -W ignore::RuntimeWarning bench/journal.py $ARGS --out "$TMP/$v-$r.csv" > "$TMP/$v-$r.txt"
  done
done
ROUNDS=$ROUNDS TMP=$TMP VARIANTS=$VARIANTS python - <<'PY'
import csv, os, statistics as st
R, T = int(os.environ["ROUNDS"]), os.environ["TMP"]
noj = "nojournal" in os.environ["VARIANTS"].split()
def load(v):
    out = {}
    for r in range(1, R + 1):
        for row in csv.DictReader(open(f"{T}/{v}-{r}.csv")):
            out.setdefault((row["strategy"], row["pool"], row["case"]), []).append(float(row["ns_median"]))
    return out
b, m = load("base"), load("this")
n = load("nojournal") if noj else None
print(f"# ns per statement: median over {R} runs of each run's median; range = min..max of the runs' medians")
print("# / control: this/base over the private pool's this/base for the same strategy and case")
if noj:
    print("# this/noj: this over the same tree with the journal compiled out (the journal's own cost)")
print(f"{'strategy':8s} {'pool':8s} {'case':16s} {'base':>9s}" + (f" {'nojournal':>9s}" if noj else "")
      + f" {'this':>9s}" + (f" {'this/noj':>9s}" if noj else "")
      + f" {'this/base':>9s} {'/ control':>9s}   {'base range':>17s} {'this range':>17s}")
for k in b:
    bb, mm = st.median(b[k]), st.median(m[k])
    c = (k[0], "private", k[2])
    ctl = (mm / bb) / (st.median(m[c]) / st.median(b[c]))
    guarded = k[1] != "private" and k[2] != "rt 1MiB"
    flag = ""
    nn = st.median(n[k]) if noj else None
    if guarded and (mm / nn if noj else mm / bb) > 1.25:
        flag = "  > 1.25"
    print(f"{k[0]:8s} {k[1]:8s} {k[2]:16s} {bb:9.1f}" + (f" {nn:9.1f}" if noj else "")
          + f" {mm:9.1f}" + (f" {mm / nn:9.3f}" if noj else "")
          + f" {mm / bb:9.3f} {ctl:9.3f}   "
          f"{min(b[k]):8.1f}..{max(b[k]):<8.1f} {min(m[k]):8.1f}..{max(m[k]):<8.1f}{flag}")
PY
echo "# raw runs in $TMP"
