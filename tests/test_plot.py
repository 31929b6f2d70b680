"""mempool.plot: each picture made from known data, its data series read back from the
figure's artists (not its pixels), PNG and SVG files written."""

import os
import subprocess
import sys
import textwrap

import numpy as np
import pytest

pytest.importorskip("matplotlib")

import mempool
from mempool import plot
from mempool import trace as tr
from mempool.cli import main
from mempool.view import PoolView, view_pool

SRC = os.path.dirname(os.path.dirname(os.path.abspath(mempool.__file__)))
PNG = b"\x89PNG\r\n\x1a\n"

# .ci/run's sanitizer step preloads ASan into a plain interpreter: matplotlib's font
# code (ft2font, C++ exceptions through ASan's __cxa_throw interceptor) aborts there, in
# any figure that draws text.  The drawing tests run in the plain build's suite.
draws = pytest.mark.skipif("libasan" in os.environ.get("LD_PRELOAD", ""),
                           reason="matplotlib's ft2font aborts under a preloaded ASan")


def known_strategy():
    """A 64 KiB BestFit: [0,100) [100,4196) [4196,69732)... see the asserts."""
    s = mempool.BestFit(1 << 16)
    a = s.alloc(100)          # class 0 (< 256 B)
    b = s.alloc(4000)         # class 1 (256 B - 4 KiB)
    c = s.alloc(20_000)       # class 2 (4 - 64 KiB)
    s.free(b)
    assert (a, c) == (0, 4100)
    return s


def test_map_cells_exact():
    v = view_pool(known_strategy())
    frac, cls = plot.map_cells(v, 4, 16)  # 64 cells of 1 KiB
    f, c = frac.ravel(), cls.ravel()
    assert f[0] == 100 / 1024 and c[0] == 0          # a, then free
    assert f[1] == f[2] == f[3] == 0 and c[1] == c[2] == c[3] == -1
    assert f[4] == (5120 - 4100) / 1024 and c[4] == 2  # c starts at 4100
    end = 4100 + 20_000                               # 24100: inside cell 23
    assert all(f[k] == 1 and c[k] == 2 for k in range(5, 23))
    assert f[23] == (end - 23 * 1024) / 1024 and c[23] == 2
    assert (f[24:] == 0).all() and (c[24:] == -1).all()


def test_map_cells_largest_range_in_a_cell_wins():
    # [0,10) 10 B, [10,300) 290 B, [300,1024) free: one cell, class of the 290-byte range
    v = PoolView.from_segments([(0, 10, True), (10, 290, True), (300, 724, False)],
                               mempool.Stats(1024, 300, 724, 724, 2, 1, 300, 300, 0.0))
    frac, cls = plot.map_cells(v, 1, 1)
    assert frac.tolist() == [[300 / 1024]] and cls.tolist() == [[1]]
    frac, cls = plot.map_cells(v, 1, 4)  # 256-byte cells
    assert cls.tolist() == [[1, 1, -1, -1]]
    assert frac.tolist() == [[1.0, 44 / 256, 0.0, 0.0]]


@draws
def test_memory_map_figure_shows_the_cells(tmp_path):
    v = view_pool(known_strategy())
    png, svg = tmp_path / "m.png", tmp_path / "m.svg"
    fig = plot.memory_map(v, png, rows=4, cols=16)
    ax = fig.axes[0]
    img = np.asarray(ax.images[0].get_array())
    frac, cls = plot.map_cells(v, 4, 16)
    assert img.shape == (4, 16, 3)
    assert np.allclose(img, plot.map_rgb(frac, cls))
    assert np.allclose(img[0, 1], plot.FREE_RGB)  # a free cell is plain grey
    assert not np.allclose(img[0, 0], plot.FREE_RGB)  # a nearly empty one still shows
    # extent in KiB: 16 KiB a row, 64 KiB down
    assert ax.images[0].get_extent() == [0, 16.0, 64.0, 0]
    assert ax.get_xlabel() == "offset within the row (KiB; a row is 16.0 KiB)"
    assert ax.get_ylabel() == "row start (KiB)"
    labels = [t.get_text() for t in ax.get_legend().get_texts()]
    assert labels == ["free", "< 256 B", "4 - 64 KiB"]  # the classes present
    assert "bestfit" in ax.get_title() and "2 live ranges" in ax.get_title()
    assert png.read_bytes()[:8] == PNG
    plot.memory_map(known_strategy(), svg, rows=4, cols=16)  # a strategy object directly
    assert b"<svg" in svg.read_bytes()[:400]


@draws
def test_memory_map_rows_never_exceed_the_bytes():
    s = mempool.TLSF(100)
    s.alloc(50)
    fig = plot.memory_map(s, rows=64, cols=256)  # 100 bytes: 1 row of 100 one-byte cells
    assert np.asarray(fig.axes[0].images[0].get_array()).shape == (1, 100, 3)


