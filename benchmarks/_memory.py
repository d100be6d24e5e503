"""Peak memory one call adds, for the benchmarks' fresh child processes (shared by the scripts beside it)."""

from __future__ import annotations

import gc
from collections.abc import Callable
from typing import Any

import torch


def status_kib(name: str) -> int:
    """A ``/proc/self/status`` field in KiB (``VmRSS``, ``VmHWM``)."""
    with open("/proc/self/status") as status:
        for line in status:
            if line.startswith(name + ":"):
                return int(line.split()[1])
    raise RuntimeError(f"{name} not in /proc/self/status")


def peak_added_mib(run: Callable[[], Any], device: str) -> float:
    """MiB that ``run()`` adds at its peak: on CUDA the allocator's peak above what it held, on the CPU the peak
    resident set above the resident set before the call (the kernel's high-water mark, reset first)."""
    gc.collect()
    if device != "cpu":
        torch.cuda.synchronize()
        torch.cuda.reset_peak_memory_stats()
        start = torch.cuda.memory_allocated()
        run()
        torch.cuda.synchronize()
        return (torch.cuda.max_memory_allocated() - start) / 2**20
    before = status_kib("VmRSS")
    with open("/proc/self/clear_refs", "w") as refs:
        refs.write("5")  # reset VmHWM to the current RSS
    run()
    return (status_kib("VmHWM") - before) / 1024
