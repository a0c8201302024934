"""The report's scheduler: order, side by side, failures (clarity.scheduler)."""

import time

from clarity.scheduler import Job, downstream, run_jobs


def _sleep_and_log(path: str, name: str, seconds: float, fail: bool, env: dict):
    with open(path, "a") as f:
        f.write(f"start {name} {time.time():.3f} {env.get('X', '')}\n")
    time.sleep(seconds)
    with open(path, "a") as f:
        f.write(f"end {name} {time.time():.3f}\n")
    return ("ValueError", "boom") if fail else None


def _events(path):
    out = {}
    for line in open(path):
        kind, name, t, *rest = line.split()
        out[(kind, name)] = float(t)
        if kind == "start":
            out[("env", name)] = rest[0] if rest else ""
    return out


AFTER = {"a": set(), "b": {"a"}, "c": {"a"}, "d": {"b", "c"}, "e": {"c"}}


def _jobs(log, *, fail=(), seconds=0.3):
    return [Job(s, s, (str(log), s, seconds, s in fail), {"X": s.upper()}) for s in "abcde"]


def test_downstream_counts_everything_that_waits():
    assert downstream(AFTER) == {"a": 4, "b": 1, "c": 2, "d": 0, "e": 0}


def test_jobs_wait_for_their_steps_and_run_side_by_side(tmp_path):
    log = tmp_path / "log"
    done = []
    failures = run_jobs(_jobs(log), AFTER, _sleep_and_log, n_jobs=2, log=lambda s: None,
                        on_done=lambda job, sec, start: done.append(job.step))
    assert failures == [] and sorted(done) == list("abcde")
    ev = _events(log)
    for step, before in AFTER.items():
        for b in before:
            assert ev[("start", step)] >= ev[("end", b)]
    assert ev[("start", "c")] < ev[("end", "b")]  # b and c side by side
    assert ev[("env", "d")] == "D"  # each job's environment reaches it


def test_one_job_at_a_time_keeps_the_given_order_where_free(tmp_path):
    log = tmp_path / "log"
    order = []
    run_jobs(_jobs(log, seconds=0.0), AFTER, _sleep_and_log, n_jobs=1, log=lambda s: None,
             on_done=lambda job, sec, start: order.append(job.step))
    # c before b: more notebooks wait for c (d and e) than for b (d)
    assert order == ["a", "c", "b", "d", "e"]


def test_a_failure_starts_nothing_new(tmp_path):
    log = tmp_path / "log"
    lines = []
    failures = run_jobs(_jobs(log, fail=("c",), seconds=0.0), AFTER, _sleep_and_log, n_jobs=1, log=lines.append)
    assert failures == ["c"]
    ev = _events(log)
    assert ("start", "d") not in ev and ("start", "e") not in ev and ("start", "b") not in ev
    assert any("c FAILED: ValueError: boom" in x for x in lines)


def test_workers_end_when_the_report_is_killed(tmp_path):
    import os
    import signal
    import subprocess
    import sys

    pids = tmp_path / "pids"
    code = f"""
import concurrent.futures as cf, multiprocessing as mp, os, time
from clarity.resources import die_with_parent

def work(path):
    with open(path, "a") as f:
        f.write(f"{{os.getpid()}}\\n")
    time.sleep(60)

if __name__ == "__main__":
    with cf.ProcessPoolExecutor(1, mp_context=mp.get_context("spawn"), initializer=die_with_parent) as pool:
        pool.submit(work, {str(pids)!r}).result()
"""
    script = tmp_path / "report.py"
    script.write_text(code)
    proc = subprocess.Popen([sys.executable, str(script)], cwd=str(tmp_path),
                            env={**os.environ, "PYTHONPATH": os.pathsep.join(sys.path)})
    deadline = time.time() + 60
    while not (pids.exists() and pids.read_text().strip()) and time.time() < deadline:
        time.sleep(0.1)
    worker = int(pids.read_text().split()[0])
    proc.send_signal(signal.SIGKILL)  # no cleanup at all in the parent
    proc.wait()
    deadline = time.time() + 10
    while time.time() < deadline:
        try:
            os.kill(worker, 0)
        except ProcessLookupError:
            break
        time.sleep(0.1)
    else:
        os.kill(worker, signal.SIGKILL)
        raise AssertionError("the worker outlived its killed parent")
