"""The default thread count on machines that are not here: hybrid Intel and Arm under Linux, Apple
silicon and Intel Macs.

Fakes are enough, and are the only way: the code under test is pure parsing of what the OS
exposes (sysfs files, /proc/cpuinfo, ``sysctl -n`` output), so a tree of those files written to
tmp_path, laid out and worded as on the real machines, exercises every line of it. The functions
take the root directory and the command runner as parameters; nothing is patched.
"""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from llmlocal import hardware


def fake_sysfs(root: Path, cores: list[tuple[int, int, int]], *, online: str | None = None,
               capacity: dict[int, int] | None = None, pmu: tuple[str, str] | None = None) -> Path:
    """Write /sys for CPUs given as (cpu, package, core_id); ``pmu`` = (cpu_core, cpu_atom) lists."""
    sysfs = root / "sys/devices/system/cpu"
    for cpu, package, core in cores:
        topology = sysfs / f"cpu{cpu}/topology"
        topology.mkdir(parents=True)
        (topology / "physical_package_id").write_text(f"{package}\n")
        (topology / "core_id").write_text(f"{core}\n")
        if capacity is not None:
            (sysfs / f"cpu{cpu}/cpu_capacity").write_text(f"{capacity[cpu]}\n")
    (sysfs / "online").write_text((online or f"0-{len(cores) - 1}") + "\n")
    if pmu is not None:
        for name, cpus in zip(("cpu_core", "cpu_atom"), pmu):
            (root / f"sys/devices/{name}").mkdir(parents=True)
            (root / f"sys/devices/{name}/cpus").write_text(cpus + "\n")
    return root


# Intel Core i7-12700H, as its sysfs reads: 6 P-cores with two threads each (CPUs 0-11, core ids
# 0, 4, 8, ...) and 8 E-cores, one thread each (CPUs 12-19, core ids 24-31).
ALDER_LAKE = [(cpu, 0, 4 * (cpu // 2)) for cpu in range(12)] + [(cpu, 0, cpu + 12) for cpu in range(12, 20)]


def test_cpu_list_parsing() -> None:
    assert hardware.parse_cpu_list("0-3,8,10-11\n") == {0, 1, 2, 3, 8, 10, 11}
    assert hardware.parse_cpu_list("5") == {5}
    assert hardware.parse_cpu_list("") == set()


def test_hybrid_intel_uses_the_p_cores_from_the_cpu_core_pmu(tmp_path) -> None:
    root = fake_sysfs(tmp_path, ALDER_LAKE, pmu=("0-11", "12-19"))
    choice = hardware.default_threads(root=root, system="Linux")
    assert choice == hardware.ThreadChoice(6, "6 performance cores of 6P+8E (cpu_core PMU)")


def test_hybrid_intel_with_e_cores_offline(tmp_path) -> None:
    # The PMU lists every CPU the part has; only online ones can run threads.
    root = fake_sysfs(tmp_path, ALDER_LAKE, online="0-9,12-15", pmu=("0-11", "12-19"))
    assert hardware.default_threads(root=root, system="Linux").reason == \
        "5 performance cores of 5P+4E (cpu_core PMU)"


def test_big_little_arm_uses_the_largest_cpu_capacity(tmp_path) -> None:
    # Rockchip RK3588: four Cortex-A55 (capacity 414) and four Cortex-A76 (1024), one thread each.
    capacity = {cpu: 414 if cpu < 4 else 1024 for cpu in range(8)}
    root = fake_sysfs(tmp_path, [(cpu, 0, cpu % 4) if cpu < 4 else (cpu, 1, cpu % 4) for cpu in range(8)],
                      capacity=capacity)
    assert hardware.default_threads(root=root, system="Linux") == \
        hardware.ThreadChoice(4, "4 performance cores of 4P+4E (cpu_capacity)")


def cpuinfo(root: Path, cpus: list[tuple[int, int]]) -> None:
    """/proc/cpuinfo with a stanza per (physical id, core id), trimmed to the lines that matter."""
    (root / "proc").mkdir(parents=True, exist_ok=True)
    stanzas = [f"processor\t: {i}\nmodel name\t: Intel(R) Xeon(R)\nphysical id\t: {phys}\nsiblings\t: {len(cpus)}\n"
               f"core id\t\t: {core}\ncpu cores\t: 4\n" for i, (phys, core) in enumerate(cpus)]
    (root / "proc/cpuinfo").write_text("\n".join(stanzas) + "\n")


def test_equal_cpu_capacity_is_not_hybrid(tmp_path) -> None:
    # x86 kernels write 1024 for every CPU of a uniform part (this build machine does): count
    # physical cores from /proc/cpuinfo as before, 4 cores with two threads each.
    cpus = [(0, core) for core in range(4)] * 2
    root = fake_sysfs(tmp_path, [(i, 0, core) for i, (_, core) in enumerate(cpus)],
                      capacity=dict.fromkeys(range(8), 1024))
    cpuinfo(root, cpus)
    assert hardware.default_threads(root=root, system="Linux") == \
        hardware.ThreadChoice(4, "4 physical cores (/proc/cpuinfo)")


def test_a_vm_reporting_one_core_trusts_cpu_count(tmp_path) -> None:
    cpuinfo(tmp_path, [(0, 0), (0, 0)])
    n = os.cpu_count() or 1
    choice = hardware.default_threads(root=tmp_path, system="Linux")
    assert choice.count == n and choice.reason.endswith("(/proc/cpuinfo lists one core)")


def test_nothing_readable_falls_back_to_cpu_count(tmp_path) -> None:
    choice = hardware.default_threads(root=tmp_path / "empty", system="Linux")
    assert choice.count == (os.cpu_count() or 1) and choice.reason.endswith("(core count unknown)")


def sysctl(answers: dict[str, str]):
    """A runner replaying ``sysctl -n NAME`` as a Mac answers it; None (failure) for unknown names."""
    def run(argv: list[str]) -> str | None:
        assert argv[:2] == ["sysctl", "-n"]
        return answers.get(argv[2])
    return run


@pytest.mark.parametrize(("answers", "expected"), [
    # MacBook Pro M1 Pro (8 performance + 2 efficiency cores).
    ({"hw.perflevel0.physicalcpu": "8\n", "hw.perflevel1.physicalcpu": "2\n", "hw.physicalcpu": "10\n"},
     hardware.ThreadChoice(8, "8 performance cores of 8P+2E (sysctl hw.perflevel0.physicalcpu)")),
    # MacBook Air M2: 4 + 4.
    ({"hw.perflevel0.physicalcpu": "4\n", "hw.perflevel1.physicalcpu": "4\n", "hw.physicalcpu": "8\n"},
     hardware.ThreadChoice(4, "4 performance cores of 4P+4E (sysctl hw.perflevel0.physicalcpu)")),
    # Intel MacBook Pro: sysctl fails for the unknown perflevel name.
    ({"hw.physicalcpu": "6\n"}, hardware.ThreadChoice(6, "6 physical cores (sysctl hw.physicalcpu)")),
])
def test_macs(answers, expected) -> None:
    assert hardware.default_threads(run=sysctl(answers), system="Darwin") == expected


def test_mac_without_answers_falls_back_to_cpu_count() -> None:
    assert hardware.default_threads(run=sysctl({}), system="Darwin").count == (os.cpu_count() or 1)


def test_physical_cores_is_the_default_count() -> None:
    assert hardware.physical_cores() == hardware.default_threads().count >= 1
