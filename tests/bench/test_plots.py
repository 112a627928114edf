"""benchmarks/plots.py on small result files of each benchmark's JSON shape (tests/bench/*.json,
made up for the test, not measurements): the PNGs are written beside the JSON and show
something (not a blank canvas)."""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest

from benchmarks import plots

HERE = Path(__file__).resolve().parent
EXPECTED = {"pool": ["pool-throughput.png", "pool-latency.png"],
            "gm": ["gm-speedup.png"],
            "server": ["server-throughput.png", "server-latency.png"]}

pytest.importorskip("matplotlib", reason="matplotlib is not installed (the test extras)")


@pytest.mark.parametrize("kind", sorted(EXPECTED))
def test_plots_are_written_beside_the_json(kind: str, tmp_path: Path) -> None:
    import matplotlib.image as mpimg

    src = tmp_path / f"{kind}.json"
    shutil.copy(HERE / f"{kind}.json", src)
    written = plots.write_plots(src)
    assert [p.name for p in written] == EXPECTED[kind]
    for p in written:
        assert p.parent == tmp_path
        data = p.read_bytes()
        assert data[:8] == b"\x89PNG\r\n\x1a\n" and len(data) > 15_000
        img = mpimg.imread(p)
        h, w = img.shape[:2]
        assert w >= 400 and h >= 300
        rgb = img[..., :3]
        # Lines, bars and text: many pixels neither white nor one flat colour.
        assert float(rgb.std()) > 0.05
        assert float((rgb.min(axis=2) < 0.5).mean()) > 0.005


def test_a_file_of_another_benchmark_is_refused(tmp_path: Path) -> None:
    other = tmp_path / "kms.json"
    other.write_text("{}")
    with pytest.raises(ValueError, match="not a pool, gm or server"):
        plots.write_plots(other)


def test_the_benchmarks_name_their_kind(tmp_path: Path) -> None:
    src = tmp_path / "my-run.json"
    shutil.copy(HERE / "gm.json", src)
    assert [p.name for p in plots.write_plots(src, kind="gm")] == ["my-run-speedup.png"]
