"""How many CPUs this process may use: SLURM's allocation, the cgroup CPU quota, the affinity;
and the memory glibc's allocator keeps after numpy has freed it.

``os.sched_getaffinity`` sees ``taskset`` and cpusets but not a CPU quota, which is how
``docker/podman run --cpus N`` and many batch systems limit a job; so the quota is read from
the process's cgroup (v2 ``cpu.max``, v1 ``cpu.cfs_quota_us`` / ``cpu.cfs_period_us``).
"""

from __future__ import annotations

import functools
import math
import os
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path, PurePosixPath
from typing import Any

#: Where each count came from, as recorded in the settings log.
SOURCE_SLURM = "SLURM_CPUS_PER_TASK"
SOURCE_CGROUP = "cgroup CPU quota"
SOURCE_AFFINITY = "CPU affinity"
SOURCE_COMMAND_LINE = "--nprocs"


def parse_cpu_max(text: str) -> float | None:
    """CPUs allowed by a cgroup v2 ``cpu.max`` ("QUOTA PERIOD" or "max PERIOD"); None: no
    limit or unreadable."""
    fields = text.split()
    if not fields or fields[0] == "max":
        return None
    period = fields[1] if len(fields) > 1 else "100000"
    return _ratio(fields[0], period)


def parse_cfs(quota_text: str, period_text: str) -> float | None:
    """CPUs allowed by cgroup v1 ``cpu.cfs_quota_us`` / ``cpu.cfs_period_us``; None: no limit
    (quota -1) or unreadable."""
    return _ratio(quota_text.strip(), period_text.strip())


def _ratio(quota: str, period: str) -> float | None:
    try:
        q, p = int(quota), int(period)
    except ValueError:
        return None
    if q <= 0 or p <= 0:
        return None
    return q / p


@dataclass(frozen=True)
class _Mount:
    root: PurePosixPath  # the cgroup path that appears at the mount point
    point: Path
    version: int  # 1 or 2


def _cpu_mounts(mountinfo: str) -> list[_Mount]:
    """cgroup v2 mounts and v1 mounts carrying the ``cpu`` controller, from
    ``/proc/self/mountinfo`` ("ID PARENT DEV ROOT POINT OPTS [TAGS] - FSTYPE SOURCE SUPER")."""
    mounts = []
    for line in mountinfo.splitlines():
        left, sep, right = line.partition(" - ")
        fields, tail = left.split(), right.split()
        if not sep or len(fields) < 5 or not tail:
            continue
        root, point = PurePosixPath(_unescape(fields[3])), Path(_unescape(fields[4]))
        if tail[0] == "cgroup2":
            mounts.append(_Mount(root, point, 2))
        elif tail[0] == "cgroup" and len(tail) > 2 and "cpu" in tail[2].split(","):
            mounts.append(_Mount(root, point, 1))
    return mounts


def _unescape(field: str) -> str:
    """mountinfo writes space, tab, newline and backslash as octal escapes."""
    for code, char in (("\\040", " "), ("\\011", "\t"), ("\\012", "\n"), ("\\134", "\\")):
        field = field.replace(code, char)
    return field


def _own_groups(proc_cgroup: str) -> dict[int, PurePosixPath]:
    """This process's cgroup per version from ``/proc/self/cgroup``: the v2 line ``0::PATH``
    and the v1 line whose controllers include ``cpu``."""
    groups: dict[int, PurePosixPath] = {}
    for line in proc_cgroup.splitlines():
        parts = line.split(":", 2)
        if len(parts) != 3:
            continue
        hierarchy, controllers, path = parts
        if hierarchy == "0" and controllers == "":
            groups.setdefault(2, PurePosixPath(path))
        elif "cpu" in controllers.split(","):
            groups[1] = PurePosixPath(path)
    return groups


def cgroup_cpu_quota(proc_self: Path = Path("/proc/self")) -> float | None:
    """The tightest CPU quota (in CPUs, may be fractional) on this process's cgroup and its
    ancestors up to the mount point, v1 or v2; None when there is none or it cannot be read.

    ``proc_self``: the folder holding ``cgroup`` and ``mountinfo`` (tests pass a fake one)."""
    try:
        groups = _own_groups((proc_self / "cgroup").read_text())
        mounts = _cpu_mounts((proc_self / "mountinfo").read_text())
    except OSError:
        return None
    limits = []
    for mount in mounts:
        group = groups.get(mount.version)
        if group is None:
            continue
        try:  # inside a container the mount's root is the container's own group
            relative = group.relative_to(mount.root)
        except ValueError:
            relative = PurePosixPath(".")
        folder = mount.point / relative
        while True:
            limit = _read_limit(folder, mount.version)
            if limit is not None:
                limits.append(limit)
            if folder == mount.point or mount.point not in folder.parents:
                break
            folder = folder.parent
    return min(limits) if limits else None


def _read_limit(folder: Path, version: int) -> float | None:
    try:
        if version == 2:
            return parse_cpu_max((folder / "cpu.max").read_text())
        return parse_cfs(
            (folder / "cpu.cfs_quota_us").read_text(), (folder / "cpu.cfs_period_us").read_text()
        )
    except OSError:
        return None


def affinity_count() -> int:
    """CPUs in this process's affinity mask (``os.cpu_count()`` where there is none)."""
    if hasattr(os, "sched_getaffinity"):
        return max(1, len(os.sched_getaffinity(0)))
    return max(1, os.cpu_count() or 1)


