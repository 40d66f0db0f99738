"""What this machine has: physical cores and available memory. No llama.cpp here."""

from __future__ import annotations

import os
import platform
import subprocess

from .errors import UsageError


def physical_cores() -> int:
    """Physical cores (llama.cpp's sweet spot: hyper-threads share the same vector units).

    llama-cpp-python defaults to ``cpu_count() // 2``, which on a 2-vCPU laptop VM halves speed.
    """
    system = platform.system()
    try:
        if system == "Linux":
            cores: set[tuple[str, str]] = set()
            phys = core = None
            with open("/proc/cpuinfo", encoding="utf-8") as fh:
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
            if cores:
                # A VM may report every vCPU as core 0 of one package; trust cpu_count then.
                return max(len(cores), 1) if len(cores) > 1 else (os.cpu_count() or 1)
        elif system == "Darwin":
            out = subprocess.run(["sysctl", "-n", "hw.perflevel0.physicalcpu"], capture_output=True, text=True)
            if out.returncode != 0 or not out.stdout.strip():  # Intel Macs have no perf levels
                out = subprocess.run(["sysctl", "-n", "hw.physicalcpu"], capture_output=True, text=True)
            return max(int(out.stdout.strip()), 1)
    except (OSError, ValueError):
        pass
    return os.cpu_count() or 1


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
