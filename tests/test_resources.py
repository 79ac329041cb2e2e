"""CPU count: SLURM, then the cgroup CPU quota (v1 and v2), then the affinity mask; the memory
the C allocator keeps."""

from __future__ import annotations

import os
import platform
import subprocess
import sys
from pathlib import Path

import pytest

from t2starmap import resources
from t2starmap.resources import (
    SOURCE_AFFINITY,
    SOURCE_CGROUP,
    SOURCE_SLURM,
    affinity_count,
    available_cpus,
    cgroup_cpu_quota,
    parse_cfs,
    parse_cpu_max,
)

from .conftest import EXAMPLE, REPO


@pytest.mark.parametrize(
    ("text", "cpus"),
    [
        ("max 100000\n", None),
        ("150000 100000\n", 1.5),
        ("50000 100000", 0.5),
        ("200000", 2.0),  # period omitted: the kernel's default 100 ms
        ("", None),
        ("lots 100000", None),
    ],
)
def test_parse_cpu_max(text: str, cpus: float | None) -> None:
    assert parse_cpu_max(text) == cpus


@pytest.mark.parametrize(
    ("quota", "period", "cpus"),
    [("-1\n", "100000\n", None), ("200000", "100000", 2.0), ("50000", "100000", 0.5)],
)
def test_parse_cfs(quota: str, period: str, cpus: float | None) -> None:
    assert parse_cfs(quota, period) == cpus


def fake_proc(tmp_path: Path, cgroup: str, mountinfo: str) -> Path:
    proc = tmp_path / "proc_self"
    proc.mkdir()
    (proc / "cgroup").write_text(cgroup)
    (proc / "mountinfo").write_text(mountinfo.replace("{root}", str(tmp_path)))
    return proc


def write(path: Path, text: str) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text)


V2_MOUNT = "30 23 0:26 / {root}/cg2 rw,nosuid shared:9 - cgroup2 cgroup2 rw,nsdelegate\n"
V1_MOUNT = "32 31 0:29 {mroot} {root}/cpu rw,relatime - cgroup cgroup rw,cpu,cpuacct\n"


def test_v2_quota_of_an_ancestor_counts(tmp_path: Path) -> None:
    proc = fake_proc(tmp_path, "0::/job/task\n", V2_MOUNT)
    write(tmp_path / "cg2" / "job" / "task" / "cpu.max", "max 100000\n")
    write(tmp_path / "cg2" / "job" / "cpu.max", "250000 100000\n")
    assert cgroup_cpu_quota(proc) == 2.5
    write(tmp_path / "cg2" / "job" / "task" / "cpu.max", "120000 100000\n")
    assert cgroup_cpu_quota(proc) == 1.2  # the tighter of the two


def test_v1_quota_on_a_host(tmp_path: Path) -> None:
    cgroup = "5:memory:/other\n4:cpu,cpuacct:/docker/abc\n0::/\n"
    proc = fake_proc(tmp_path, cgroup, V1_MOUNT.replace("{mroot}", "/"))
    write(tmp_path / "cpu" / "docker" / "abc" / "cpu.cfs_quota_us", "150000\n")
    write(tmp_path / "cpu" / "docker" / "abc" / "cpu.cfs_period_us", "100000\n")
    write(tmp_path / "cpu" / "cpu.cfs_quota_us", "-1\n")
    write(tmp_path / "cpu" / "cpu.cfs_period_us", "100000\n")
    assert cgroup_cpu_quota(proc) == 1.5


def test_v1_quota_inside_a_container(tmp_path: Path) -> None:
    """Without a cgroup namespace the container's mount root is its own group."""
    proc = fake_proc(
        tmp_path, "4:cpu,cpuacct:/docker/abc\n", V1_MOUNT.replace("{mroot}", "/docker/abc")
    )
    write(tmp_path / "cpu" / "cpu.cfs_quota_us", "100000\n")
    write(tmp_path / "cpu" / "cpu.cfs_period_us", "100000\n")
    assert cgroup_cpu_quota(proc) == 1.0


@pytest.mark.parametrize(
    ("cgroup", "mountinfo"),
    [
        ("0::/job\n", V2_MOUNT),  # cpu.max missing (cpu controller not enabled)
        ("0::/job\n", "31 23 0:28 / /sys/fs/cgroup rw - tmpfs tmpfs rw\n"),  # no cgroup mount
        ("", V2_MOUNT),  # no group of this process
    ],
)
def test_no_quota(tmp_path: Path, cgroup: str, mountinfo: str) -> None:
    assert cgroup_cpu_quota(fake_proc(tmp_path, cgroup, mountinfo)) is None


def test_unreadable_proc_is_no_quota(tmp_path: Path) -> None:
    assert cgroup_cpu_quota(tmp_path / "absent") is None


def test_slurm_comes_first(tmp_path: Path) -> None:
    proc = fake_proc(tmp_path, "0::/job\n", V2_MOUNT)
    write(tmp_path / "cg2" / "job" / "cpu.max", "100000 100000\n")
    assert available_cpus({"SLURM_CPUS_PER_TASK": "6"}, proc) == (6, SOURCE_SLURM)
    for bad in ("0", "abc", ""):
        assert available_cpus({"SLURM_CPUS_PER_TASK": bad}, proc)[1] != SOURCE_SLURM