def available_cpus(
    environ: Mapping[str, str], proc_self: Path = Path("/proc/self")
) -> tuple[int, str]:
    """(number of CPUs to use, where it came from).

    In order: ``SLURM_CPUS_PER_TASK`` when it is a positive integer; else the smaller of the
    cgroup CPU quota (rounded down, at least 1) and the affinity mask, the source naming
    whichever of the two set it."""
    slurm = environ.get("SLURM_CPUS_PER_TASK", "").strip()
    if slurm.isdigit() and int(slurm) > 0:
        return int(slurm), SOURCE_SLURM
    affinity = affinity_count()
    quota = cgroup_cpu_quota(proc_self)
    if quota is not None:
        allowed = max(1, math.floor(quota))
        if allowed < affinity:
            return allowed, SOURCE_CGROUP
    return affinity, SOURCE_AFFINITY


#: The device nodes of an NVIDIA driver: without one, torch can see no CUDA device.
NVIDIA_DEVICES = "nvidia[0-9]*"


def gpu_possible(dev: Path = Path("/dev")) -> bool:
    """Whether a CUDA device may exist here (an NVIDIA device node in ``dev``), asked without
    importing torch (a second): where this is False, ``--device auto`` is the CPU."""
    try:
        return any(dev.glob(NVIDIA_DEVICES))
    except OSError:
        return True  # cannot tell: let torch decide


# --- memory the C allocator keeps ------------------------------------------------------------

#: glibc's mallopt parameters (malloc.h): the most malloc arenas; the free memory at a heap's
#: top kept rather than handed back; the size from which a block is mapped on its own.
_M_ARENA_MAX = -8
_M_TRIM_THRESHOLD = -1
_M_MMAP_THRESHOLD = -3
#: What :func:`keep_freed_memory` sets: glibc's own ceiling for the mmap threshold (64-bit),
#: and the top of a heap kept free (a thread's heap is at most 64 MB).
KEEP_MMAP_THRESHOLD = 32 << 20
KEEP_TRIM_THRESHOLD = 64 << 20


@functools.cache
def _glibc() -> Any:
    """The C library when it is glibc (its malloc_trim and mallopt), else None; looked up once
    (``find_library`` runs ``ldconfig``), then asked again after every set and BOLD run."""
    import ctypes
    import ctypes.util

    name = ctypes.util.find_library("c")
    try:
        libc = ctypes.CDLL(name) if name else None
    except OSError:
        return None
    if libc is None or not hasattr(libc, "malloc_trim") or not hasattr(libc, "mallopt"):
        return None
    return libc


def release_free_memory() -> bool:
    """Hand the C allocator's free memory back to the system (glibc's ``malloc_trim``; False
    and nothing done elsewhere). numpy's arrays below glibc's mmap threshold, which rises to
    32 MB after the first large array is freed, stay in the heap of the thread that allocated
    them once freed: after a step that made many volume-sized temporaries in several threads,
    the process holds far more than it uses."""
    libc = _glibc()
    return bool(libc is not None and libc.malloc_trim(0) >= 0)


def limit_allocator_arenas(arenas: int = 2) -> bool:
    """At most ``arenas`` glibc malloc arenas from now on (``mallopt(M_ARENA_MAX)``; False and
    nothing done elsewhere): threads then reuse each other's freed memory instead of each
    growing its own heap."""
    libc = _glibc()
    return bool(libc is not None and libc.mallopt(_M_ARENA_MAX, arenas) == 1)


def keep_freed_memory() -> bool:
    """Let glibc keep the blocks a fit frees for its next ones (``mallopt``: blocks up to
    :data:`KEEP_MMAP_THRESHOLD` from the heaps, a heap's free top kept up to
    :data:`KEEP_TRIM_THRESHOLD`; False and nothing done elsewhere). By default a freed chunk
    temporary of a few MB is handed back to the system and faulted in again, zeroed, at the
    next allocation: half the time of a one-worker fit in the calling thread, and with several
    fit threads the faults queue on the process's one memory map (RESULTS_PARTICIPANT.md
    sections 6 and 10). What is kept goes back with
    :func:`release_free_memory` after each set's fit."""
    libc = _glibc()
    return bool(
        libc is not None
        and libc.mallopt(_M_MMAP_THRESHOLD, KEEP_MMAP_THRESHOLD) == 1
        and libc.mallopt(_M_TRIM_THRESHOLD, KEEP_TRIM_THRESHOLD) == 1
    )


def prepare_allocator(workers: int) -> None:
    """The C allocator as the fits want it, before a run: at most ``max(2, workers)`` arenas
    (:func:`limit_allocator_arenas`: glibc gives each thread that allocates its own heap, up
    to 8 per CPU, which keeps what it freed: the read, fit, write and figure threads would
    each hold volume-sized leftovers), and the fits' freed chunk temporaries kept for their
    next ones (:func:`keep_freed_memory`)."""
    limit_allocator_arenas(max(2, workers))
    keep_freed_memory()


#: The software a record names (name -> distribution), beside the Python version.
SOFTWARE = (
    ("t2starmap", "t2starmap"),
    ("PyTorch", "torch"),
    ("NumPy", "numpy"),
    ("nibabel", "nibabel"),
)


def software_versions() -> dict[str, str]:
    """Name -> version of the software that fits and writes the maps, from the installed
    distributions' metadata (nothing is imported); a distribution not installed is left out."""
    import platform
    from importlib.metadata import PackageNotFoundError, version

    found = {"Python": platform.python_version()}
    for name, distribution in SOFTWARE:
        try:
            found[name] = version(distribution)
        except PackageNotFoundError:
            continue
    return found
