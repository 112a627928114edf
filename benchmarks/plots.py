"""PNG plots of the benchmarks' results, written beside their JSON (matplotlib, no display).

    python -m benchmarks.plots bench-results/pool.json [bench-results/gm.json ...]

Each benchmark calls :func:`write_plots` after writing its JSON; this command re-plots saved
results. Which plots a file gets follows from its name (``pool``, ``gm``, ``server``):

* ``pool-throughput.png``: ops/s by pool size (tokens), a line per process count, raw
  python-pkcs11 on one token as markers, one panel per operation;
  ``pool-latency.png``: p50 and p99 latency of every cell;
* ``gm-speedup.png``: SM4 and SM3 throughput of each hsmpool implementation over
  ``cryptography``'s by message size, and the MB/s beside it;
* ``server-throughput.png``: HTTP requests/s per operation and server;
  ``server-latency.png``: their p50 and p99.

matplotlib is an optional dependency (the ``bench`` and ``test`` extras): without it the
benchmarks write their JSON and say that no plot was made.
"""

from __future__ import annotations

import json
import sys
from collections import defaultdict
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any

Doc = Mapping[str, Any]


def _plt() -> Any:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def _save(fig: Any, path: Path) -> Path:
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    _plt().close(fig)
    return path


def plot_pool(doc: Doc, out: Path, stem: str = "pool") -> list[Path]:
    plt = _plt()
    cells = doc["cells"]
    ops = sorted({c["op"] for c in cells})
    fig, axes = plt.subplots(1, len(ops), figsize=(4.2 * len(ops), 3.6), squeeze=False)
    for ax, op in zip(axes[0], ops, strict=True):
        mine = [c for c in cells if c["op"] == op]
        by_procs: defaultdict[int, list[tuple[int, float]]] = defaultdict(list)
        for c in mine:
            if c["target"] == "pool":
                by_procs[int(c["procs"])].append((int(c["tokens"]), float(c["ops_per_s"])))
        for procs, pts in sorted(by_procs.items()):
            pts.sort()
            ax.plot([p[0] for p in pts], [p[1] for p in pts], marker="o",
                    label=f"pool, {procs} process{'es' if procs > 1 else ''}")
        for c in mine:
            if c["target"] == "raw":
                ax.scatter([c["tokens"]], [c["ops_per_s"]], marker="x", s=60, zorder=3,
                           label=f"raw python-pkcs11, {c['procs']} proc.")
        ax.set_title(op)
        ax.set_xlabel("tokens in the pool")
        ax.set_ylabel("ops/s")
        ax.set_xticks(sorted({int(c["tokens"]) for c in mine}))
        ax.set_ylim(bottom=0)
        ax.grid(alpha=0.3)
        ax.legend(fontsize=7)
    fig.suptitle("Pool throughput by pool size and process count")
    paths = [_save(fig, out / f"{stem}-throughput.png")]

    fig, ax = plt.subplots(figsize=(max(6.0, 0.5 * len(cells)), 4.0))
    labels = [f"{c['op']}\n{c['target']} {c['tokens']}t {c['procs']}p" for c in cells]
    xs = range(len(cells))
    ax.bar([x - 0.2 for x in xs], [c["p50_us"] for c in cells], width=0.4, label="p50")
    ax.bar([x + 0.2 for x in xs], [c["p99_us"] for c in cells], width=0.4, label="p99")
    ax.set_xticks(list(xs))
    ax.set_xticklabels(labels, fontsize=6, rotation=60, ha="right")
    ax.set_ylabel("latency (µs)")
    ax.set_yscale("log")
    ax.set_title("Pool latency percentiles per cell")
    ax.legend()
    ax.grid(alpha=0.3, axis="y")
    paths.append(_save(fig, out / f"{stem}-latency.png"))
    return paths


