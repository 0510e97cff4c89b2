"""How many CPUs this process may really use, and how to split them between workers.

TorchServe's defaults start one worker per *node* core, each with a full
intra-op thread pool. In a container limited to 2 CPUs on a 64-core node that
is 64 workers x 64 threads fighting over 2 CPUs; on a 2-core machine the
oversubscription was measured to cut throughput 9-18x. So the budget comes
from the container's cgroup quota (v2 ``cpu.max`` or v1 ``cfs_quota_us``)
and the CPU affinity mask, whichever is smaller, never from ``os.cpu_count()``.
"""

from __future__ import annotations

import math
import os
from pathlib import Path

_CGROUP_V2 = Path("/sys/fs/cgroup/cpu.max")
_CGROUP_V1_QUOTA = Path("/sys/fs/cgroup/cpu/cpu.cfs_quota_us")
_CGROUP_V1_PERIOD = Path("/sys/fs/cgroup/cpu/cpu.cfs_period_us")


def _cgroup_quota(root: Path = Path("/")) -> float | None:
    """CPUs granted by the cgroup quota, or None when unlimited or unreadable."""
    v2 = root / _CGROUP_V2.relative_to("/")
    try:
        quota, period = v2.read_text().split()[:2]
        if quota != "max":
            return int(quota) / int(period)
        return None
    except (OSError, ValueError):
        pass
    try:
        quota_us = int((root / _CGROUP_V1_QUOTA.relative_to("/")).read_text())
        period_us = int((root / _CGROUP_V1_PERIOD.relative_to("/")).read_text())
    except (OSError, ValueError):
        return None
    if quota_us <= 0 or period_us <= 0:
        return None
    return quota_us / period_us


def cpu_limit(root: Path = Path("/")) -> int:
    """Whole CPUs available: min(cgroup quota rounded up, affinity mask), at least 1.

    ``CATSDOGS_CPU_LIMIT`` overrides the detection (for a benchmark or a pod
    whose limit is set elsewhere).
    """
    override = os.environ.get("CATSDOGS_CPU_LIMIT")
    if override:
        return max(1, int(override))
    try:
        available = len(os.sched_getaffinity(0))
    except AttributeError:  # not Linux
        available = os.cpu_count() or 1
    quota = _cgroup_quota(root)
    if quota is not None:
        available = min(available, max(1, math.ceil(quota)))
    return max(1, available)


def threads_per_worker(workers: int, cpus: int | None = None) -> int:
    """Intra-op threads for each worker so that workers x threads <= CPU limit."""
    cpus = cpu_limit() if cpus is None else cpus
    return max(1, cpus // max(1, workers))
