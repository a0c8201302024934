"""Tests of clarity.plotting's detection figures (Agg backend, nothing shown)."""

from __future__ import annotations

import matplotlib

matplotlib.use("Agg")

import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402

from clarity.plotting import detection_figure, snr_histogram  # noqa: E402


def _legend_texts(ax) -> list[str]:
    leg = ax.get_legend()
    return [t.get_text() for t in leg.get_texts()] if leg is not None else []


def test_snr_histogram_labels_medians_and_gate():
    rng = np.random.default_rng(0)
    fig = snr_histogram({"a": rng.normal(4, 1, 200), "b": np.r_[1.0, 2.0, 3.0, np.nan], "empty": []},
                        gate=2.0, title="t")
    texts = _legend_texts(fig.axes[0])
    assert any(t.startswith("a (n=200, median 3.") or t.startswith("a (n=200, median 4.") for t in texts)
    assert "b (n=3, median 2.00)" in texts          # NaN dropped
    assert not any(t.startswith("empty") for t in texts)  # nothing drawn for an empty group
    assert "gate 2" in texts
    plt.close(fig)


def test_detection_figure_rejected_group_and_aspect():
    vol = np.zeros((5, 100, 50), np.float32)
    pts = np.array([[2, 10, 10], [2, 50, 20]], float)
    fig = detection_figure(vol, detections=pts[:1], rejected=pts[1:], z=2)
    assert "rejected (1)" in _legend_texts(fig.axes[0]) and "detected (1)" in _legend_texts(fig.axes[1])
    w, h = fig.get_size_inches()
    assert w < 14  # tall planes: a narrower figure, not a wide one with empty space
    plt.close(fig)
