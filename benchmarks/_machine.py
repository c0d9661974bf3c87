"""The machine line printed by every benchmark."""

from __future__ import annotations

import os
import platform


def cpu_description() -> str:
    """CPU model, core count, Python version and the load average when the benchmark starts (timings on a shared
    machine mean little without it)."""
    cpu = platform.processor() or platform.machine()
    try:
        with open("/proc/cpuinfo") as f:
            cpu = next(line.split(":", 1)[1].strip() for line in f if line.startswith("model name"))
    except (OSError, StopIteration):
        pass
    try:
        load = ", load average " + " / ".join(f"{v:.2f}" for v in os.getloadavg())
    except OSError:   # not available on this platform
        load = ""
    return f"{cpu}, {os.cpu_count()} cores, Python {platform.python_version()}{load}"
