"""One benchmark fit: train (and unless only cost is asked, test) one model on one data set, time it, size it.

A fit gives one row, or one per evaluation variant (SyntheticDefectMetric's scorers), which share
the fit's figures and are validated and tested on their own.

What a row holds is defined here (:data:`FIELDS`), beside the code that fills it:

- fit time: the training epochs (feature extraction, or every epoch of a trained model) plus the
  model's own ``fit`` (Ridge solve, coreset selection, Gaussian estimation), without the
  validation pass (:class:`FitTimer`);
- inference time per image of the torch model alone on a batch of pre-processed test images, and
  of the backbone alone on the same batch, timed in alternation: the floor no head-based method
  can go below (anomalib's own extractors may run blocks past it, which the ratio then shows);
- peak resident memory of the process during the fit (sampled), and the CUDA peak on a GPU;
- the size of the exported torch model (``model.to_torch``) and of its head (everything but the
  backbone's weights), which is what grows with the training set for memory-bank models.

Beside the CSV, each tested row keeps its test images' raw scores and reduced maps
(``images/<row id>.npz``, :mod:`.per_image`), taken during the same test pass, for the HTML report.
"""

from __future__ import annotations

import argparse
import random
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import torch
from anomalib.data import Folder, MVTecAD
from anomalib.data.datamodules.base.image import AnomalibDataModule
from anomalib.engine import Engine
from anomalib.models.components import AnomalibModule
from lightning.pytorch import Callback, LightningModule, Trainer, seed_everything
from lightning.pytorch.trainer.states import TrainerFn

from anomalib_featureridge.benchmark import per_image
from anomalib_featureridge.benchmark.construction import Setup, build_model, floor_backbone, settings_of
from anomalib_featureridge.benchmark.harness import PeakMemory, interleaved_medians
from anomalib_featureridge.benchmark.recording import PerImageRecorder
from anomalib_featureridge.benchmark.rows import KEY

METRICS = ("image_AUROC", "pixel_AUROC", "pixel_AUPRO")
FIELDS = (
    *KEY,
    *METRICS,
    "fit_s",
    "test_s",
    "infer_ms_per_image",
    "backbone_ms_per_image",
    "peak_rss_fit_mib",
    "peak_cuda_fit_mib",
    "model_mib",
    "head_mib",
    "device",
    "error",
)
TIMING_BATCH = 32


class FitTimer(Callback):
    """Times from the start of training (every epoch of it) to the end of the model's own fit step.

    Memory-bank models run ``fit`` when validation starts, which in Lightning happens inside the
    training epoch, before ``on_train_epoch_end``; so the clock stops when ``fit`` returns (or,
    for a model without one, when validation starts, or when training ends without one), and
    neither the validation pass nor the fit is counted twice. A model trained for several epochs
    (SyntheticDefectMetric) is timed over all of them, not only the last. Memory is sampled over
    the same span.
    """

    def __init__(self, model: AnomalibModule) -> None:
        self.seconds = 0.0
        self.memory = PeakMemory()
        self.peak_mib = 0.0
        self._start = 0.0
        self._running = False
        original_fit = getattr(model, "fit", None)
        if callable(original_fit):

            def timed_fit() -> None:
                original_fit()
                self._stop()
                del model.fit  # back to the class's method, so that the model can still be pickled (export)

            model.fit = timed_fit

    def _stop(self) -> None:
        if self._running:
            self._running = False
            self.seconds = time.perf_counter() - self._start
            self.peak_mib = self.memory.stop()

    def on_train_start(self, trainer: Trainer, pl_module: LightningModule) -> None:
        """Start the clock and the memory sampler, once for all epochs."""
        del trainer, pl_module
        self.memory.start()
        self._start = time.perf_counter()
        self._running = True

    def on_validation_start(self, trainer: Trainer, pl_module: LightningModule) -> None:
        """Callbacks see this before the model's own hook, which is where memory-bank models fit."""
        del trainer
        if "fit" not in vars(pl_module):  # no fit step is waiting to run (none, or already done)
            self._stop()

    def on_train_end(self, trainer: Trainer, pl_module: LightningModule) -> None:
        """A model with neither a fit step nor a validation pass is done here.

        Not at the end of an epoch: a fit step that runs in the model's own ``on_train_epoch_end``
        comes after the callbacks' hook, and a model trained for several epochs is not done then.
        """
        del trainer, pl_module
        self._stop()


