"""Notebook 05 in a real browser: JupyterLab + headless Chromium, clicked as a person would.

Usage::

    python bench/browser_check.py [--out /tmp/clarity-browser] [--clicks 6] [--keep]

Needs JupyterLab (``make lab`` installs it: ``pip install -e '.[lab]'``), Playwright's Python
package (``pip install playwright``) and a Chromium (``apt-get install chromium``); it downloads
no browser of its own. Steps:

1. builds a tiny finished "report" in a temporary folder (:func:`build_report`: four brains of
   noise and blobs, their corrected volumes, the four folds' ``predictions.csv`` and
   ``metrics.csv``: what notebook 05 reads; no training);
2. copies notebook 05 next to it with its parameters cell pointed at that report (``DATA_DIR``,
   ``RUN``, ``REVIEWER``; everything else at its interactive defaults), and serves it with
   JupyterLab on a free port of 127.0.0.1 (token, temporary settings and workspaces);
3. opens it in Chromium (1366 x 768), runs all cells from the Run menu, waits for the gallery,
   checks the layout (no horizontal scroll, tiles per row, every tile's picture rendered, the
   filters read "all brains" / "all folds"), clicks "cell" / "not a cell" on tiles and times each click
   until its row is in ``labels/review.csv`` (and until the button turns colour), checks the live
   counter, "next unreviewed" and the context view, and takes screenshots;
4. checks the interactive run wrote to ``reports/<run>/interactive/`` only and started no
   retraining.

Prints one JSON object (also written to ``<out>/browser_check.json``) and exits 1 if a check
failed. Timing goals (not enforced here; printed): click to saved row < 200 ms.
"""

from __future__ import annotations

import argparse
import csv
import json
import os
import re
import shutil
import socket
import statistics
import subprocess
import sys
import tempfile
import time
import urllib.request
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
NOTEBOOK = ROOT / "notebooks" / "05_inspect_false_positives.ipynb"
CHROMIUM = "/usr/bin/chromium"
CHROMIUM_ARGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking",
                 "--disable-component-update", "--no-first-run"]
VIEWPORT = {"width": 1366, "height": 768}
SHAPE = (24, 48, 48)
BRAINS = ("b1", "b2", "b3", "b4")


# --------------------------------------------------------------------------------------------
# a tiny finished report (what notebook 05 reads)
# --------------------------------------------------------------------------------------------
def build_report(root: str | os.PathLike, *, run: str = "check", n_fp: int = 10, seed: int = 0):
    """Write a data root and a report tree for notebook 05 under ``root``; returns the
    :class:`clarity.paths.Paths` (``root/data``, ``root/models``, ``root/reports``).

    Each brain ``b1`` .. ``b4`` is a (24, 48, 48) volume of noise with bright blobs (corrected
    volume in ``interim/``, complete truth in ``truth/``); fold ``k`` tests brain ``bk``: its
    ``predictions.csv`` holds ``n_fp`` false positives of variant ``cnn`` (label 0, score >= 0.5;
    the first half on unannotated blobs, truth 1), two true positives and a true negative, and
    ``metrics.csv`` the threshold 0.5.
    """
    import numpy as np
    import pandas as pd

    from clarity.io import save_npy, write_points_csv
    from clarity.paths import Paths

    root = Path(root)
    paths = Paths(data_dir=root / "data", run=run, models_root=root / "models",
                  reports_root=root / "reports")
    rng = np.random.default_rng(seed)
    zz, yy, xx = np.indices(SHAPE)
    for k, brain in enumerate(BRAINS, start=1):
        cells = np.column_stack([rng.integers(4, SHAPE[0] - 4, 12), rng.integers(5, SHAPE[1] - 5, 12),
                                 rng.integers(5, SHAPE[2] - 5, 12)])
        vol = rng.normal(0.0, 0.3, SHAPE).astype(np.float32)
        for z, y, x in cells:
            vol += 3.0 * np.exp(-((zz - z) ** 2 + (yy - y) ** 2 + (xx - x) ** 2) / (2 * 1.6 ** 2))
        save_npy(paths.corrected(brain), vol.astype(np.float32))
        write_points_csv(paths.truth_csv(brain), cells)
        rows = []
        n_cell = n_fp // 2
        for i in range(n_fp):
            if i < n_cell:
                (z, y, x), truth = cells[i], 1
            else:
                z, y, x = (int(rng.integers(2, s - 2)) for s in SHAPE)
                truth = 0
            rows.append((brain, int(z), int(y), int(x), 0, "near", truth, "cnn",
                         round(float(rng.uniform(0.5, 1.0)), 4)))
        for z, y, x in cells[-2:]:
            rows.append((brain, int(z), int(y), int(x), 1, "annotated", 1, "cnn", 0.97))
        rows.append((brain, 1, 1, 1, 0, "background", 0, "cnn", 0.05))
        d = paths.fold_reports(f"fold{k}")
        d.mkdir(parents=True, exist_ok=True)
        pd.DataFrame(rows, columns=["brain", "z", "y", "x", "label", "origin", "truth", "variant",
                                    "score"]).to_csv(d / "predictions.csv", index=False)
        pd.DataFrame([{"split": f"fold{k}", "variant": "cnn", "labels": lab, "f1": 0.9,
                       "threshold": 0.5} for lab in ("annotations", "truth")]
                     ).to_csv(d / "metrics.csv", index=False)
    return paths


