"""Running exported models on new images.

``predict`` (scoring folders) imports anomalib and torch, so it is imported by name
(``anomalib_featureridge.deploy.predict``) rather than here: the precision rule stays importable
without them, which keeps ``anomalib-featureridge --help`` fast.
"""

from .precision import compile_openvino, openvino_config

__all__ = ["compile_openvino", "openvino_config"]
