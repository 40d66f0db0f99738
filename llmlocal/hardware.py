"""What this machine has: physical cores and available memory. No llama.cpp here."""

from __future__ import annotations

import os
import platform
import subprocess
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from .errors import UsageError

# Runs a command, returns its stdout, or None if it failed: a parameter, so tests can replay a
# machine's recorded sysctl output.
Runner = Callable[[list[str]], "str | None"]


def _run(argv: list[str]) -> str | None:
    try:
        out = subprocess.run(argv, capture_output=True, text=True, timeout=5)
    except (OSError, subprocess.SubprocessError):
        return None
    return out.stdout if out.returncode == 0 else None


@dataclass(frozen=True)
class ThreadChoice:
    """The default thread count and why, e.g. 6, "6 performance cores of 6P+8E (cpu_core PMU)"."""

    count: int
    reason: str


def physical_cores() -> int:
    """Physical cores (llama.cpp's sweet spot: hyper-threads share the same vector units); on a
    hybrid CPU, its performance cores. See :func:`default_threads` for how, and why."""
    return default_threads().count


def default_threads(*, root: str | os.PathLike[str] = "/", run: Runner = _run,
                    system: str | None = None) -> ThreadChoice:
    """The thread count llmlocal uses unless told: one per physical core, performance cores only
    on a hybrid CPU.

    llama-cpp-python defaults to ``cpu_count() // 2``, which on a 2-vCPU laptop VM halves speed.
    On a hybrid CPU (Apple silicon, Intel 12th gen and later) ggml's threads meet at a barrier
    after every operation of the graph, so one on a slower efficiency core keeps the others
    waiting; llama.cpp's own tools make the same choice (``cpu_get_num_math`` in common.cpp).
    ``root`` (the file system holding /proc and /sys) and ``run`` (the command runner) exist
    so tests can replay machines that are not here.
    """
    system = system or platform.system()
    try:
        if system == "Linux":
            return _linux_threads(Path(root))
        if system == "Darwin":
            return _darwin_threads(run)
    except (OSError, ValueError):
        pass
    n = os.cpu_count() or 1
    return ThreadChoice(n, f"{_cpus(n)} (core count unknown)")


def _darwin_threads(run: Runner) -> ThreadChoice:
    def sysctl(name: str) -> int | None:
        out = run(["sysctl", "-n", name])
        return int(out.strip()) if out and out.strip().isdigit() else None

    perf = sysctl("hw.perflevel0.physicalcpu")  # Apple silicon: level 0 is the performance cores
    if perf:
        eff = sysctl("hw.perflevel1.physicalcpu")
        mix = f" of {perf}P+{eff}E" if eff else ""
        return ThreadChoice(perf, f"{perf} performance cores{mix} (sysctl hw.perflevel0.physicalcpu)")
    cores = sysctl("hw.physicalcpu")  # Intel Macs have no performance levels
    if not cores:
        raise ValueError("sysctl gave no core count")
    return ThreadChoice(cores, f"{cores} physical cores (sysctl hw.physicalcpu)")


def parse_cpu_list(text: str) -> set[int]:
    """The CPUs of a sysfs CPU list such as ``0-11,16,18-19`` (``cpulist_parse`` in the kernel)."""
    cpus: set[int] = set()
    for part in text.strip().split(","):
        if not part:
            continue
        first, _, last = part.partition("-")
        cpus.update(range(int(first), int(last or first) + 1))
    return cpus


def _read(path: Path) -> str | None:
    try:
        return path.read_text(encoding="utf-8").strip()
    except OSError:
        return None


def _linux_threads(root: Path) -> ThreadChoice:
    sysfs = root / "sys/devices/system/cpu"
    online_text = _read(sysfs / "online")
    online = parse_cpu_list(online_text) if online_text else None
    hybrid = _linux_performance_cpus(root, sysfs, online)
    if hybrid is not None:
        perf, eff, source = hybrid
        p_cores, e_cores = _cores(sysfs, perf), _cores(sysfs, eff)
        if p_cores:
            return ThreadChoice(p_cores, f"{p_cores} performance cores of {p_cores}P+{e_cores}E ({source})")
    return _cpuinfo_threads(root / "proc/cpuinfo")


