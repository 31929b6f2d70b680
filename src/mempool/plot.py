"""Pictures of pools, replays and the bench (layer 5; matplotlib, the ``plot`` extra).

- :func:`memory_map`: a pool's span as an image, address along rows: every cell a
  slice of the span, coloured by the size class of the largest range allocated in it
  and lighter the less of it is allocated; free cells are plain grey.
- :func:`replay_chart`: used, high water, largest free and fragmentation over the
  operations of a replay (:func:`mempool.trace.replay_series`), one line per strategy.
- :func:`bench_chart`: the bench's strategies side by side: native time per operation
  and span over peak live bytes (high_water / maxlive), per trace.

Each returns the matplotlib ``Figure`` (drawn with the Agg canvas, never pyplot, so
no window opens and no global state changes) and writes it to ``path`` when given:
PNG or SVG by the suffix.  The numbers each picture draws come from the functions
:func:`map_cells`, and are the arrays in the figure's artists (tests read them back).

``import mempool`` never imports matplotlib; these functions raise ImportError
naming ``pip install 'mempool[plot]'`` when it is missing.
"""

from __future__ import annotations

import math
import os
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from .view import PoolView, format_bytes, view_pool

if TYPE_CHECKING:
    from matplotlib.figure import Figure

    from .trace import ReplaySeries

__all__ = ["SIZE_CLASSES", "bench_chart", "map_cells", "memory_map", "replay_chart",
           "require_matplotlib"]

SUFFIXES = (".png", ".svg")

#: the size classes of the memory map: (upper bound in bytes, label); a range falls in
#: the first class whose bound exceeds its size
SIZE_CLASSES: list[tuple[float, str]] = [
    (256, "< 256 B"),
    (4096, "256 B - 4 KiB"),
    (65536, "4 - 64 KiB"),
    (1 << 20, "64 KiB - 1 MiB"),
    (16 << 20, "1 - 16 MiB"),
    (math.inf, "≥ 16 MiB"),
]
FREE_RGB = (0.90, 0.90, 0.90)


def require_matplotlib() -> None:
    """ImportError with the install command when matplotlib is not installed."""
    try:
        import matplotlib  # noqa: F401
    except ImportError:
        raise ImportError("pictures need matplotlib: pip install 'mempool[plot]'") from None


def _figure(width: float, height: float) -> Figure:
    require_matplotlib()
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    fig = Figure(figsize=(width, height), dpi=100, layout="constrained")
    FigureCanvasAgg(fig)
    return fig


def check_path(path: str | os.PathLike[str]) -> Path:
    """``path`` as a Path, if a picture can be written there: ValueError for a suffix
    other than .png / .svg, OSError when its folder is missing or not writable."""
    p = Path(path)
    if p.suffix.lower() not in SUFFIXES:
        raise ValueError(f"{p}: the picture's suffix must be .png or .svg")
    return check_writable(p)


def check_writable(path: str | os.PathLike[str]) -> Path:
    """``path`` as a Path, if a file can be written there (before a long run makes what
    goes in it): OSError when its folder is missing or not writable, or it is a folder
    or not writable itself."""
    p = Path(path)
    folder = p.parent if str(p.parent) else Path(".")
    if not folder.is_dir():
        raise FileNotFoundError(f"{p}: no folder {folder}")
    if p.is_dir():
        raise IsADirectoryError(f"{p}: is a folder")
    if not os.access(folder, os.W_OK) or (p.exists() and not os.access(p, os.W_OK)):
        raise PermissionError(f"{p}: not writable")
    return p


def _save(fig: Figure, path: str | os.PathLike[str] | None) -> None:
    if path is not None:
        p = check_path(path)
        fig.savefig(p, format=p.suffix.lower()[1:], dpi=100)


# ---- the memory map ----------------------------------------------------------------------
def _size_class(sizes: np.ndarray) -> np.ndarray:
    bounds = np.array([b for b, _ in SIZE_CLASSES[:-1]], dtype=np.float64)
    return np.searchsorted(bounds, sizes.astype(np.float64), side="right")


