"""NVIDIA ModelOpt: optimize/modelopt/quantize, distill and prune."""
