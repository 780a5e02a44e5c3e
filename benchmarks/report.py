"""How every benchmark reports: one JSON object on stdout (and in --out), with the machine it ran on."""

from __future__ import annotations

import json
import platform
from datetime import datetime, timezone
from pathlib import Path

import torch


def cpu_name() -> str:
    """The processor's model name where Linux gives it (`platform.processor()` there is only "x86_64"): CPU figures
    from different sessions may come from different hosts."""
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def header(name: str) -> dict:
    return {
        "benchmark": name,
        "date": datetime.now(timezone.utc).isoformat(timespec="seconds"),
        "machine": {"cpu": cpu_name(), "threads": torch.get_num_threads(),
                    "torch": torch.__version__,
                    "gpu": torch.cuda.get_device_name() if torch.cuda.is_available() else None},
    }


def emit(results: dict, out: str | None, quiet: bool = False) -> None:
    text = json.dumps(results, indent=2)
    if not quiet:
        print(text)
    if out:
        Path(out).parent.mkdir(parents=True, exist_ok=True)
        Path(out).write_text(text + "\n")