@draws
def test_replay_chart_lines_are_the_series(tmp_path):
    t = tr.read(tr.bundled()[0]).head(20_000)
    series = [tr.replay_series(t, name, samples=50) for name in ("tlsf", "heap")]
    fig = plot.replay_chart(series, tmp_path / "r.png")
    axes = fig.axes
    assert [a.get_ylabel().split(" (")[0].split("\n")[0] for a in axes] == [
        "used", "high water", "largest free", "fragmentation"]
    scale = 1 << 20 if max(int(s.high_water.max()) for s in series) >= 4 << 20 else 1 << 10
    assert axes[0].get_ylabel().endswith("iB)")
    for panel, name in zip(axes, plot.REPLAY_PANELS, strict=True):
        lines = panel.get_lines()
        for k, s in enumerate(series):
            x, y = lines[k].get_data()
            assert lines[k].get_label() == s.result.strategy
            assert np.allclose(x, s.ops / 1e3)
            want = s.fragmentation if name == "fragmentation" else getattr(s, name) / scale
            assert np.allclose(y, want)
    req = axes[0].get_lines()[2]
    assert req.get_label() == "requested (live)"
    assert np.allclose(req.get_ydata(), series[0].requested / scale)
    assert axes[3].get_xlabel() == "operations (thousands)"
    assert (tmp_path / "r.png").read_bytes()[:8] == PNG
    with pytest.raises(ValueError, match="at least one series"):
        plot.replay_chart([])


@draws
def test_bench_chart_bars_are_the_rows(tmp_path):
    nan = float("nan")
    rows = [
        {"trace": "t1", "strategy": "libc", "native_ns_per_op": 20.0,
         "high_water_over_maxlive": nan, "failures": 0},
        {"trace": "t1", "strategy": "tlsf", "native_ns_per_op": 30.0,
         "high_water_over_maxlive": 1.01, "failures": 0},
        {"trace": "t1", "strategy": "slab", "native_ns_per_op": 5.0,
         "high_water_over_maxlive": 0.3, "failures": 1234},
        {"trace": "t2", "strategy": "libc", "native_ns_per_op": 10.0,
         "high_water_over_maxlive": nan, "failures": 0},
        {"trace": "t2", "strategy": "tlsf", "native_ns_per_op": 25.0,
         "high_water_over_maxlive": 1.5, "failures": 0},
    ]
    fig = plot.bench_chart(rows, tmp_path / "b.svg")
    ax_t, ax_s = fig.axes[:2]
    widths_t = [p.get_width() for p in ax_t.patches]
    widths_s = [p.get_width() for p in ax_s.patches]
    # bars in strategy order (libc, tlsf, slab), each over the traces that have it
    assert widths_t == [20.0, 10.0, 30.0, 25.0, 5.0]
    assert widths_s == [0.0, 0.0, 1.01, 1.5, 0.3]
    assert [t.get_text() for t in ax_t.get_yticklabels()] == ["t1", "t2"]
    assert [t.get_text() for t in ax_t.texts] == [" 1,234 failed"]
    assert [t.get_text() for t in ax_s.get_legend().get_texts()] == ["libc", "tlsf", "slab"]
    assert "ns" in ax_t.get_xlabel() and "high_water / maxlive" in ax_s.get_xlabel()
    assert b"<svg" in (tmp_path / "b.svg").read_bytes()[:400]


def test_plot_paths_checked():
    with pytest.raises(ValueError, match=r"suffix must be \.png or \.svg"):
        plot.check_path("x.jpg")
    with pytest.raises(FileNotFoundError, match="no folder"):
        plot.check_path("/nonexistent-folder/x.png")
    assert str(plot.check_path("x.PNG")) == "x.PNG"


@draws
def test_cli_plots(tmp_path, capsys):
    trace = tmp_path / "t.trace"
    t = tr.read(tr.bundled()[0]).head(5000)
    lines = ["# mempool-trace v1 program=t"]
    names = {0: "a", 1: "f", 2: "r"}
    for o, i, s, a in zip(t.op.tolist(), t.id.tolist(), t.size.tolist(), t.align.tolist(),
                          strict=True):
        lines.append(f"a {i} {s} {a}" if o == 0 else f"f {i}" if o == 1 else f"{names[o]} {i} {s}")
    trace.write_text("\n".join(lines) + "\n")
    assert main(["replay", str(trace), "-s", "tlsf", "--plot", str(tmp_path / "r.png"),
                 "-q"]) == 0
    assert main(["bench", str(trace), "--quick", "-s", "tlsf", "--repeat", "1",
                 "--plot", str(tmp_path / "b.png"), "-q"]) == 0
    path = tmp_path / "p.mp"
    with mempool.Pool.create(path, "1MiB") as p:
        p.alloc(1000)
    assert main(["show", str(path), "--plot", str(tmp_path / "m.svg")]) == 0
    out = capsys.readouterr().out
    for f in ("r.png", "b.png", "m.svg"):
        assert f"picture: {tmp_path / f}" in out
        assert (tmp_path / f).stat().st_size > 1000


def test_import_mempool_without_matplotlib():
    code = textwrap.dedent("""
        import sys
        sys.modules["matplotlib"] = None
        import mempool, mempool.cli, mempool.view
        from mempool import plot
        try:
            plot.memory_map(mempool.TLSF(4096))
        except ImportError as e:
            print(e)
        assert "matplotlib" not in [m for m in sys.modules if sys.modules[m] is not None]
    """)
    r = subprocess.run([sys.executable, "-c", code], env=dict(os.environ, PYTHONPATH=SRC),
                       capture_output=True, text=True, timeout=60)
    assert r.returncode == 0, r.stderr
    assert r.stdout == "pictures need matplotlib: pip install 'mempool[plot]'\n"
