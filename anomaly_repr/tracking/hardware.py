"""The hardware a run ran on, as one line for its `machine` tag: timings compare only on the same machine."""

from __future__ import annotations

import os
import platform
from pathlib import Path

import torch


def machine(device: str) -> str:
    """The hardware a run trained on, for its `machine` tag: the CPU's model (with its family and model
    numbers and vector extensions, which tell CPUs of one name apart), its cores, and the GPU if one runs it."""
    name, details = platform.processor() or platform.machine(), []
    try:
        info = Path("/proc/cpuinfo").read_text().split("\n\n")[0]
        fields = dict(line.split(":", 1) for line in info.splitlines() if ":" in line)
        fields = {k.strip(): v.strip() for k, v in fields.items()}
        name = fields.get("model name", name)
        details = [f"family {fields['cpu family']} model {fields['model']}"] if "cpu family" in fields else []
        flags = set(fields.get("flags", "").split())
        details += [f for f in ("avx2", "avx512f", "avx512_bf16", "amx_tile") if f in flags]
    except OSError:  # not Linux: the platform's name alone
        pass
    text = f"{name} ({', '.join(details)})" if details else name
    text += f", {os.cpu_count()} cores"
    if device.startswith("cuda") and torch.cuda.is_available():
        text += f"; {torch.cuda.get_device_name(torch.device(device))}"
    return text