def set_parameters(src: str | os.PathLike, dst: str | os.PathLike, **params) -> Path:
    """Copy notebook ``src`` to ``dst`` with lines ``NAME: type = value`` of its parameters cell
    set to ``repr(params[NAME])``, as a person edits the cell (outputs stay empty)."""
    import nbformat

    nb = nbformat.read(str(src), as_version=4)
    cell = next(c for c in nb.cells if "parameters" in c.metadata.get("tags", []))
    lines = cell.source.splitlines()
    for name, value in params.items():
        pat = re.compile(rf"^{name}\s*:\s*([^=]+?)\s*=.*$")
        hits = [i for i, ln in enumerate(lines) if pat.match(ln)]
        if len(hits) != 1:
            raise KeyError(f"{src}: parameter {name} not found once in the parameters cell")
        lines[hits[0]] = f"{name}: {pat.match(lines[hits[0]]).group(1)} = {value!r}"
    cell.source = "\n".join(lines)
    dst = Path(dst)
    dst.parent.mkdir(parents=True, exist_ok=True)
    nbformat.write(nb, str(dst))
    return dst


def review_rows(path: Path) -> list[dict]:
    """Rows of a review CSV (``[]`` while it does not exist or is being replaced)."""
    try:
        with open(path, newline="") as fh:
            return list(csv.DictReader(fh))
    except (FileNotFoundError, PermissionError):
        return []


# --------------------------------------------------------------------------------------------
# JupyterLab
# --------------------------------------------------------------------------------------------
def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def start_lab(root_dir: Path, work: Path, env_extra: dict, *, port: int | None = None,
              token: str = "clarity-check", timeout: float = 90.0):
    """Start JupyterLab on 127.0.0.1 serving ``root_dir``; returns (process, base URL, token).

    Settings and workspaces live in ``work`` (no news prompt, nothing restored from elsewhere);
    ``env_extra`` reaches the kernels (e.g. ``CLARITY_REPORTS_ROOT``).
    """
    port = port or free_port()
    settings = work / "lab-settings"
    (settings / "@jupyterlab" / "apputils-extension").mkdir(parents=True, exist_ok=True)
    (settings / "@jupyterlab" / "apputils-extension" / "notification.jupyterlab-settings"
     ).write_text('{"fetchNews": "false", "checkForUpdates": false}')
    env = dict(os.environ, JUPYTERLAB_SETTINGS_DIR=str(settings),
               JUPYTERLAB_WORKSPACES_DIR=str(work / "lab-workspaces"), **env_extra)
    cmd = [sys.executable, "-m", "jupyterlab", "--no-browser", "--ip=127.0.0.1", f"--port={port}",
           "--ServerApp.port_retries=0", f"--ServerApp.root_dir={root_dir}",
           f"--IdentityProvider.token={token}", "--LabApp.expose_app_in_browser=True"]
    if hasattr(os, "getuid") and os.getuid() == 0:
        cmd.append("--allow-root")
    log = open(work / "jupyterlab.log", "w")
    proc = subprocess.Popen(cmd, cwd=root_dir, env=env, stdout=log, stderr=subprocess.STDOUT)
    base = f"http://127.0.0.1:{port}"
    t0 = time.monotonic()
    while time.monotonic() - t0 < timeout:
        if proc.poll() is not None:
            raise RuntimeError(f"JupyterLab exited ({proc.returncode}); see {work / 'jupyterlab.log'}")
        try:
            with urllib.request.urlopen(f"{base}/api/status?token={token}", timeout=2) as r:
                if r.status == 200:
                    return proc, base, token
        except OSError:
            time.sleep(0.3)
    stop_lab(proc)
    raise RuntimeError(f"JupyterLab did not answer in {timeout:.0f} s; see {work / 'jupyterlab.log'}")


