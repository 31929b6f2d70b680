#!/usr/bin/env bash
# The fault-injection sweep (fault_journal.c): the core built with every store
# instrumented as a call (GCC's kernel-address sanitizer in call mode, whose hooks the
# test defines) and MP_FAULT (atomic stores are kill points too), then run.
# Usage: tests/fault/build_and_run.sh [extra gcc flags, e.g. -fsanitize=undefined]
set -euo pipefail
cd "$(dirname "$0")/../.."
CORE=src/mempool/_core
out=$(mktemp -d)
trap 'rm -rf "$out"' EXIT
for f in "$CORE"/*.c; do
    gcc -std=c11 -O1 -g -Wall -Wextra -Werror -DMP_FAULT=1 "$@" \
        -fsanitize=kernel-address --param asan-instrumentation-with-call-threshold=0 \
        --param asan-stack=0 --param asan-globals=0 \
        -I "$CORE" -c "$f" -o "$out/$(basename "$f" .c).o"
done
for t in fault_journal fault_named; do
    gcc -std=c11 -O1 -g -Wall -Wextra -Werror "$@" -I "$CORE" "tests/fault/$t.c" \
        "$out"/*.o -o "$out/$t"
done
"$out/fault_journal"
"$out/fault_named"
"$out/fault_named" log