def make_datamodule(args: argparse.Namespace, category: str, batch_size: int) -> AnomalibDataModule:
    """An MVTec-layout category under ``--root``, or the ``--folder`` dataset.

    The seed fixes anomalib's random splits (a Folder's normal test images drawn from the good
    ones, its validation half drawn from the test set), so that every model sees the same images.
    """
    loader = {"train_batch_size": batch_size, "eval_batch_size": batch_size, "num_workers": args.num_workers}
    if args.folder is not None:
        return Folder(
            name=category,
            root=args.folder,
            normal_dir=args.normal_dir,
            normal_test_dir=args.normal_test_dir,
            abnormal_dir=args.abnormal_dir,
            mask_dir=args.mask_dir,
            seed=args.seed,
            **loader,
        )
    return MVTecAD(root=args.root, category=category, seed=args.seed, **loader)


def restrict_training_set(datamodule: AnomalibDataModule, n_train: int | None, seed: int) -> int:
    """Set the datamodule up and keep ``n_train`` seeded random training images (all when None)."""
    datamodule.setup(TrainerFn.FITTING)  # marks it set up, so the trainer keeps the subset
    available = len(datamodule.train_data)
    if n_train is None:
        return available
    if n_train > available:
        msg = f"asked for {n_train} training images, the category has {available}"
        raise ValueError(msg)
    indices = sorted(random.Random(seed).sample(range(available), n_train))
    datamodule.train_data = datamodule.train_data.subsample(indices)
    return n_train


def timing_batch(model: AnomalibModule, datamodule: AnomalibDataModule) -> torch.Tensor:
    """32 pre-processed test images (cycled when the test set is smaller), as the model sees them."""
    dataset = datamodule.test_data
    images = [dataset[index % len(dataset)].image for index in range(TIMING_BATCH)]
    transform = model.pre_processor.transform
    return torch.stack([transform(image) for image in images])


def exported_sizes(model: AnomalibModule, workdir: Path) -> tuple[float, float]:
    """Size in MiB of the torch export, and of that export without the backbone's weights."""
    path = model.to_torch(workdir / "export")
    total = path.stat().st_size
    extractor = getattr(model.model, "feature_extractor", None)
    if extractor is None:  # CLIP models: the image tower is the model, there is no separate head
        return total / 2**20, total / 2**20
    backbone_bytes = sum(t.numel() * t.element_size() for t in extractor.state_dict().values())
    return total / 2**20, max(total - backbone_bytes, 0) / 2**20


def _tested(
    engine: Engine, model: AnomalibModule, datamodule: AnomalibDataModule, recorder: PerImageRecorder, record: Path
) -> dict[str, Any]:
    """Test time and the metrics (a dataset without masks has no pixel metrics: those cells stay empty).

    The test pass also fills ``recorder``, written to ``record`` for the HTML report; the time that
    costs inside the test pass is in the record, so the report can state it.
    """
    recorder.reset()
    start = time.perf_counter()
    results = engine.test(model=model, datamodule=datamodule, verbose=False)[0]
    test_s = time.perf_counter() - start
    meta = {"test_s": round(test_s, 3), "record_s": round(recorder.seconds, 4), **per_image.machine()}
    per_image.save(record, recorder.record(meta))
    figures: dict[str, Any] = {"test_s": round(test_s, 1)}
    return figures | {metric: round(float(results[metric]), 4) for metric in METRICS if metric in results}