def map_cells(view: PoolView, rows: int, cols: int) -> tuple[np.ndarray, np.ndarray]:
    """The memory map's cells: ``(fraction, size_class)``, both ``rows x cols``.

    Cell ``(r, c)`` is slice ``k = r * cols + c`` of the span, bytes
    ``[k * capacity // n, (k + 1) * capacity // n)`` with ``n = rows * cols``;
    ``fraction`` is the share of its bytes allocated, ``size_class`` the index in
    :data:`SIZE_CLASSES` of the largest allocated range that overlaps it, -1 when
    none does (the cell is free).
    """
    n = rows * cols
    frac = view.cell_fractions(n)
    edges = view.edges(n)
    off, size, alloc = view.offsets, view.sizes, view.allocated
    vals = np.where(alloc, size, 0)
    # ranges overlapping cell k: from the one holding its first byte to the one holding
    # its last (the ranges tile the span)
    first = np.searchsorted(off, edges[:-1], side="right") - 1
    last = np.searchsorted(off, np.maximum(edges[1:] - 1, edges[:-1]), side="right") - 1
    # max(vals[first[k] .. last[k]]): reduceat over [first[k], first[k+1]) (first[n] is
    # one past the last range) covers up to last[k] or last[k] - 1; the range holding
    # the next cell's first byte may also reach into this one (last[k] == first[k+1])
    nxt = np.concatenate((first[1:], last[-1:] + 1))
    padded = np.concatenate((vals, [0]))
    biggest = np.maximum.reduceat(padded, np.concatenate((first, last[-1:] + 1)))[:n]
    biggest = np.maximum(biggest, np.where(last >= nxt, padded[nxt], 0))
    cls = np.where(biggest > 0, _size_class(biggest), -1)
    return frac.reshape(rows, cols), cls.reshape(rows, cols)


def _class_colours() -> np.ndarray:
    from matplotlib import colormaps

    cmap = colormaps["plasma"]
    return np.array([cmap(0.05 + 0.85 * k / (len(SIZE_CLASSES) - 1))[:3]
                     for k in range(len(SIZE_CLASSES))])


def map_rgb(frac: np.ndarray, cls: np.ndarray) -> np.ndarray:
    """The image :func:`memory_map` shows for cells ``(frac, cls)``: a free cell plain
    grey, an allocated one its class colour, paler the less of it is allocated
    (weight 0.35 + 0.65 * fraction, so that a nearly empty cell still shows)."""
    require_matplotlib()
    colours = _class_colours()
    w = np.where(cls >= 0, 0.35 + 0.65 * frac, 0.0)[..., None]
    base = colours[np.maximum(cls, 0)]
    free = np.array(FREE_RGB)
    return np.asarray(free * (1 - w) + base * w)


def _unit(n: float) -> tuple[float, str]:
    for scale, name in ((1 << 30, "GiB"), (1 << 20, "MiB"), (1 << 10, "KiB")):
        if n >= 4 * scale:
            return float(scale), name
    return 1.0, "B"