def stop_lab(proc: subprocess.Popen) -> None:
    """Stop the JupyterLab server this script started (and its kernels)."""
    if proc.poll() is None:
        proc.terminate()
        try:
            proc.wait(timeout=20)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(timeout=10)


# --------------------------------------------------------------------------------------------
# the browser session
# --------------------------------------------------------------------------------------------
_LAYOUT_JS = """() => {
  const grid = document.querySelector('.widget-gridbox');
  const area = grid.closest('.jp-OutputArea-output') || grid.parentElement;
  const tiles = Array.from(grid.children).filter(e => e.offsetParent !== null);
  const tops = tiles.map(e => Math.round(e.getBoundingClientRect().top));
  const first = tops.length ? tops.filter(t => t === tops[0]).length : 0;
  const g = grid.getBoundingClientRect();
  let scroller = false;
  for (let e = grid; e; e = e.parentElement) {
    if (e.scrollWidth > e.clientWidth + 1 && getComputedStyle(e).overflowX !== 'visible'
        && getComputedStyle(e).overflowX !== 'hidden') { scroller = true; }
  }
  const selects = Array.from(document.querySelectorAll('.widget-dropdown select'))
      .map(s => s.selectedIndex >= 0 ? s.options[s.selectedIndex].textContent.replace(/\u00a0/g, ' ') : '');
  const imgs = Array.from(grid.querySelectorAll('img')).filter(i => i.offsetParent !== null);
  const errors = document.querySelectorAll('.jupyter-widgets-error-widget').length;
  return {window_width: window.innerWidth, grid_left: g.left, grid_right: g.right,
          output_width: area.getBoundingClientRect().width, tiles_per_row: first,
          visible_tiles: tiles.length, horizontal_scroll: scroller,
          dropdowns: selects, images: imgs.length, widget_errors: errors,
          image_px: imgs.slice(0, 1).map(i => [i.naturalWidth, i.naturalHeight, i.width]),
          tile_width: tiles.length ? tiles[0].getBoundingClientRect().width : 0};
}"""


def _run_all(page) -> None:
    """Run ▸ Run All Cells, from the menu bar (as a person does)."""
    page.locator(".lm-MenuBar-itemLabel", has_text=re.compile(r"^Run$")).click()
    page.locator(".lm-Menu-itemLabel", has_text=re.compile(r"^Run All Cells$")).click()


def _accept_kernel_dialog(page, wait_ms: int = 8000) -> bool:
    """If JupyterLab asks which kernel to start, take the one it proposes (Python 3), as a person
    would; returns whether it asked."""
    dialog = page.locator(".jp-Dialog", has_text="Select Kernel")
    try:
        dialog.wait_for(timeout=wait_ms)
    except Exception:  # playwright's TimeoutError: no dialog
        return False
    dialog.locator("button", has_text=re.compile(r"^Select$")).click()
    dialog.wait_for(state="detached")
    return True


