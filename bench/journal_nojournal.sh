#!/bin/bash
# A copy of this tree (its working files as they are: tracked, and untracked ones git
# does not ignore) in DIR, built with MEMPOOL_NO_JOURNAL=1: the journal compiled out,
# for bench/journal_before_after.sh's "nojournal" column (the journal's own cost).
# Never a build to use: no crash consistency (mempool warns at import,
# mempool._mempool.JOURNAL_BUILD is False).  DIR must not exist, or be such a copy.
# usage (anywhere in the repo): bench/journal_nojournal.sh /tmp/jnoj
set -euo pipefail
DIR=${1:?usage: bench/journal_nojournal.sh DIR}
cd "$(git rev-parse --show-toplevel)"
MARK=.mempool-nojournal-copy
if [ -e "$DIR" ]; then
    [ -f "$DIR/$MARK" ] || { echo "$DIR exists and is not a copy this script made: refusing" >&2; exit 1; }
    rm -rf "$DIR"
fi
mkdir -p "$DIR"
touch "$DIR/$MARK"
git ls-files -z --cached --others --exclude-standard | xargs -0 tar -c | tar -x -C "$DIR"
(cd "$DIR" && MEMPOOL_NO_JOURNAL=1 python setup.py build_ext --inplace -q > build.log 2>&1) ||
    { cat "$DIR/build.log"; exit 1; }
echo "$DIR: this tree, MEMPOOL_NO_JOURNAL=1"
