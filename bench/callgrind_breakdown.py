"""Where a replay's instructions go: a callgrind profile of bench/callgrind_replay.c,
grouped into the cost categories of issue 15.

    python bench/callgrind_breakdown.py CALLGRIND_OUT [...]

callgrind attributes inlined code to the source line it came from; this maps each
line to the function it is written in (the core's hot paths are forced inline, so
per-function totals of the binary say little) and each function to a category:
offset lookup on free, filing an allocated range, bin/tree search, splitting,
merging, free-index update, counters, the ops-table call and argument checks, the
replay loop, and the untimed validation pre-pass.  Prints Ir and D1 read misses
(with --cache-sim=yes) per category, and the timed loop's Ir per op when the ops are
given (--ops N).
"""

from __future__ import annotations

import argparse
import collections
import os
import re
import sys

FUNC = re.compile(r"^(?:RS_HOT|RS_WARM|TLSF_INLINE|BF_INLINE|static|int|void|uint\d+_t)\b"
                  r"(?:\s+__attribute__\(\(\w+\)\))?"
                  r"[^;=]*?\b(\w+)\s*\([^;]*$")
MACRO = re.compile(r"^MPI_REPLAY_LOOP\(")
HANDLE_MACRO = re.compile(r"^RS_HANDLE_FORM\(")
CATEGORIES = {
    "offset lookup on free (nursery, hash table)": [
        "rs_find_node", "rs_table_find", "rs_tag", "rs_nhome", "rs_home", "rs_loc_remove",
        "rs_table_remove", "rs_find", "rs_lookup", "rs_loc_node", "rs_cnursery", "rs_nursery"],
    "filing the allocated range (nursery, hash table)": [
        "rs_hash_insert", "rs_table_insert", "rs_handle_to_offset"],
    "bin / tree search (find)": [
        "tlsf_find", "rs_next_bin", "rs_bin_up", "tlsf_scan", "fits", "bf_find", "bf_search",
        "lower_bound", "bf_find_in_bin", "lane", "bf_find_aligned"],
    "splitting (carve, physical list, node pool)": [
        "rs_carve", "rs_carve_as", "rs_alloc_node", "rs_alloc_handle", "rs_carve_cost", "rs_link_before", "rs_link_after", "rs_new_free",
        "rs_node_new", "rs_spare_count", "rs_align_up", "rs_node", "rs_cnode", "rs_nodes",
        "rs_set", "rs_cset", "rs_head"],
    "merging on free (release, unlink)": [
        "rs_release", "rs_unlink", "rs_node_release", "rs_free_node", "rs_free_handle",
        "rs_handle_ok"],
    "free-index update (bins / trees: insert, remove, rekey)": [
        "tlsf_insert", "tlsf_remove", "tlsf_rekey", "bin_link", "bin_unlink", "bin_of",
        "bin_head", "rs_bin_mark", "rs_bin_unmark_if", "rs_bin_down", "rs_bin_unmark",
        "bf_insert", "bf_remove", "bf_rekey", "bf_insert_bin", "bf_remove_bin", "bf_file",
        "bf_unfile", "rotate", "fixup", "update", "update_with", "height", "set_height",
        "key_less", "replace_child", "neighbour", "successor", "predecessor", "rs_sel32",
        "cidx", "idx", "bnodes", "cbnodes", "own_aug", "use_lane", "lanes_max", "rs_area",
        "rs_carea", "rs_cnodes", "aug_of", "key_after", "bf_refresh", "raise_augs",
        "emmintrin.h"],  # (BestFit's lanes: SSE2 intrinsics, counted by file)
    "counters (head: used, peak, high water, live)": [
        "mpi_head_on_alloc", "mpi_head_on_free", "mpi_head_reach"],
    "ops-table call, wrappers, argument checks": [
        "tlsf_alloc", "tlsf_free", "rs_alloc", "rs_free", "bestfit_alloc", "bestfit_free",
        "tlsf_alloc_in", "tlsf_free_in", "bestfit_alloc_in", "bestfit_free_in",
        "RS_HANDLE_FORM"],
    "replay loop": ["mp_replay", "replay_ops", "MPI_REPLAY_LOOP"],
    "trace validation (untimed pre-pass)": ["mp_trace_validate"],
}
CAT_OF = {fn: c for c, fns in CATEGORIES.items() for fn in fns}
_funcs: dict[str, dict[int, str]] = {}


