"""The numeric precision OpenVINO computes in: one rule for every OpenVINO model this package compiles.

OpenVINO's CPU plugin computes in bfloat16 on CPUs that support it (AVX-512 BF16, AMX) unless the
compile configuration says otherwise, so the same exported file gives the checkpoint's scores on
one machine and visibly different ones on another. The exported file cannot pin the precision:
OpenVINO ignores a hint stored in the model for the CPU plugin. It is a compile-time setting, so
every compile here takes :func:`openvino_config`, exact (``f32``) unless bf16 speed is asked for
(its cost on the scores is measured in docs/deployment.md).
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from openvino import CompiledModel

logger = logging.getLogger(__name__)

EXACT = "f32"
PRECISIONS = (EXACT, "bf16")
PRECISION_PROPERTY = "INFERENCE_PRECISION_HINT"

UNPINNED_PRECISION_WARNING = (
    "OpenVINO computes in bfloat16 on CPUs that support it unless told otherwise at compile time, and an "
    "exported file cannot change that. For the checkpoint's scores, compile this model with "
    "config={'INFERENCE_PRECISION_HINT': 'f32'}, e.g. OpenVINOInferencer(path, device='CPU', "
    "config={'INFERENCE_PRECISION_HINT': 'f32'}); anomalib-featureridge predict does so. See docs/deployment.md."
)


def openvino_config(precision: str = EXACT) -> dict[str, str]:
    """OpenVINO compile configuration for ``precision``: ``f32`` (exact, the default) or ``bf16`` (faster)."""
    if precision not in PRECISIONS:
        msg = f"Unknown OpenVINO precision {precision!r}; choose from {', '.join(PRECISIONS)}."
        raise ValueError(msg)
    if precision != EXACT and not cpu_supports(precision):
        logger.warning("This CPU has no %s support: OpenVINO computes in f32 instead.", precision)
    return {PRECISION_PROPERTY: precision}


def cpu_supports(precision: str) -> bool:
    """Whether OpenVINO's CPU plugin can compute in ``precision`` on this machine."""
    import openvino

    return precision.upper() in openvino.Core().get_property("CPU", "OPTIMIZATION_CAPABILITIES")


def compile_openvino(path: str | Path, device: str = "CPU", precision: str = EXACT) -> CompiledModel:
    """Compile an OpenVINO IR (``.xml``) or ONNX file with :func:`openvino_config`."""
    import openvino

    return openvino.Core().compile_model(str(path), device, openvino_config(precision))


def compiled_precision(compiled: CompiledModel) -> str:
    """The precision the runtime actually chose for a compiled model (``f32``, ``bf16``, ...)."""
    return str(compiled.get_property(PRECISION_PROPERTY).to_string())