def _timed_and_sized(
    model: AnomalibModule,
    floor: Any,
    datamodule: AnomalibDataModule,
    setup: Setup,
    workdir: Path,
) -> dict[str, Any]:
    """Inference per image of the model and of the backbone floor, in alternation; export sizes; the device."""
    model.eval()
    device = next(model.model.parameters()).device
    batch = timing_batch(model, datamodule).to(device)
    floor.to(device)
    seconds = interleaved_medians(
        {"model": lambda: model.model(batch), "backbone": lambda: floor(batch)}, setup.warmup, setup.repeats, device
    )
    model_mib, head_mib = exported_sizes(model, workdir)
    return {
        "infer_ms_per_image": round(1000 * seconds["model"] / TIMING_BATCH, 3),
        "backbone_ms_per_image": round(1000 * seconds["backbone"] / TIMING_BATCH, 3),
        "model_mib": round(model_mib, 3),
        "head_mib": round(head_mib, 3),
        "device": device.type,
    }


def _twin(model: AnomalibModule, name: str, variant: Setup, floor_channels: int, k_shot: int | None) -> AnomalibModule:
    """``name`` built with ``variant``'s evaluation options, holding ``model``'s trained state.

    The post-processor's statistics are left out: they are learnt again from the twin's own
    validation scores (its normalisation clamps, so another scorer's ranges would change its AUROC).
    """
    twin = build_model(name, variant, floor_channels, k_shot)
    trained = {key: value for key, value in model.state_dict().items() if not key.startswith("post_processor.")}
    missing, unexpected = twin.load_state_dict(trained, strict=False)
    missing = [key for key in missing if not key.startswith("post_processor.")]
    if missing or unexpected:
        msg = f"{name} with other evaluation options does not take the trained state: {missing or unexpected}"
        raise RuntimeError(msg)
    return twin


def measure(
    name: str, mode: str, category: str, n_train: int | None, args: argparse.Namespace, variants: list[Setup]
) -> list[dict[str, Any]]:
    """Fit (and unless scaling, test) one model; time its inference; one CSV row's figures per variant.

    The first of ``variants`` is trained; each further one (other evaluation options, e.g. a second
    scorer) gets the trained state, its own validation pass (for its thresholds) and test, and shares
    the fit's figures.
    """
    setup = variants[0]
    # Patchcore's coreset starts from a random patch: seeded, a row gives the same figures on every run.
    seed_everything(setup.seed, workers=True, verbose=False)
    floor = floor_backbone(setup)
    channels, k_shot = sum(floor.feature_info.channels()), n_train if mode == "few-shot" else None
    model = build_model(name, setup, channels, k_shot)
    datamodule = make_datamodule(args, category, setup.batch_size)
    n_used = restrict_training_set(datamodule, n_train, setup.seed)
    timer = FitTimer(model)
    recorder = PerImageRecorder()
    with tempfile.TemporaryDirectory() as workdir:
        engine = Engine(
            default_root_dir=workdir,
            logger=False,
            # The recorder comes before the model's own callbacks, so it sees scores before normalisation.
            callbacks=[timer, recorder],
            enable_progress_bar=sys.stderr.isatty(),
            # Scaling rows need the fit only: one validation batch still runs the fit hook.
            limit_val_batches=1 if mode == "scaling" else 1.0,
        )
        cuda = torch.cuda.is_available()
        if cuda:
            torch.cuda.reset_peak_memory_stats()
        engine.fit(model=model, datamodule=datamodule)
        fit: dict[str, Any] = {"n_train": n_used, "fit_s": round(timer.seconds, 2)}
        fit["peak_rss_fit_mib"] = round(timer.peak_mib, 1)
        if cuda:
            fit["peak_cuda_fit_mib"] = round(torch.cuda.max_memory_allocated() / 2**20, 1)
        rows = []
        for index, variant in enumerate(variants):
            scored = model
            if index:
                scored = _twin(model, name, variant, channels, k_shot)
                engine.validate(model=scored, datamodule=datamodule, verbose=False)
            row = dict(fit)
            if mode != "scaling":
                identity = {"mode": mode, "model": name, "category": category, "n_train": n_train}
                identity |= {"backbone": variant.backbone, "settings": settings_of(name, variant)}
                row |= _tested(engine, scored, datamodule, recorder, per_image.images_path(args.output, identity))
            rows.append(row | _timed_and_sized(scored, floor, datamodule, variant, Path(workdir)))
    return rows