def wait_saved(path: Path, saved, timeout: float = 10.0, what: str = "the row not saved") -> float:
    """Poll ``path`` every 2 ms until ``saved(rows)`` is true of its rows (:func:`review_rows`);
    returns when (perf_counter), raises TimeoutError (``"<path>: <what> after <timeout> s"``)."""
    t_end = time.perf_counter() + timeout
    while time.perf_counter() < t_end:
        if saved(review_rows(path)):
            return time.perf_counter()
        time.sleep(0.002)
    raise TimeoutError(f"{path}: {what} after {timeout} s")


def _wait_rows(path: Path, n: int, timeout: float = 10.0) -> float:
    """Wait until ``path`` has ``n`` rows; returns when (perf_counter), raises on timeout."""
    return wait_saved(path, lambda rows: len(rows) >= n, timeout, f"fewer than {n} rows")


def browser_session(url: str, store: Path, shots: Path, *, clicks: int = 6,
                    timeout_s: float = 120.0, session=None) -> dict:
    """Open the notebook at ``url`` in headless Chromium, run it, click, measure; returns the
    measurements (see the module docstring). ``session(page, store, shots, clicks=clicks)`` does
    the running and clicking (default: notebook 05's); a failure leaves
    ``shots/failure_1366x768.png``."""
    from playwright.sync_api import sync_playwright

    with sync_playwright() as pw:
        exe = CHROMIUM if Path(CHROMIUM).exists() else shutil.which("chromium")
        browser = pw.chromium.launch(executable_path=exe, args=CHROMIUM_ARGS)
        page = browser.new_page(viewport=VIEWPORT)
        page.set_default_timeout(timeout_s * 1000)
        try:
            page.goto(url)
            return (session or _session)(page, store, shots, clicks=clicks)
        except Exception:
            page.screenshot(path=str(shots / "failure_1366x768.png"))
            raise
        finally:
            browser.close()


def _session(page, store: Path, shots: Path, *, clicks: int) -> dict:
    out: dict = {}
    if True:
        t0 = time.perf_counter()
        page.locator(".jp-Notebook .jp-Cell").first.wait_for()
        out["kernel_dialog"] = _accept_kernel_dialog(page)
        page.locator(".jp-Notebook-ExecutionIndicator[data-status='idle']").first.wait_for()
        out["open_s"] = round(time.perf_counter() - t0, 2)
        t0 = time.perf_counter()
        _run_all(page)
        grid = page.locator(".widget-gridbox")
        page.locator(".widget-gridbox img[src^='blob:']").first.wait_for(state="attached")
        out["run_all_to_gallery_s"] = round(time.perf_counter() - t0, 2)
        # the cells after the gallery must be quick (no retraining): wait for the last one
        page.get_by_text(re.compile(r"wrote .*05_review_metrics\.json")).wait_for(state="attached")
        out["run_all_to_last_cell_s"] = round(time.perf_counter() - t0, 2)
        page.locator(".jp-Notebook-ExecutionIndicator[data-status='idle']").first.wait_for()
        # scroll the gallery's header to the top of the window, as a reviewer would
        gallery = page.locator(".jp-OutputArea-output", has=grid).first
        gallery.evaluate("e => e.scrollIntoView({block: 'start'})")
        grid.locator("img").first.wait_for()
        page.wait_for_timeout(500)
        out["layout"] = page.evaluate(_LAYOUT_JS)
        page.screenshot(path=str(shots / "gallery_1366x768.png"))

        # clicks: "cell" / "not a cell" on the first tiles, timed to the saved row and colour
        tiles = grid.locator(":scope > .widget-vbox")
        click_ms, style_ms = [], []
        for i in range(clicks):
            label, css = (("cell", "mod-success") if i % 2 == 0 else ("not a cell", "mod-danger"))
            button = tiles.nth(i).locator("button", has_text=re.compile(rf"^{label}$"))
            button.scroll_into_view_if_needed()
            n = len(review_rows(store))
            t_click = time.perf_counter()
            button.click()
            t_row = _wait_rows(store, n + 1)
            click_ms.append((t_row - t_click) * 1000)
            page.wait_for_function("([b, c]) => b.classList.contains(c)",
                                   arg=[button.element_handle(), css], timeout=10000)
            style_ms.append((time.perf_counter() - t_click) * 1000)
        tiles.first.evaluate("e => e.scrollIntoView({block: 'center'})")
        page.wait_for_timeout(200)
        page.screenshot(path=str(shots / "clicked_1366x768.png"))
        out["click_to_saved_ms"] = [round(v, 1) for v in click_ms]
        out["click_to_colour_ms"] = [round(v, 1) for v in style_ms]
        counter = page.get_by_text(re.compile(r"\d+ of \d+ reviewed")).first
        out["counter_after_clicks"] = counter.inner_text()

        # next unreviewed moves forward from page 1
        page_box = page.locator(".widget-inline-hbox", has_text="page").locator("input").first
        before = page_box.input_value()
        page.locator("button", has_text="next unreviewed").click()
        page.wait_for_function("([e, v]) => e.value !== v", arg=[page_box.element_handle(), before])
        out["next_unreviewed_page"] = [before, page_box.input_value()]

        # context view: opens right below its tile, inside the window
        tiles.first.scroll_into_view_if_needed()
        tiles.first.evaluate("e => e.scrollIntoView({block: 'start'})")
        tiles.first.locator("button", has_text="context").click()
        panel = grid.locator(":scope > .widget-vbox", has=page.locator("button",
                                                                       has_text="hide context"))
        panel.locator("img").wait_for()
        page.wait_for_timeout(300)
        box = panel.locator("img").bounding_box()
        tile_box = tiles.first.bounding_box()
        out["context"] = {"top": round(box["y"]), "bottom": round(box["y"] + box["height"]),
                          "left": round(box["x"]), "right": round(box["x"] + box["width"]),
                          "tile_bottom": round(tile_box["y"] + tile_box["height"]),
                          "inside_window": bool(box["y"] >= 0 and box["y"] + box["height"]
                                                <= VIEWPORT["height"] and box["x"] >= 0
                                                and box["x"] + box["width"] <= VIEWPORT["width"])}
        page.screenshot(path=str(shots / "context_1366x768.png"))
    return out