def memory_map(pool: Any, path: str | os.PathLike[str] | None = None, *, rows: int = 64,
               cols: int = 256, title: str | None = None) -> Figure:
    """The memory map of a pool, strategy or :class:`~mempool.view.PoolView`.

    ``rows x cols`` cells (fewer rows when the span has fewer bytes), address along
    rows from the top left; see :func:`map_cells` and :func:`map_rgb`.  A legend names
    the size classes present; the title gives the strategy, used bytes, live ranges
    and fragmentation.  Written to ``path`` (.png / .svg) when given.
    """
    require_matplotlib()
    from matplotlib.patches import Patch

    view = pool if isinstance(pool, PoolView) else view_pool(pool)
    cap = view.capacity
    cols = max(1, min(cols, cap))
    rows = max(1, min(rows, cap // cols))
    frac, cls = map_cells(view, rows, cols)
    rgb = map_rgb(frac, cls)
    scale, unit = _unit(cap)
    row_bytes = cap / rows
    xscale, xunit = _unit(row_bytes)
    fig = _figure(10, 6.2)
    ax = fig.add_subplot()
    ax.imshow(rgb, aspect="auto", interpolation="nearest",
              extent=(0, row_bytes / xscale, cap / scale, 0))
    ax.set_xlabel(f"offset within the row ({xunit}; a row is {format_bytes(row_bytes)})")
    ax.set_ylabel(f"row start ({unit})")
    st = view.stats
    ax.set_title(title or (
        f"{view.source}: {view.strategy}, {format_bytes(cap)}; used {format_bytes(st.used)} "
        f"({100 * st.used / cap:.1f} %), {st.live:,} live ranges, fragmentation "
        f"{st.fragmentation:.3f}"), fontsize=10)
    colours = _class_colours()
    present = sorted(set(np.unique(cls).tolist()) - {-1})
    handles = [Patch(facecolor=FREE_RGB, edgecolor="0.5", label="free")]
    handles += [Patch(facecolor=colours[k], label=SIZE_CLASSES[k][1]) for k in present]
    ax.legend(handles=handles, title="largest range in the cell", loc="upper left",
              bbox_to_anchor=(1.01, 1.0), fontsize=9, title_fontsize=9, frameon=False)
    _save(fig, path)
    return fig


# ---- a replay ------------------------------------------------------------------------------
REPLAY_PANELS = ("used", "high_water", "largest_free", "fragmentation")


def replay_chart(series: Sequence[ReplaySeries], path: str | os.PathLike[str] | None = None,
                 *, title: str | None = None) -> Figure:
    """Used, high water, largest free (bytes) and fragmentation over the operations of
    one trace's replay through one or more strategies: four panels, one line per
    strategy (x: operations).  The used panel also shows the live bytes the trace
    asked for (dotted, from the first series).  Written to ``path`` when given."""
    require_matplotlib()
    if not series:
        raise ValueError("replay_chart() needs at least one series")
    top = max(int(np.max(s.high_water)) if len(s.high_water) else 0 for s in series)
    scale, unit = _unit(max(top, 1))
    n_ops = max(int(s.ops[-1]) if len(s.ops) else 0 for s in series)
    xs, xunit = (1e6, "millions") if n_ops >= 1_000_000 else (1e3, "thousands")
    fig = _figure(10, 8.5)
    axes = fig.subplots(4, 1, sharex=True)
    labels = {"used": f"used ({unit})", "high_water": f"high water ({unit})",
              "largest_free": f"largest free ({unit})",
              "fragmentation": "fragmentation\n1 - largest free / available"}
    from matplotlib import colormaps

    cmap = colormaps["tab10"]
    for k, s in enumerate(series):
        x = s.ops / xs
        for ax, name in zip(axes, REPLAY_PANELS, strict=True):
            y = s.fragmentation if name == "fragmentation" else getattr(s, name) / scale
            ax.plot(x, y, color=cmap(k % 10), lw=1.3, label=s.result.strategy)
    first = series[0]
    axes[0].plot(first.ops / xs, first.requested / scale, color="black", ls=":", lw=1.2,
                 label="requested (live)")
    for ax, name in zip(axes, REPLAY_PANELS, strict=True):
        ax.set_ylabel(labels[name], fontsize=9)
        ax.grid(True, alpha=0.3)
        ax.set_ylim(bottom=0)
    axes[3].set_ylim(0, 1.02)
    axes[3].set_xlabel(f"operations ({xunit})")
    axes[0].legend(loc="upper left", bbox_to_anchor=(1.01, 1.0), fontsize=9, frameon=False)
    fig.suptitle(title or f"replay of {first.result.trace} ({n_ops:,} operations)",
                 fontsize=11)
    _save(fig, path)
    return fig


# ---- the bench ----------------------------------------------------------------------------
def bench_chart(rows: Sequence[dict[str, Any]], path: str | os.PathLike[str] | None = None,
                *, title: str | None = None) -> Figure:
    """The bench's rows (``cli.bench``'s, or ``replay``'s table) side by side: per
    trace, a bar per strategy of native ns per operation (left) and of high_water /
    maxlive (right; libc has none).  A strategy that failed requests is marked with
    its failure count.  Written to ``path`` when given."""
    require_matplotlib()
    if not rows:
        raise ValueError("bench_chart() needs at least one row")
    traces = list(dict.fromkeys(str(r["trace"]) for r in rows))
    strategies = list(dict.fromkeys(str(r["strategy"]) for r in rows))
    from matplotlib import colormaps

    cmap = colormaps["tab10"]
    fig = _figure(11, 1.0 + 0.32 * len(traces) * len(strategies) + 0.4 * len(traces))
    ax_t, ax_s = fig.subplots(1, 2, sharey=True)
    h = 0.8 / len(strategies)
    by = {(str(r["trace"]), str(r["strategy"])): r for r in rows}
    for j, name in enumerate(strategies):
        ys, t, sp, fails = [], [], [], []
        for i, tname in enumerate(traces):
            r = by.get((tname, name))
            if r is None:
                continue
            ys.append(i + (j - (len(strategies) - 1) / 2) * h)
            t.append(float(r["native_ns_per_op"]))
            v = float(r["high_water_over_maxlive"])
            sp.append(0.0 if v != v else v)
            fails.append(int(r["failures"]))
        ax_t.barh(ys, t, height=h * 0.9, color=cmap(j % 10), label=name)
        ax_s.barh(ys, sp, height=h * 0.9, color=cmap(j % 10), label=name)
        for y, tv, sv, f in zip(ys, t, sp, fails, strict=True):
            if f:
                ax_t.annotate(f" {f:,} failed", (tv, y), va="center", fontsize=7, color="0.3")
                ax_s.annotate(f" {f:,} failed", (sv, y), va="center", fontsize=7, color="0.3")
    ax_t.set_yticks(range(len(traces)), traces)
    ax_t.invert_yaxis()
    ax_t.set_xlabel("native time per operation (ns; C replay loop)")
    ax_s.set_xlabel("span over live bytes (high_water / maxlive; 1 is perfect)")
    ax_s.axvline(1.0, color="black", lw=0.8, ls=":")
    for ax in (ax_t, ax_s):
        ax.grid(True, axis="x", alpha=0.3)
    ax_s.legend(loc="upper left", bbox_to_anchor=(1.01, 1.0), fontsize=9, frameon=False)
    fig.suptitle(title or "strategies side by side", fontsize=11)
    _save(fig, path)
    return fig
