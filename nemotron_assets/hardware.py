"""GPU facts the planner and the ModelOpt steps share: each GPU model's architecture, the low-precision format its
tensor cores run natively (FP8 from Ada and Hopper on, NVFP4 on Blackwell), and its memory."""

from __future__ import annotations

import re

ARCHITECTURES = {  # GPU model -> architecture
    **dict.fromkeys(("B100", "B200", "GB200", "B300", "GB300"), "blackwell"),
    **dict.fromkeys(("H100", "H200", "GH200", "H800", "H20"), "hopper"),
    **dict.fromkeys(("L4", "L40", "L40S"), "ada"),
    **dict.fromkeys(("A100", "A30", "A10"), "ampere"),
}
MEMORY_GIB = {"B200": 180, "H100": 80, "H200": 141, "A100": 80, "L40S": 48, "L4": 24}  # the common (largest) variant
QUANT_FORMATS = {"blackwell": "nvfp4", "hopper": "fp8", "ada": "fp8"}  # the architecture's own format; none: ampere


def architecture(gpu: str) -> str:
    """'H100' / 'NVIDIA H100 80GB' / 'h200-141gb' -> hopper; unknown models -> 'other'."""
    return ARCHITECTURES.get(_model(gpu), "other")


def memory_gib(gpu: str) -> int | None:
    """'a100-40gb' -> 40 (a size in the name wins); 'h100' -> 80; unknown models -> None."""
    size = re.search(r"(\d+)\s*GB", gpu.upper())
    if size:
        return int(size.group(1))
    return MEMORY_GIB.get(_model(gpu))


def _model(gpu: str) -> str:
    """'NVIDIA H100 80GB' / 'h100-80gb' -> 'H100'."""
    return gpu.upper().removeprefix("NVIDIA").strip().split()[0].split("-")[0]
