"""GPU facts the planner and the ModelOpt steps share: each GPU model's architecture and the low-precision format its
tensor cores run natively (FP8 from Ada and Hopper on, NVFP4 on Blackwell)."""

from __future__ import annotations

ARCHITECTURES = {  # GPU model -> architecture
    **dict.fromkeys(("B100", "B200", "GB200", "B300", "GB300"), "blackwell"),
    **dict.fromkeys(("H100", "H200", "GH200", "H800", "H20"), "hopper"),
    **dict.fromkeys(("L4", "L40", "L40S"), "ada"),
    **dict.fromkeys(("A100", "A30", "A10"), "ampere"),
}
QUANT_FORMATS = {"blackwell": "nvfp4", "hopper": "fp8", "ada": "fp8"}  # the architecture's own format; none: ampere


def architecture(gpu: str) -> str:
    """'H100' / 'NVIDIA H100 80GB' / 'h200-141gb' -> hopper; unknown models -> 'other'."""
    name = gpu.upper().removeprefix("NVIDIA").strip().split()[0].split("-")[0]
    return ARCHITECTURES.get(name, "other")