def funcs_of(path: str) -> dict[int, str]:
    """Line number -> the function it is written in (a crude scan of the source)."""
    if path not in _funcs:
        m: dict[int, str] = {}
        cur = "?"
        try:
            with open(path) as f:
                for k, line in enumerate(f, 1):
                    g = FUNC.match(line)
                    if g and not line.startswith(" "):
                        cur = g.group(1)
                    m[k] = ("MPI_REPLAY_LOOP" if MACRO.match(line) else
                            "RS_HANDLE_FORM" if HANDLE_MACRO.match(line) else cur)
        except OSError:
            pass
        _funcs[path] = m
    return _funcs[path]


def breakdown(out: str) -> tuple[collections.Counter, collections.Counter]:
    """Ir and D1 read misses per (file, function) of the lines' source."""
    ir: collections.Counter = collections.Counter()
    d1: collections.Counter = collections.Counter()
    names: dict[tuple[str, str], str] = {}
    events: list[str] = []
    fl = fi = None
    skip = False
    prev = 0

    def name(kind: str, rest: str) -> str | None:
        m = re.match(r"\((\d+)\)(?: (.*))?", rest)
        if not m:
            return rest
        if m.group(2):
            names[(kind, m.group(1))] = m.group(2)
        return names.get((kind, m.group(1)))

    with open(out) as f:
        for line in f:
            line = line.rstrip("\n")
            if line.startswith("events:"):
                events = line.split()[1:]
            elif line.startswith("fl="):
                fl = fi = name("f", line[3:])
            elif line.startswith(("fi=", "fe=")):
                fi = name("f", line[3:])
            elif line.startswith("fn="):
                fi = fl
            elif line.startswith(("cfi=", "cfl=")):
                name("f", line[4:])
            elif line.startswith("calls="):
                skip = True
            elif line and (line[0].isdigit() or line[0] in "+-*"):
                if skip:  # the inclusive cost of a call: counted where it is spent
                    skip = False
                    continue
                parts = line.split()
                if parts[0][0] in "+-":
                    ln = prev + int(parts[0])
                elif parts[0] == "*":
                    ln = prev
                else:
                    ln = int(parts[0])
                prev = ln
                key = (os.path.basename(fi or "?"), funcs_of(fi).get(ln, "?") if fi else "?")
                vals = [int(v) for v in parts[1:]]
                ir[key] += vals[0] if vals else 0
                if "D1mr" in events and len(vals) > events.index("D1mr"):
                    d1[key] += vals[events.index("D1mr")]
    return ir, d1


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("profiles", nargs="+")
    p.add_argument("--ops", type=int, help="ops of the trace: prints the timed loop's Ir/op")
    a = p.parse_args()
    for out in a.profiles:
        try:
            ir, d1 = breakdown(out)
        except OSError as e:
            print(f"{out}: {e.strerror}", file=sys.stderr)
            return 2
        total = sum(ir.values())
        cats: collections.Counter = collections.Counter()
        cd1: collections.Counter = collections.Counter()
        other: collections.Counter = collections.Counter()
        for key, v in ir.items():
            c = CAT_OF.get(key[1]) or CAT_OF.get(os.path.basename(key[0]))
            if c:
                cats[c] += v
                cd1[c] += d1[key]
            else:
                other[key] += v
        timed = total - cats["trace validation (untimed pre-pass)"]
        per_op = f", {timed / a.ops:.0f} Ir/op" if a.ops else ""
        print(f"== {out}: {total:,} Ir, timed loop {timed:,}{per_op}")
        print("  (shares of the timed loop)")
        for c, v in cats.most_common():
            share = f"{v / max(timed, 1) * 100:5.1f}%" if "untimed" not in c else "     -"
            print(f"  {share}  {v:>13,} Ir  {cd1[c]:>10,} D1 read misses  {c}")
        for (f, fn), v in other.most_common(4):
            if v / max(timed, 1) > 0.002:
                print(f"  {v / timed * 100:5.1f}%  {v:>13,} Ir  {'':>10}                 other: {f}:{fn}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
