"""Run the report's notebooks side by side where their order allows it.

The report is a small graph: each notebook waits for the notebooks whose files it reads
(:data:`clarity.pipeline.STEPS`, ``after``). :func:`run_jobs` starts every job whose notebooks
before it have finished, at most ``n_jobs`` at once, each in a worker process of its own (papermill
starts the kernel there, with the job's environment), and the ones that more notebooks wait for
first. With ``n_jobs=1`` the jobs run one after the other in this process, as a plain loop.

A failed job stops new notebooks from starting (those already running finish, and the other
splits of a notebook already started still run): later notebooks would read its files.
"""

from __future__ import annotations

import concurrent.futures as cf
import multiprocessing as mp
import time
from dataclasses import dataclass, field
from typing import Callable, Mapping, Sequence

from .resources import die_with_parent

__all__ = ["Job", "run_jobs", "downstream"]


@dataclass
class Job:
    """One notebook run: ``step`` (the notebook it belongs to; the splits of a per-split notebook
    are several jobs of one step), the ``label`` printed, ``fn``'s arguments and its environment."""

    step: str
    label: str
    args: tuple
    env: dict = field(default_factory=dict)


def downstream(after: Mapping[str, set[str]]) -> dict[str, int]:
    """For each step, how many steps wait for it, directly or not (its priority)."""
    out = {}
    for step in after:
        seen, todo = set(), [s for s, before in after.items() if step in before]
        while todo:
            s = todo.pop()
            if s not in seen:
                seen.add(s)
                todo += [t for t, before in after.items() if s in before]
        out[step] = len(seen)
    return out


class _Inline:
    """The executor of ``n_jobs=1``: runs a job when it is submitted, in this process."""

    def submit(self, fn, *args) -> cf.Future:
        fut: cf.Future = cf.Future()
        try:
            fut.set_result(fn(*args))
        except BaseException as exc:  # noqa: BLE001 -- handed to the caller through the future
            fut.set_exception(exc)
        return fut

    def shutdown(self, **_) -> None:
        pass


def run_jobs(jobs: Sequence[Job], after: Mapping[str, set[str]], fn: Callable, *, n_jobs: int,
             on_done: Callable[[Job, float, float], None] | None = None,
             log: Callable[[str], None] = print) -> list[str]:
    """Run ``fn(*job.args, job.env)`` for every job, respecting ``after``; returns the failed labels.

    Parameters
    ----------
    jobs : sequence of Job
        In the order to start them when nothing else decides (the report's order).
    after : mapping step -> set of steps
        The steps each step waits for; steps without jobs here count as finished.
    fn : callable
        Module level (it is sent to worker processes); returns None, or ``(ename, evalue)`` for a
        failed notebook. An exception counts as a failure too.
    n_jobs : int, keyword-only
        Jobs at once; 1: one after the other in this process.
    on_done : callable, keyword-only
        ``on_done(job, seconds, started)`` after each job that succeeded (``started``: seconds
        since the first job started).
    """
    present = {j.step for j in jobs}
    waits = {s: set(after.get(s, ())) & present for s in present}
    rank = downstream(waits)
    order = {id(j): i for i, j in enumerate(jobs)}
    pending, running, failures = list(jobs), {}, []
    left = {s: sum(j.step == s for j in jobs) for s in present}
    finished: set[str] = set()
    begun: set[str] = set()  # steps with a job started
    pool = _Inline() if n_jobs <= 1 else cf.ProcessPoolExecutor(n_jobs, mp_context=mp.get_context("spawn"),
                                                              initializer=die_with_parent)
    t_start = time.perf_counter()
    try:
        while pending or running:
            ready = [j for j in pending if waits[j.step] <= finished and (not failures or j.step in begun)]
            ready.sort(key=lambda j: (-rank[j.step], order[id(j)]))
            while ready and len(running) < max(1, n_jobs):
                job = ready.pop(0)
                pending.remove(job)
                begun.add(job.step)
                log(f"[clarity] {job.label} ...")
                t0 = time.perf_counter()
                running[pool.submit(fn, *job.args, job.env)] = (job, t0)
            if not running:
                break  # a failure left nothing that may start
            done, _ = cf.wait(list(running), return_when=cf.FIRST_COMPLETED)
            for fut in done:
                job, t0 = running.pop(fut)
                seconds = time.perf_counter() - t0
                try:
                    err = fut.result()
                except Exception as exc:  # a dead kernel, a broken worker: this job failed
                    err = (type(exc).__name__, str(exc))
                left[job.step] -= 1
                if err is not None:
                    failures.append(job.label)
                    log(f"[clarity] {job.label} FAILED: {err[0]}: {err[1]}")
                    continue
                if on_done is not None:
                    on_done(job, seconds, t0 - t_start)
                if left[job.step] == 0 and not any(f.startswith(job.step) for f in failures):
                    finished.add(job.step)
    finally:
        pool.shutdown(cancel_futures=True)
    return failures