def check(out_dir: str | os.PathLike, *, clicks: int = 6, keep: bool = True,
          max_click_ms: float = 200.0) -> dict:
    """The whole check (see the module docstring); returns the results with ``ok`` and the
    list of ``failures`` (a median click-to-saved time of ``max_click_ms`` or more is one)."""
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    work = Path(tempfile.mkdtemp(prefix="clarity-browser-"))
    paths = build_report(work, run="check")
    nb_dir = work / "notebooks"
    set_parameters(NOTEBOOK, nb_dir / NOTEBOOK.name, DATA_DIR=str(paths.data_dir), RUN="check",
                   REVIEWER="browser-check")
    env = {"CLARITY_REPORTS_ROOT": str(paths.reports_root),
           "CLARITY_MODELS_ROOT": str(paths.models_root), "OMP_NUM_THREADS": "1"}
    proc, base, token = start_lab(nb_dir, work, env)
    res: dict = {"jupyterlab": _version("jupyterlab"), "chromium": CHROMIUM, "viewport": VIEWPORT}
    try:
        url = f"{base}/lab/tree/{NOTEBOOK.name}?token={token}"
        res.update(browser_session(url, paths.review_csv, out_dir, clicks=clicks))
    finally:
        stop_lab(proc)
    rows = review_rows(paths.review_csv)
    res["store_rows"] = len(rows)
    res["store_reviewers"] = sorted({r.get("reviewer", "") for r in rows})
    res["store_models"] = sorted({r["model"] for r in rows})
    interactive = paths.reports / "interactive"
    res["interactive_outputs"] = sorted(p.name for p in interactive.glob("05_*"))
    res["report_outputs_written"] = sorted(p.name for p in paths.reports.glob("05_*"))
    res["models_written"] = sorted(str(p.relative_to(paths.models_root))
                                   for p in paths.models_root.rglob("*")) if \
        paths.models_root.exists() else []
    res["screenshots"] = [str(out_dir / f"{n}_1366x768.png")
                          for n in ("gallery", "clicked", "context")]
    res["failures"] = _failures(res, clicks, max_click_ms)
    res["ok"] = not res["failures"]
    if keep:
        res["work"] = str(work)
    else:
        shutil.rmtree(work, ignore_errors=True)
    (out_dir / "browser_check.json").write_text(json.dumps(res, indent=2))
    return res