@pytest.mark.parametrize("quota", ["50000 100000", "100000 100000", "199999 100000"])
def test_quota_rounds_down_to_at_least_one(tmp_path: Path, quota: str) -> None:
    proc = fake_proc(tmp_path, "0::/job\n", V2_MOUNT)
    write(tmp_path / "cg2" / "job" / "cpu.max", quota)
    source = SOURCE_CGROUP if affinity_count() > 1 else SOURCE_AFFINITY
    assert available_cpus({}, proc) == (1, source)


def test_affinity_when_the_quota_is_larger(tmp_path: Path) -> None:
    proc = fake_proc(tmp_path, "0::/job\n", V2_MOUNT)
    write(tmp_path / "cg2" / "job" / "cpu.max", "100000000 100000")
    assert available_cpus({}, proc) == (affinity_count(), SOURCE_AFFINITY)
    assert affinity_count() == len(os.sched_getaffinity(0))


CPU_V1 = Path("/sys/fs/cgroup/cpu")

_CHILD = """
import sys
from t2starmap.cli.run import build_parser
from t2starmap.config import settings_from_args
args = build_parser().parse_args([sys.argv[1], sys.argv[2], "participant"])
settings = settings_from_args(args, environ={})
print(settings.nprocs, settings.nprocs_source, sep="|")
"""


def test_a_real_cgroup_v1_quota_of_one_cpu_sets_the_default_nprocs(tmp_path: Path) -> None:
    """As root on a cgroup v1 host: a child in a group with a 1-CPU quota defaults to 1."""
    if os.geteuid() != 0 or not (CPU_V1 / "cgroup.procs").is_file():
        pytest.skip(f"needs root and a cgroup v1 cpu hierarchy at {CPU_V1}")
    group = CPU_V1 / f"t2starmap-test-{os.getpid()}"
    try:
        group.mkdir()
        (group / "cpu.cfs_period_us").write_text("100000")
        (group / "cpu.cfs_quota_us").write_text("100000")
    except OSError as err:
        if group.is_dir():
            group.rmdir()
        pytest.skip(f"cannot create a cgroup at {group}: {err}")
    env = {k: v for k, v in os.environ.items() if not k.startswith("SLURM_")}
    env["PYTHONPATH"] = str(REPO / "src")
    try:
        proc = subprocess.run(
            [
                "sh",
                "-c",
                f'echo $$ > {group}/cgroup.procs && exec "$0" -c "$1" "$2" "$3"',
                sys.executable,
                _CHILD,
                str(EXAMPLE),
                str(tmp_path / "out"),
            ],
            capture_output=True,
            text=True,
            env=env,
            timeout=120,
            check=False,
        )
    finally:
        group.rmdir()  # the child has exited: the group is empty
    assert proc.returncode == 0, proc.stderr
    nprocs, source = proc.stdout.strip().split("|")
    assert nprocs == "1"
    if affinity_count() > 1:
        assert source == SOURCE_CGROUP
    assert not group.exists()


def test_the_allocator_gives_back_what_it_keeps_where_it_is_glibc() -> None:
    """malloc_trim and M_ARENA_MAX on glibc; elsewhere nothing is done and False said."""
    glibc = platform.libc_ver()[0] == "glibc"
    assert resources.release_free_memory() is glibc
    assert resources.limit_allocator_arenas(8) is glibc


#: Three 8 MB blocks allocated, touched and freed, 20 times: glibc's default hands the part of
#: its heap's free top beyond its dynamic trim threshold (twice the largest block freed, 16 MB)
#: back each time, and the next round faults those pages in again (~1000 a round here).
_CHURN = """
import resource, sys
import numpy as np
from t2starmap import resources
if sys.argv[1] == "prepared":
    resources.prepare_allocator(2)
blocks = [np.ones(1 << 20) for _ in range(3)]  # glibc's thresholds settle on the first free
del blocks
before = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
for _ in range(20):
    blocks = [np.ones(1 << 20) for _ in range(3)]
    del blocks
print(resource.getrusage(resource.RUSAGE_SELF).ru_minflt - before)
"""


@pytest.mark.skipif(platform.libc_ver()[0] != "glibc", reason="mallopt is glibc's")
def test_a_prepared_allocator_keeps_freed_blocks_for_the_next_ones() -> None:
    """The fits' chunk temporaries (a few MB each, freed and allocated again for every chunk)
    are not faulted in again once :func:`resources.prepare_allocator` ran: without it the
    churn faults pages in every round, with it about never."""

    def faults(mode: str) -> int:
        done = subprocess.run(
            [sys.executable, "-c", _CHURN, mode], capture_output=True, text=True, check=True,
            env={**os.environ, "PYTHONPATH": str(REPO / "src")},
        )  # fmt: skip
        return int(done.stdout)

    pages = 3 * (8 << 20) // os.sysconf("SC_PAGE_SIZE")
    default, prepared = faults("default"), faults("prepared")
    assert default > 2 * pages  # the churn this guards against is real here (~20 000)
    assert prepared < pages // 10  # about none (0 here)


def test_a_participant_run_prepares_the_allocator_for_its_nprocs(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    """The participant level prepares the C allocator for its ``--nprocs`` before it fits."""
    from t2starmap.workflows import participant

    seen: list[int] = []
    monkeypatch.setattr(participant, "prepare_allocator", seen.append)
    argv = [str(EXAMPLE), str(tmp_path / "out"), "participant", "--skip-bids-validation",
            "--nprocs", "3", "--participant-label", "01", "-q"]  # fmt: skip
    from t2starmap.cli.run import main

    assert main(argv) == 0
    assert seen == [3]
