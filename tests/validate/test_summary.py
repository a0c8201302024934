"""Tests of clarity.validate.summary: the cross-validation table, target checks, fold curves and
summary.md, on the tiny brains' coarse split and folds."""

from __future__ import annotations

import pandas as pd
import pytest

from clarity import validate as V


def test_coarse_split_and_cv_table(run_small, fold1):
    paths, _ = fold1
    res = run_small(paths, "coarse", retrain=False)
    assert set(res.metrics.variant) == {"cnn", "log", "template"}
    run_small(paths, "fold2", retrain=False)
    df = V.collect_cv(paths.reports)
    assert list(df.split.unique()) == ["coarse", "fold1", "fold2"] or \
        set(df.split) == {"coarse", "fold1", "fold2"}
    table = V.cv_table(df, path=paths.reports / "cv_metrics.csv")
    saved = pd.read_csv(paths.reports / "cv_metrics.csv")
    assert len(saved) == len(table)
    for v in ("cnn", "log", "template"):
        for lab in ("annotations", "truth"):
            sub = table[(table.variant == v) & (table.labels == lab)]
            assert {"fold1", "fold2", "mean", "std", "coarse"} <= set(sub.split)
            folds = sub[sub.split.isin(["fold1", "fold2"])]
            mean = sub[sub.split == "mean"].iloc[0]
            assert mean.f1 == pytest.approx(folds.f1.mean())  # coarse is not averaged in
            assert sub[sub.split == "std"].iloc[0].roc_auc == pytest.approx(folds.roc_auc.std(ddof=1))
    # cnn_retrained exists in fold1 only: a mean over one fold, std NaN
    r = table[(table.variant == "cnn_retrained") & (table.split == "std")]
    assert r.f1.isna().all()
    checks = V.target_checks(table, variant="cnn")
    assert len(checks) == 5 and checks.passed.dtype == bool


def test_plots_and_summary(fold1):
    import matplotlib

    matplotlib.use("Agg")
    paths, _ = fold1
    ax = V.plot_fold_curves(paths.reports, kind="roc", variant="cnn")
    assert len(ax.get_lines()) >= 2  # one curve per fold plus the diagonal
    ax = V.plot_fold_curves(paths.reports, kind="pr", variant="template", labels="truth")
    assert ax.get_legend() is not None
    table = V.cv_table(V.collect_cv(paths.reports))
    md = V.write_summary(paths.reports, table=table, review_labels_used=True,
                         figures=["cv_roc.png"], notebooks=["04b_cv_summary.ipynb"]).read_text()
    assert "annotations + review" in md and "0.737" in md and "cv_roc.png" in md
    assert "PASS" in md or "FAIL" in md


def test_fold_curves_per_split(fold1):
    paths, _ = fold1
    curves = V.fold_curves(paths.reports, variant="cnn", labels="annotations")
    assert "fold1 (b1,b2)" in curves
    y, s = curves["fold1 (b1,b2)"]
    p = pd.read_csv(paths.fold_reports("fold1") / "predictions.csv")
    assert len(y) == len(s) == (p.variant == "cnn").sum() and 0 < y.sum() < len(y)