def plot_gm(doc: Doc, out: Path, stem: str = "gm") -> list[Path]:
    plt = _plt()
    impls: list[str] = doc["machine"]["implementations"]
    table = doc["table"]
    algs = sorted({r["alg"] for r in table})
    fig, axes = plt.subplots(2, len(algs), figsize=(3.6 * len(algs), 6.4), squeeze=False)
    for col, alg in enumerate(algs):
        rows = sorted((r for r in table if r["alg"] == alg), key=lambda r: r["size"])
        sizes = [r["size"] for r in rows]
        ax = axes[0][col]
        for impl in impls:
            key = f"hsmpool-{impl}_vs_cryptography"
            ax.plot(sizes, [r.get(key) for r in rows], marker="o", label=impl)
        ax.axhline(1.0, color="grey", lw=0.8, ls="--")
        ax.set_xscale("log", base=2)
        ax.set_title(f"{alg} ÷ cryptography")
        ax.set_xlabel("message bytes")
        ax.set_ylabel("×")
        ax.grid(alpha=0.3)
        ax.legend(fontsize=7)
        ax = axes[1][col]
        for who in [f"hsmpool-{i}" for i in impls] + ["cryptography", "gmssl"]:
            ys = [r.get(f"{who}_MBps") for r in rows]
            if any(y is not None for y in ys):
                ax.plot(sizes, ys, marker=".", label=who.replace("hsmpool-", ""))
        ax.set_xscale("log", base=2)
        ax.set_yscale("log")
        ax.set_xlabel("message bytes")
        ax.set_ylabel("MB/s")
        ax.grid(alpha=0.3)
        ax.legend(fontsize=7)
    fig.suptitle("SM4 / SM3: hsmpool.gm against cryptography and gmssl")
    return [_save(fig, out / f"{stem}-speedup.png")]


def plot_server(doc: Doc, out: Path, stem: str = "server") -> list[Path]:
    plt = _plt()
    cells = doc["cells"]
    ops = list(dict.fromkeys(c["op"] for c in cells))
    targets = list(dict.fromkeys(c["target"] for c in cells))
    width = 0.8 / max(1, len(targets))
    paths = []
    for metric, ylabel, name, log in (("req_per_s", "requests/s", "throughput", False),
                                      ("p50_ms", "p50 latency (ms)", "latency", True)):
        fig, ax = plt.subplots(figsize=(2.4 + 1.8 * len(ops), 3.8))
        for i, t in enumerate(targets):
            vals = {c["op"]: c for c in cells if c["target"] == t}
            xs = [k + (i - (len(targets) - 1) / 2) * width for k in range(len(ops))]
            ys = [vals[o][metric] if o in vals else 0.0 for o in ops]
            bars = ax.bar(xs, ys, width=width, label=t)
            if metric == "p50_ms":
                p99 = [vals[o]["p99_ms"] if o in vals else 0.0 for o in ops]
                ax.scatter(xs, p99, marker="_", s=200, color=bars.patches[0].get_facecolor(),
                           zorder=3)
        ax.set_xticks(range(len(ops)))
        ax.set_xticklabels(ops)
        ax.set_ylabel(ylabel + (" (bars p50, ticks p99)" if metric == "p50_ms" else ""))
        if log:
            ax.set_yscale("log")
        ax.set_title(f"HTTP {name} by operation")
        ax.grid(alpha=0.3, axis="y")
        ax.legend()
        paths.append(_save(fig, out / f"{stem}-{name}.png"))
    return paths


PLOTTERS: dict[str, Callable[[Doc, Path, str], list[Path]]] = {
    "pool": plot_pool, "gm": plot_gm, "server": plot_server}


def write_plots(json_path: str | Path, doc: Doc | None = None, kind: str | None = None
                ) -> list[Path]:
    """The plots of one benchmark's results, beside it (``kind``: pool, gm or server; by
    default from the file name). [] (and a note on stdout) when matplotlib is not
    installed."""
    path = Path(json_path)
    kind = kind or next((k for k in PLOTTERS if path.stem.startswith(k)), None)
    if kind not in PLOTTERS:
        raise ValueError(f"{path}: not a pool, gm or server result file")
    if doc is None:
        doc = json.loads(path.read_text())
    try:
        _plt()
    except ImportError:
        print("matplotlib is not installed (pip install -e '.[bench]'): no plots written")
        return []
    paths = PLOTTERS[kind](doc, path.parent, path.stem)
    for p in paths:
        print(f"wrote {p}")
    return paths


def main(argv: Sequence[str] | None = None) -> int:
    args = list(sys.argv[1:] if argv is None else argv)
    if not args:
        print(__doc__)
        return 2
    for a in args:
        write_plots(a)
    return 0


if __name__ == "__main__":
    sys.exit(main())
