"""Pieces several models share, one home each (as anomalib's ``models/components``).

- ``weights``: where pretrained weights come from and the offline policy.
- ``feature_extractor``: frozen timm feature maps with strict layer checks.
- ``filters``: the separable Gaussian blur of anomaly maps.
- ``evaluator``: the metrics every model is tested with.
- ``export``: the one export path (torch, ONNX, OpenVINO).
- ``scoring_module``: what the AnomalibModules share (no optimiser, evaluator, validation step, run checks).
- ``checkpoints``: which model wrote a checkpoint; scoring settings taken from it.
- ``distributed``: several processes: the sampler's repeats left out, one output folder.
- ``run_folders``: anomalib's ``vN``/``latest`` run folders: interrupted fits marked, ``latest`` re-pointed.
"""
