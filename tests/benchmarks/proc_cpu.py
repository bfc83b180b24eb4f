"""CPU time of processes, read from Linux's /proc, for the benchmarks (by hand, not CI).

Two ways to count: `cpu_by_pid` gives each live process's own time (a set measured
before and after: one that ended in between is not counted), `tree_cpu_seconds` a
process with its children as a total that only grows (a child's time stays counted
after it exits: the parent's reaped-children total holds it).
"""

import contextlib
import os


def stat_fields(pid) -> list[str] | None:
    """/proc/<pid>/stat's fields after the command name (state first: ppid is [1],
    utime, stime, cutime, cstime are [11:15]), or None when there is no such process."""
    try:
        with open(f"/proc/{pid}/stat") as handle:
            return handle.read().rsplit(")", 1)[1].split()
    except (FileNotFoundError, ProcessLookupError):
        return None


def children(pid) -> list[int]:
    """The process's children, forked by any of its threads."""
    found = []
    with contextlib.suppress(OSError):
        for task in os.listdir(f"/proc/{pid}/task"):
            with contextlib.suppress(OSError), open(f"/proc/{pid}/task/{task}/children") as f:
                found.extend(int(child) for child in f.read().split())
    return found


def process_tree(pid: int) -> list[int]:
    pids, todo = [], [pid]
    while todo:
        current = todo.pop()
        pids.append(current)
        todo.extend(children(current))
    return pids


def command(pid) -> str:
    try:
        with open(f"/proc/{pid}/comm") as handle:
            return handle.read().strip()
    except FileNotFoundError:
        return ""


def cpu_by_pid(pids) -> dict[int, float]:
    """User + system CPU seconds of each process that is still there."""
    ticks, cpu = os.sysconf("SC_CLK_TCK"), {}
    for pid in pids:
        fields = stat_fields(pid)
        if fields is not None:
            cpu[pid] = (int(fields[11]) + int(fields[12])) / ticks  # utime, stime
    return cpu


def tree_cpu_seconds(parent) -> float:
    """CPU time (user + system) of a process and its children, as a total that only
    grows: the children alive now, plus the parent's own time and that of the children
    it has already reaped (an exiting child's time moves there: a gunicorn worker
    restarted, a PostgreSQL backend whose connection reached its age); 0 for None."""
    if parent is None:
        return 0.0
    total = sum(cpu_by_pid(children(parent)).values())
    # The parent last: a child reaped while its siblings were read is in cutime by now.
    fields = stat_fields(parent)
    if fields is None:
        return 0.0
    ticks = sum(int(value) for value in fields[11:15])  # utime, stime, cutime, cstime
    return total + ticks / os.sysconf("SC_CLK_TCK")