def _failures(res: dict, clicks: int, max_click_ms: float) -> list[str]:
    lay = res.get("layout", {})
    ms = res.get("click_to_saved_ms", [])
    bad = []
    if res.get("store_rows") != clicks:
        bad.append(f"{res.get('store_rows')} rows in the store after {clicks} clicks")
    if res.get("store_reviewers") != ["browser-check"]:
        bad.append(f"reviewers {res.get('store_reviewers')}")
    if lay.get("horizontal_scroll") or lay.get("grid_right", 1e9) > lay.get("window_width", 0):
        bad.append(f"the gallery is wider than the window: {lay}")
    if lay.get("tiles_per_row", 0) < 3:
        bad.append(f"{lay.get('tiles_per_row')} tiles per row at 1366 px")
    if lay.get("dropdowns", [])[:2] != ["all brains", "all folds"]:
        bad.append(f"dropdowns show {lay.get('dropdowns')}")
    if lay.get("widget_errors") or lay.get("images", 0) < lay.get("visible_tiles", 1):
        bad.append(f"widgets failed to render: {lay}")
    if f"{clicks} of " not in res.get("counter_after_clicks", ""):
        bad.append(f"counter reads {res.get('counter_after_clicks')!r}")
    if res.get("next_unreviewed_page") != ["1", "2"]:
        bad.append(f"next unreviewed went {res.get('next_unreviewed_page')}")
    if not res.get("context", {}).get("inside_window"):
        bad.append(f"context view outside the window: {res.get('context')}")
    if res.get("report_outputs_written"):
        bad.append(f"the interactive run wrote the report's {res['report_outputs_written']}")
    if "05_review_metrics.json" not in res.get("interactive_outputs", []):
        bad.append("no reports/<run>/interactive/05_review_metrics.json")
    if res.get("models_written"):
        bad.append(f"models written (retraining?): {res['models_written'][:3]}")
    if ms and statistics.median(ms) >= max_click_ms:
        bad.append(f"median click-to-saved {statistics.median(ms):.0f} ms >= {max_click_ms:.0f} ms")
    return bad


def _version(dist: str) -> str:
    from importlib.metadata import PackageNotFoundError, version

    try:
        return version(dist)
    except PackageNotFoundError:
        return "absent"


def missing_requirements() -> list[str]:
    """What this check needs and this machine lacks (empty: it can run)."""
    import importlib.util

    miss = []
    if not (Path(CHROMIUM).exists() or shutil.which("chromium")):
        miss.append("chromium (apt-get install chromium)")
    for mod, how in (("playwright", "pip install playwright"),
                     ("jupyterlab", "make lab / pip install -e '.[lab]'")):
        if importlib.util.find_spec(mod) is None:
            miss.append(f"{mod} ({how})")
    return miss


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--out", default=str(Path(tempfile.gettempdir()) / "clarity-browser"),
                    help="folder for the screenshots and browser_check.json")
    ap.add_argument("--clicks", type=int, default=6, help="decisions to click and time")
    ap.add_argument("--keep", action="store_true", help="keep the temporary report and logs")
    args = ap.parse_args(argv)
    miss = missing_requirements()
    if miss:
        print(f"browser check skipped: missing {', '.join(miss)}", file=sys.stderr)
        return 2
    res = check(args.out, clicks=args.clicks, keep=args.keep)
    print(json.dumps(res, indent=2))
    ms = res.get("click_to_saved_ms") or [float("nan")]
    print(f"click -> saved row: median {statistics.median(ms):.0f} ms, max {max(ms):.0f} ms; "
          f"{'OK' if res['ok'] else 'FAILED: ' + '; '.join(res['failures'])}", file=sys.stderr)
    return 0 if res["ok"] else 1


if __name__ == "__main__":
    sys.path.insert(0, str(ROOT))
    sys.exit(main())
