"""Which torch device a local model runs on: the ``device`` option's check and its ``auto``.

Shared by the transformers backend, IFD and the reward model; torch is imported only by
:func:`resolve_device`."""

from __future__ import annotations

import re

_DEVICE = re.compile(r"^(auto|cpu|mps|(cuda|xpu)(:\d+)?)$")
DEVICE_HINT = "use auto, cpu, cuda, cuda:N or mps"


def device_problem(device: str) -> str | None:
    """What is wrong with a ``device`` option of a local model (IFD, the reward model), if
    anything: the one check they share."""
    return None if _DEVICE.match(device) else DEVICE_HINT


def resolve_device(device: str) -> str:
    """The torch device ``device`` means here: ``auto`` is the GPU when torch sees one, else the
    CPU (imports torch)."""
    if device != "auto":
        return device
    import torch

    return "cuda" if torch.cuda.is_available() else "cpu"
