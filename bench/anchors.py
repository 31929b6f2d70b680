"""mempool next to the native anchors (OffsetAllocator, orderly-allocator), one run.

    python bench/anchors.py --oa-src OA_DIR [--orderly-src ORDERLY_DIR] \\
        [--py PYTHON] [--rounds 7] [--cpu 1] [--harness RUN_SH] [--out FILE] [TRACE...]

Drives the shared harness (``../shared/anchors/run.sh`` from the project root; its
README says what each contender times): it builds the anchors' replay programs from
sources you already have, then replays each trace through glibc, OffsetAllocator,
orderly-allocator and mempool's C replay of TLSF and BestFit, interleaved (the order
rotates each round) and pinned to one CPU.  This script then reads the harness's
``raw.json`` and prints mempool next to the anchors from that one run: ns/op medians,
each strategy's ratio to OffsetAllocator, to orderly and to the best (fastest) anchor,
and span / maxlive for all.  The table goes to ``bench/results/anchors.txt`` (``--out``)
with the harness's own output after it.

Getting the anchors' sources (nothing here downloads them; never commit them): clone
or fetch github.com/sebbbi/OffsetAllocator (offsetAllocator.{hpp,cpp}) and
github.com/ickk/orderly-allocator (a Rust crate, built ``cargo build --offline``,
no dependencies) into folders outside the project, e.g.

    git clone --depth 1 https://github.com/sebbbi/OffsetAllocator /tmp/oa
    git clone --depth 1 https://github.com/ickk/orderly-allocator /tmp/orderly

``--py`` is a Python with this mempool installed (default: this one); the harness
imports it, so build and install what you want measured first.  Without
``--orderly-src`` the orderly columns are left out.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
HARNESS = ROOT.parent / "shared" / "anchors" / "run.sh"
MEMPOOL = ("tlsf", "bestfit")


def cell(med: dict[str, float], info: dict[str, Any], k: str) -> str:
    """ns/op of contender k, with its span / maxlive (libc has none)."""
    sr = info.get(k, {}).get("span_ratio")
    return f"{med[k]:.1f}" + (f" ({sr:.4f})" if sr is not None and k != "libc" else "")


def table(raw: dict[str, Any]) -> str:
    """The one-run table: medians, ratios to the anchors, span / maxlive."""
    has_orderly = any("orderly" in t["ns_per_op"] for t in raw["traces"].values())
    head = ["trace", "glibc", "OffsetAllocator"] + (["orderly"] if has_orderly else [])
    for s in MEMPOOL:
        head += [s, f"{s}/OA"] + ([f"{s}/orderly"] if has_orderly else []) + [f"{s}/best anchor"]
    lines = ["ns/op, median of the rounds (ratio of medians); span/maxlive in brackets", "",
             "| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for name, t in raw["traces"].items():
        med = {k: statistics.median(v) for k, v in t["ns_per_op"].items()}
        info = t["info"]

        anchors = [a for a in ("OffsetAllocator", "orderly") if a in med]
        best = min(med[a] for a in anchors)
        row = [name, cell(med, info, "libc"), cell(med, info, "OffsetAllocator")]
        if has_orderly:
            row.append(cell(med, info, "orderly"))
        for s in MEMPOOL:
            row += [cell(med, info, s), f"{med[s] / med['OffsetAllocator']:.2f}"]
            if has_orderly:
                row.append(f"{med[s] / med['orderly']:.2f}")
            row.append(f"{med[s] / best:.2f}")
        lines.append("| " + " | ".join(row) + " |")
    return "\n".join(lines)


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--oa-src", required=True, help="folder with offsetAllocator.{hpp,cpp}")
    p.add_argument("--orderly-src", help="folder with orderly-allocator's Cargo.toml")
    p.add_argument("--py", default=sys.executable, help="a Python with mempool installed")
    p.add_argument("--rounds", type=int, default=7)
    p.add_argument("--cpu", default="1", help='CPU to pin to ("" = no pinning)')
    p.add_argument("--harness", default=str(HARNESS), help="the shared anchors' run.sh")
    p.add_argument("--out", default=str(ROOT / "bench" / "results" / "anchors.txt"))
    p.add_argument("traces", nargs="*", help="default: the bundled traces")
    a = p.parse_args()
    if a.rounds < 1:  # (the values first, then the paths: a checkout without ../shared)
        p.error("--rounds must be >= 1")
    for what, path in (("--oa-src", a.oa_src), ("--orderly-src", a.orderly_src)):
        if path is not None and not Path(path).is_dir():
            p.error(f"{what}: no such folder: {path}")
    if not Path(a.harness).is_file():
        p.error(f"--harness: no such file: {a.harness}")
    with tempfile.TemporaryDirectory(prefix="mempool-anchors-") as tmp:
        cmd = ["sh", a.harness, "--oa-src", a.oa_src, "--py", a.py, "--rounds", str(a.rounds),
               "--cpu", a.cpu, "--build", os.path.join(tmp, "build"), "--out", tmp]
        if a.orderly_src:
            cmd += ["--orderly-src", a.orderly_src]
        cmd += a.traces
        run = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True)
        sys.stderr.write(run.stderr)
        if run.returncode != 0:
            print(f"the harness failed (exit {run.returncode}):\n{run.stdout[-2000:]}", file=sys.stderr)
            return 1
        raw = json.loads(Path(tmp, "raw.json").read_text())
    meta = raw["meta"]
    out = (f"# bench/anchors.py: {meta['start']} .. {meta.get('end', '?')}, mempool {meta['mempool']}, "
           f"Python {meta['python']}, CPUs {meta['affinity']}, {a.rounds} interleaved rounds, "
           f"load {meta['loadavg_start'][0]:.2f} -> {meta.get('loadavg_end', [float('nan')])[0]:.2f}\n\n"
           + table(raw) + "\n\n# the harness's output\n" + run.stdout)
    print(out)
    Path(a.out).parent.mkdir(parents=True, exist_ok=True)
    Path(a.out).write_text(out)
    return 0


if __name__ == "__main__":
    sys.exit(main())