def _linux_performance_cpus(root: Path, sysfs: Path,
                            online: set[int] | None) -> tuple[set[int], set[int], str] | None:
    """(performance CPUs, the others, how they were told apart) on a hybrid CPU, else None."""
    # Intel's hybrid parts register one PMU per core type: cpu_core (P) and cpu_atom (E).
    p_text, e_text = _read(root / "sys/devices/cpu_core/cpus"), _read(root / "sys/devices/cpu_atom/cpus")
    if p_text and e_text:
        perf, eff = parse_cpu_list(p_text), parse_cpu_list(e_text)
        if online is not None:
            perf, eff = perf & online, eff & online
        if perf and eff:
            return perf, eff, "cpu_core PMU"
    # Elsewhere (Arm big.LITTLE, and Intel with some kernels) the scheduler's cpu_capacity ranks
    # the cores: the biggest have the largest value (1024).
    capacity: dict[int, int] = {}
    for entry in sysfs.glob("cpu[0-9]*"):
        cpu = int(entry.name[3:])
        value = _read(entry / "cpu_capacity")
        if value and value.isdigit() and (online is None or cpu in online):
            capacity[cpu] = int(value)
    if len(set(capacity.values())) > 1:
        top = max(capacity.values())
        perf = {cpu for cpu, c in capacity.items() if c == top}
        return perf, set(capacity) - perf, "cpu_capacity"
    return None


def _cores(sysfs: Path, cpus: set[int]) -> int:
    """Physical cores among ``cpus``: hyper-threads of one core share its package and core id."""
    cores = set()
    for cpu in cpus:
        topology = sysfs / f"cpu{cpu}/topology"
        core = _read(topology / "core_id")
        # Without topology (some containers hide it) each CPU counts as a core.
        cores.add((_read(topology / "physical_package_id"), core) if core is not None else ("cpu", str(cpu)))
    return len(cores)


def _cpuinfo_threads(cpuinfo: Path) -> ThreadChoice:
    cores: set[tuple[str, str]] = set()
    phys = core = None
    with open(cpuinfo, encoding="utf-8") as fh:
        for line in fh:
            key, _, value = line.partition(":")
            key = key.strip()
            if key == "physical id":
                phys = value.strip()
            elif key == "core id":
                core = value.strip()
            elif not line.strip() and core is not None:
                cores.add((phys or "0", core))
                phys = core = None
    if core is not None:
        cores.add((phys or "0", core))
    if len(cores) > 1:
        return ThreadChoice(len(cores), f"{len(cores)} physical cores (/proc/cpuinfo)")
    # A VM may report every vCPU as core 0 of one package; trust cpu_count then.
    n = os.cpu_count() or 1
    listed = "one core" if cores else "no cores"
    return ThreadChoice(n, f"{_cpus(n)} (/proc/cpuinfo lists {listed})")


def _cpus(n: int) -> str:
    return f"{n} logical CPU" + ("s" if n != 1 else "")


def max_threads() -> int:
    """The most threads a model may be given: four per logical CPU.

    More only adds contention, and llama.cpp's thread pool crashes outright at about 100,000
    (it allocates per-thread state without a bound).
    """
    return 4 * (os.cpu_count() or 1)


def check_threads(threads: int | None) -> None:
    """Refuse a thread count below 1 or above :func:`max_threads` (None: the default)."""
    if threads is None:
        return
    if threads < 1:
        raise UsageError("threads must be at least 1", hint=f"this machine has {os.cpu_count()} logical CPUs")
    if threads > max_threads():
        raise UsageError(f"{threads} threads is more than this machine can use (at most {max_threads()}, four "
                         f"per logical CPU)", hint=f"use at most {os.cpu_count()} (its logical CPUs), or "
                         "leave it out for the physical cores")


def available_memory() -> int | None:
    """Bytes of RAM available for a new process without swapping, or None if unknown."""
    try:
        if platform.system() == "Linux":
            with open("/proc/meminfo", encoding="utf-8") as fh:
                for line in fh:
                    if line.startswith("MemAvailable:"):
                        return int(line.split()[1]) * 1024
        elif platform.system() == "Darwin":
            # macOS has no MemAvailable; its compressor makes most of physical RAM usable.
            out = subprocess.run(["sysctl", "-n", "hw.memsize"], capture_output=True, text=True)
            return int(int(out.stdout.strip()) * 0.75)
    except (OSError, ValueError):
        pass
    return None


def peak_rss() -> int:
    """Peak resident set size of this process, in bytes."""
    import resource

    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return peak if platform.system() == "Darwin" else peak * 1024
