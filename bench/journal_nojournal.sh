#!/bin/bash
# A copy of this tree (its working files, as they are) in DIR, built with
# MEMPOOL_NO_JOURNAL=1: the journal compiled out, for bench/journal_before_after.sh's
# "nojournal" column (the journal's own cost).  Never a build to use: no crash consistency.
# usage (from the repo root): bench/journal_nojournal.sh /tmp/jnoj
set -e
DIR=${1:?usage: bench/journal_nojournal.sh DIR}
rm -rf "$DIR"
mkdir -p "$DIR"
git ls-files -z | xargs -0 tar -c | tar -x -C "$DIR"
(cd "$DIR" && MEMPOOL_NO_JOURNAL=1 python setup.py build_ext --inplace -q > build.log 2>&1) ||
  { cat "$DIR/build.log"; exit 1; }
echo "$DIR: this tree, MEMPOOL_NO_JOURNAL=1"
