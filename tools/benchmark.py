"""Benchmark FeatureRidge against anomalib's models: accuracy, speed, memory and size, side by side.

Every model runs in this one process on the same data, the same pre-processing (anomalib's
default 256 x 256 resize and ImageNet normalisation), the same backbone (and local weights, if
given) and the same evaluator (image AUROC, pixel AUROC, pixel AUPRO at FPR 0.3). Per model and
category it records:

- fit time: the training epoch (feature extraction) plus the model's own ``fit`` (Ridge solve,
  coreset selection, Gaussian estimation), without the validation pass;
- inference time per image of the torch model alone (batch 32 of pre-processed test images,
  median of repeats after warm-up) and of the backbone alone on the same batch: the floor no
  head-based method can go below. The floor backbone is truncated after the deepest layer used;
  anomalib's own extractors may run blocks past it, which the ratio then shows;
- peak resident memory of the process during fit (sampled), and the CUDA peak on a GPU;
- the size of the exported torch model (``model.to_torch``) and of its head (everything but the
  backbone's weights), which is what grows with the training set for memory-bank models.

Each row is measured in a fresh process (``--in-process`` to measure in this one), so that its
memory peak is its own and a crash, such as the out-of-memory killer stopping one fit, costs
only that row. Modes: ``full`` (every training image), ``--scaling N ...`` (fit only, on N random training
images, for time/memory/size growth) and ``--few-shot K ...`` (K random training images, full
evaluation). Each row is appended to ``results.csv`` as soon as it is measured, and rows already
there are skipped on a re-run, so an interrupted benchmark loses nothing. ``results.md`` and the
plots are rebuilt from the whole CSV at the end (or alone with ``--report-only``).

The figures in docs/benchmarks.md come from:
    python tools/benchmark.py --root ../shared/data --categories hazelnut_toy magnetic_tile \
        --backbone tf_efficientnet_lite2 --layers blocks.2 blocks.4 \
        --weights ../shared/weights/tf_efficientnet_lite2.pth --models FeatureRidge Patchcore Padim \
        --patchcore-coreset-ratio 0.01 --scaling 25 50 100 200 --scaling-category magnetic_tile \
        --few-shot 1 2 4 8 16 --output results/benchmark
"""

from __future__ import annotations

import argparse
import csv
import inspect
import multiprocessing
import os
import random
import signal
import statistics
import sys
import tempfile
import threading
import time
import traceback
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from anomalib.data import Folder, MVTecAD
from anomalib.data.datamodules.base.image import AnomalibDataModule
from anomalib.engine import Engine
from anomalib.models import list_models
from anomalib.models.components import AnomalibModule
from lightning.pytorch import Callback, LightningModule, Trainer, seed_everything
from lightning.pytorch.trainer.states import TrainerFn

from anomalib_featureridge import FeatureRidge
from anomalib_featureridge.components.feature_extractor import create_feature_extractor, load_backbone_weights

METRICS = ("image_AUROC", "pixel_AUROC", "pixel_AUPRO")
FIELDS = (
    "mode",
    "model",
    "category",
    "n_train",
    "backbone",
    "settings",
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
KEY = ("mode", "model", "category", "n_train", "backbone", "settings")
TIMING_BATCH = 32


@dataclass(frozen=True)
class Setup:
    """What every model in one benchmark run shares."""

    backbone: str
    layers: tuple[str, ...]
    weights: Path | None
    random_init: bool
    coreset_ratio: float
    ridge_rank: int | None
    clip_backbone: str | None
    clip_pretrained: str | None
    batch_size: int
    warmup: int
    repeats: int
    seed: int
    # SyntheticDefectMetric's options as (keyword, value) pairs; None keeps the model's default.
    metric_options: tuple[tuple[str, Any], ...] = ()


def model_class(name: str) -> type[AnomalibModule]:
    """The registered anomalib model class called ``name`` (any case), or exit listing the registered ones."""
    for candidate in AnomalibModule.__subclasses__():
        if candidate.__name__.lower() == name.replace("_", "").lower():
            return candidate
    sys.exit(f"Model {name!r} is not registered with anomalib. Registered: {sorted(list_models('pascal'))}")


# The run's model-specific options, by the keyword a model takes them as, and their label in a row.
SETTING_LABELS = {
    "coreset_sampling_ratio": "coreset",
    "rank": "rank",
    "defect_kinds": "kinds",
    "loss": "loss",
    "scorer": "scorer",
    "max_epochs": "epochs",
    "learning_rate": "lr",
}


def model_settings(cls: type[AnomalibModule], setup: Setup) -> dict[str, Any]:
    """The run's model-specific options that ``cls`` accepts: passed to it, and recorded in its rows."""
    accepted = inspect.signature(cls.__init__).parameters
    values = {"coreset_sampling_ratio": setup.coreset_ratio, "rank": setup.ridge_rank, **dict(setup.metric_options)}
    return {key: value for key, value in values.items() if key in accepted and value is not None}


def _label(value: Any) -> str:
    return "+".join(map(str, value)) if isinstance(value, list | tuple) else str(value)


def settings_of(name: str, setup: Setup) -> str:
    """The model-specific settings recorded in each row (part of the row's identity for resuming)."""
    settings = model_settings(model_class(name), setup)
    return " ".join(f"{SETTING_LABELS[key]}={_label(value)}" for key, value in settings.items())


def build_model(name: str, setup: Setup, floor_channels: int, k_shot: int | None = None) -> AnomalibModule:
    """Instantiate ``name`` with the shared backbone, weights and evaluator, passing only what it accepts.

    CNN-feature models (those with ``layers``, or one ``layer`` like SyntheticDefectMetric) share
    the timm backbone; CLIP models take the ``--clip-*`` options, and ``k_shot`` reference images
    in few-shot runs.
    """
    cls = model_class(name)
    accepted = inspect.signature(cls.__init__).parameters
    options: dict[str, Any] = {"visualizer": False, "evaluator": FeatureRidge.configure_evaluator()}
    if "layers" in accepted or "layer" in accepted:
        options["backbone"] = setup.backbone
        if "layers" in accepted:
            options["layers"] = list(setup.layers)
        options["pre_trained"] = setup.weights is None and not setup.random_init
    elif "backbone" in accepted and setup.clip_backbone is not None:
        options["backbone"] = setup.clip_backbone
    if "pretrained" in accepted and setup.clip_pretrained is not None:
        options["pretrained"] = None if setup.clip_pretrained == "none" else setup.clip_pretrained
    if "k_shot" in accepted and k_shot is not None:
        options["k_shot"] = k_shot
    if "backbone_weights" in accepted:
        options["backbone_weights"] = setup.weights
        options["pre_trained"] = setup.weights is not None or not setup.random_init
    options |= model_settings(cls, setup)
    if "n_features" in accepted:
        # anomalib's Padim only knows a default for resnet18 and wide_resnet50_2; elsewhere keep every channel.
        from anomalib.models.image.padim.torch_model import _N_FEATURES_DEFAULTS

        options["n_features"] = _N_FEATURES_DEFAULTS.get(setup.backbone, floor_channels)
    model = cls(**options)
    if setup.weights is not None and "layers" in accepted and "backbone_weights" not in accepted:
        # anomalib's models take no weights file: load it strictly into their timm feature extractor.
        load_backbone_weights(model.model.feature_extractor.feature_extractor, setup.backbone, setup.weights)
    return model


class PeakMemory:
    """Peak resident set size of this process between ``start`` and ``stop``, sampled in a thread."""

    def __init__(self, interval_s: float = 0.02) -> None:
        self.interval_s = interval_s
        self.peak_bytes = 0
        self._running = threading.Event()
        self._thread: threading.Thread | None = None

    @staticmethod
    def rss_bytes() -> int:
        """Current resident memory from /proc (Linux); 0 where it cannot be read."""
        try:
            with open("/proc/self/statm") as handle:
                return int(handle.read().split()[1]) * 4096
        except OSError:
            return 0

    def _sample(self) -> None:
        while self._running.is_set():
            self.peak_bytes = max(self.peak_bytes, self.rss_bytes())
            time.sleep(self.interval_s)

    def start(self) -> None:
        """Begin sampling from the current resident size."""
        self.peak_bytes = self.rss_bytes()
        self._running.set()
        self._thread = threading.Thread(target=self._sample, daemon=True)
        self._thread.start()

    def stop(self) -> float:
        """End sampling; return the peak in MiB."""
        self._running.clear()
        if self._thread is not None:
            self._thread.join()
        return max(self.peak_bytes, self.rss_bytes()) / 2**20


class FitTimer(Callback):
    """Times from the start of the training epoch to the end of the model's own fit step.

    Memory-bank models run ``fit`` when validation starts, which in Lightning happens inside the
    training epoch, before ``on_train_epoch_end``; so the clock stops when ``fit`` returns (or,
    for a model without one, when validation starts), and neither the validation pass nor the
    fit is counted twice. Memory is sampled over the same span.
    """

    def __init__(self, model: AnomalibModule) -> None:
        self.seconds = 0.0
        self.memory = PeakMemory()
        self.peak_mib = 0.0
        self._epoch_start = 0.0
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
            self.seconds = time.perf_counter() - self._epoch_start
            self.peak_mib = self.memory.stop()

    def on_train_epoch_start(self, trainer: Trainer, pl_module: LightningModule) -> None:
        """Start the clock and the memory sampler."""
        del trainer, pl_module
        self.memory.start()
        self._epoch_start = time.perf_counter()
        self._running = True

    def on_validation_start(self, trainer: Trainer, pl_module: LightningModule) -> None:
        """Callbacks see this before the model's own hook, which is where memory-bank models fit."""
        del trainer
        if "fit" not in vars(pl_module):  # no fit step is waiting to run (none, or already done)
            self._stop()

    def on_train_epoch_end(self, trainer: Trainer, pl_module: LightningModule) -> None:
        """A model with neither a fit step nor a validation pass is done here."""
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


def interleaved_medians(
    runs: dict[str, Callable[[], object]], warmup: int, repeats: int, device: torch.device
) -> dict[str, float]:
    """Median wall time of each run, timed in alternation so that machine noise hits all of them alike."""

    def timed(run: Callable[[], object]) -> float:
        if device.type == "cuda":
            torch.cuda.synchronize(device)
        start = time.perf_counter()
        run()
        if device.type == "cuda":
            torch.cuda.synchronize(device)
        return time.perf_counter() - start

    samples: dict[str, list[float]] = {name: [] for name in runs}
    with torch.no_grad():
        for _ in range(warmup):
            for run in runs.values():
                run()
        for _ in range(repeats):
            for name, run in runs.items():
                samples[name].append(timed(run))
    return {name: statistics.median(values) for name, values in samples.items()}


def exported_sizes(model: AnomalibModule, workdir: Path) -> tuple[float, float]:
    """Size in MiB of the torch export, and of that export without the backbone's weights."""
    path = model.to_torch(workdir / "export")
    total = path.stat().st_size
    extractor = getattr(model.model, "feature_extractor", None)
    if extractor is None:  # CLIP models: the image tower is the model, there is no separate head
        return total / 2**20, total / 2**20
    backbone_bytes = sum(t.numel() * t.element_size() for t in extractor.state_dict().values())
    return total / 2**20, max(total - backbone_bytes, 0) / 2**20


def floor_backbone(setup: Setup) -> Any:
    """The shared backbone truncated after the deepest layer used, with the run's weights (checked strictly)."""
    floor = create_feature_extractor(setup.backbone, setup.layers, pre_trained=False)
    if setup.weights is not None:
        load_backbone_weights(floor, setup.backbone, setup.weights)
    return floor


def measure(
    name: str, mode: str, category: str, n_train: int | None, args: argparse.Namespace, setup: Setup
) -> dict[str, Any]:
    """Fit (and unless scaling, test) one model; time its inference; return one CSV row's figures."""
    # Patchcore's coreset starts from a random patch: seeded, a row gives the same figures on every run.
    seed_everything(setup.seed, workers=True, verbose=False)
    floor = floor_backbone(setup)
    model = build_model(name, setup, sum(floor.feature_info.channels()), n_train if mode == "few-shot" else None)
    datamodule = make_datamodule(args, category, setup.batch_size)
    n_used = restrict_training_set(datamodule, n_train, setup.seed)
    timer = FitTimer(model)
    with tempfile.TemporaryDirectory() as workdir:
        engine = Engine(
            default_root_dir=workdir,
            logger=False,
            callbacks=[timer],
            enable_progress_bar=sys.stderr.isatty(),
            # Scaling rows need the fit only: one validation batch still runs the fit hook.
            limit_val_batches=1 if mode == "scaling" else 1.0,
        )
        cuda = torch.cuda.is_available()
        if cuda:
            torch.cuda.reset_peak_memory_stats()
        engine.fit(model=model, datamodule=datamodule)
        row: dict[str, Any] = {"n_train": n_used, "fit_s": round(timer.seconds, 2)}
        row["peak_rss_fit_mib"] = round(timer.peak_mib, 1)
        if cuda:
            row["peak_cuda_fit_mib"] = round(torch.cuda.max_memory_allocated() / 2**20, 1)
        if mode != "scaling":
            start = time.perf_counter()
            results = engine.test(model=model, datamodule=datamodule, verbose=False)[0]
            row["test_s"] = round(time.perf_counter() - start, 1)
            # A dataset without masks has no pixel metrics: their cells stay empty rather than made up.
            row |= {metric: round(float(results[metric]), 4) for metric in METRICS if metric in results}
        model.eval()
        device = next(model.model.parameters()).device
        batch = timing_batch(model, datamodule).to(device)
        floor.to(device)
        seconds = interleaved_medians(
            {"model": lambda: model.model(batch), "backbone": lambda: floor(batch)}, setup.warmup, setup.repeats, device
        )
        row["infer_ms_per_image"] = round(1000 * seconds["model"] / TIMING_BATCH, 3)
        row["backbone_ms_per_image"] = round(1000 * seconds["backbone"] / TIMING_BATCH, 3)
        row["model_mib"], row["head_mib"] = (round(size, 3) for size in exported_sizes(model, Path(workdir)))
        row["device"] = device.type
    return row


class RowFailedError(RuntimeError):
    """A row measured in its own process failed; the message says how."""


def describe(error: BaseException) -> str:
    """An exception as one line of a CSV cell."""
    return f"{type(error).__name__}: {error}".replace("\n", " ")[:300]


def _exit_when_parent_is_gone() -> None:
    """Stop the measuring process as soon as the benchmark that started it is gone (killed, not just interrupted)."""
    parent = multiprocessing.parent_process()
    if parent is not None:
        parent.join()
        os._exit(1)


def _run_in_child(sender: Any, start_method: str, function: Callable[..., dict[str, Any]], arguments: tuple) -> None:
    """Body of the measuring process: send back the row, or what went wrong (with the traceback on stderr).

    A spawned process would spawn its data-loader workers too, each re-importing torch and anomalib
    inside the timed fit; they are started the parent's way instead, as in an ordinary run.
    """
    multiprocessing.set_start_method(start_method, force=True)
    threading.Thread(target=_exit_when_parent_is_gone, daemon=True).start()
    try:
        outcome = ("row", function(*arguments))
    except Exception as error:  # any failure of one row becomes that row's error in the parent
        traceback.print_exc()
        outcome = ("error", describe(error))
    sender.send(outcome)
    sender.close()


def run_isolated(function: Callable[..., dict[str, Any]], *arguments: object) -> dict[str, Any]:
    """``function(*arguments)`` in a fresh (spawned) process; raise RowFailedError if it fails or dies.

    A fresh process per row keeps one model's allocations out of the next one's memory peak, and
    turns a hard crash into an error row instead of the end of the run.
    """
    context = multiprocessing.get_context("spawn")
    receiver, sender = context.Pipe(duplex=False)
    start_method = multiprocessing.get_start_method()
    child = context.Process(target=_run_in_child, args=(sender, start_method, function, arguments))
    child.start()
    sender.close()
    try:
        outcome = receiver.recv()
    except EOFError:  # the child died without a word
        outcome = None
    except BaseException:  # an interrupt of the parent stops the measurement too
        child.kill()
        raise
    finally:
        child.join()
    if outcome is None:
        code = child.exitcode or 0
        how = f"was killed by {signal.Signals(-code).name}" if code < 0 else f"exited with code {code}"
        hint = " (most often the out-of-memory killer)" if code == -signal.SIGKILL else ""
        raise RowFailedError(f"the measuring process {how}{hint}")
    kind, value = outcome
    if kind == "error":
        raise RowFailedError(value)
    return value


def row_key(row: dict[str, Any]) -> tuple[str, ...]:
    """What identifies a row for resuming; a full run is identified without its (measured) image count."""
    return tuple("" if key == "n_train" and row["mode"] == "full" else str(row[key]) for key in KEY)


def read_rows(path: Path) -> list[dict[str, str]]:
    """The rows already measured (none when the file does not exist)."""
    if not path.exists():
        return []
    with path.open(newline="") as handle:
        return list(csv.DictReader(handle))


@contextmanager
def row_appender(path: Path) -> Iterator[Callable[[dict[str, Any]], None]]:
    """A function that appends one row to ``path`` and flushes it to disk at once (header for a new file).

    Each row reaches the disk before the next run starts, so a crash or a kill loses only the run
    in progress.
    """
    new_file = not path.exists()
    with path.open("a", newline="") as handle:
        writer = csv.DictWriter(handle, fieldnames=FIELDS)

        def append(row: dict[str, Any]) -> None:
            writer.writerow(row)
            handle.flush()
            os.fsync(handle.fileno())

        if new_file:
            writer.writeheader()
        yield append


def plan(args: argparse.Namespace) -> list[tuple[str, str, int | None]]:
    """(mode, category, n_train) for every run asked for, in order."""
    runs: list[tuple[str, str, int | None]] = []
    if not args.skip_full:
        runs += [("full", category, None) for category in args.categories]
    scaling_category = args.scaling_category or args.categories[0]
    runs += [("scaling", scaling_category, n) for n in args.scaling]
    runs += [("few-shot", category, k) for category in args.categories for k in args.few_shot]
    return runs


def check_inputs(args: argparse.Namespace) -> None:
    """Fail before any fit on a missing dataset, category or weights file, or an unregistered model."""
    for name in args.models:
        model_class(name)
    if args.weights is not None and not args.weights.is_file():
        sys.exit(f"Backbone weights file {args.weights} does not exist")
    if args.folder is not None:
        folders = [args.normal_dir, args.normal_test_dir, *(args.abnormal_dir or []), *(args.mask_dir or [])]
        missing_folders = [str(args.folder / name) for name in folders if name and not (args.folder / name).is_dir()]
        if missing_folders:
            sys.exit(f"No such image folder: {', '.join(missing_folders)}")
        if not args.abnormal_dir and (not args.skip_full or args.few_shot):
            sys.exit(
                "Accuracy needs defective images: give --abnormal-dir (and --mask-dir for pixel metrics), "
                "or measure cost only with --skip-full --scaling N ..."
            )
        return
    if args.root is None or not args.root.is_dir():
        sys.exit(f"Dataset root {args.root} does not exist (give --root DIR or --folder DIR)")
    missing = [category for category in args.categories if not (args.root / category / "train").is_dir()]
    if missing:
        found = sorted(path.name for path in args.root.iterdir() if (path / "train").is_dir())
        sys.exit(f"No category {missing} under {args.root}; categories there: {found}")


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    """Command-line options."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    data = parser.add_argument_group("data: an MVTec-layout root with categories, or one Folder dataset")
    data.add_argument("--root", type=Path, help="MVTec-layout dataset root")
    data.add_argument("--categories", nargs="+", default=[])
    data.add_argument("--folder", type=Path, help="root of a Folder dataset (anomalib.data.Folder)")
    data.add_argument("--normal-dir", default="good", help="good training images, relative to --folder")
    data.add_argument(
        "--normal-test-dir", default=None, help="good test images; without it anomalib holds out 20 %% of --normal-dir"
    )
    data.add_argument("--abnormal-dir", nargs="+", default=None, help="defective test images, one or more folders")
    data.add_argument("--mask-dir", nargs="+", default=None, help="their masks, in the same order (optional)")
    data.add_argument("--num-workers", type=int, default=2)
    parser.add_argument("--models", nargs="+", default=["FeatureRidge", "Patchcore", "Padim"])
    parser.add_argument("--backbone", default="wide_resnet50_2")
    parser.add_argument("--layers", nargs=2, default=["layer2", "layer3"])
    parser.add_argument("--weights", type=Path, default=None, help="local timm state dict for the backbone")
    parser.add_argument("--random-init", action="store_true", help="random backbone weights (smoke runs)")
    parser.add_argument("--patchcore-coreset-ratio", type=float, default=0.1, help="anomalib's default is 0.1")
    parser.add_argument(
        "--feature-ridge-rank", type=int, default=None, help="low-rank FeatureRidge head (default: full rank)"
    )
    metric = parser.add_argument_group("SyntheticDefectMetric (each its model default when not given)")
    metric.add_argument("--defect-kinds", nargs="+", default=None, help="synthetic defect classes besides good")
    metric.add_argument("--metric-loss", default=None, help="softmax, l2_softmax, arcface or adacos")
    metric.add_argument("--metric-scorer", default=None, help="cosine or lof")
    metric.add_argument("--metric-epochs", type=int, default=None, help="training epochs")
    metric.add_argument("--metric-lr", type=float, default=None, help="Adam learning rate")
    parser.add_argument("--clip-backbone", default=None, help="open_clip model for CLIP models (their default)")
    parser.add_argument(
        "--clip-pretrained", default=None, help="open_clip tag or local checkpoint for CLIP models; 'none': random"
    )
    parser.add_argument("--batch-size", type=int, default=32, help="training and evaluation batch size")
    parser.add_argument("--scaling", nargs="*", type=int, default=[], help="training set sizes, fit only")
    parser.add_argument("--scaling-category", default=None, help="category for --scaling (default: the first)")
    parser.add_argument("--few-shot", nargs="*", type=int, default=[], help="numbers of training images k")
    parser.add_argument("--skip-full", action="store_true", help="only the scaling and few-shot runs")
    parser.add_argument("--warmup", type=int, default=2)
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument(
        "--seed", type=int, default=0, help="seed of the random training subsets and of anomalib's data splits"
    )
    parser.add_argument(
        "--in-process",
        action="store_true",
        help="measure every row in this process: starts faster, but memory peaks then carry earlier rows "
        "and a crash ends the run",
    )
    parser.add_argument("--output", type=Path, default=Path("results/benchmark"), help="output folder")
    parser.add_argument("--report-only", action="store_true", help="rebuild results.md and plots from the CSV")
    args = parser.parse_args(argv)
    if args.folder is not None and not args.categories:
        args.categories = [args.folder.name]
    if not args.categories and not args.report_only:
        parser.error("give --categories (with --root) or --folder")
    return args


def setup_from(args: argparse.Namespace) -> Setup:
    """What every model of this run shares, from the command line."""
    return Setup(
        backbone=args.backbone,
        layers=tuple(args.layers),
        weights=args.weights,
        random_init=args.random_init,
        coreset_ratio=args.patchcore_coreset_ratio,
        ridge_rank=args.feature_ridge_rank,
        metric_options=(
            ("defect_kinds", tuple(args.defect_kinds) if args.defect_kinds else None),
            ("loss", args.metric_loss),
            ("scorer", args.metric_scorer),
            ("max_epochs", args.metric_epochs),
            ("learning_rate", args.metric_lr),
        ),
        clip_backbone=args.clip_backbone,
        clip_pretrained=args.clip_pretrained,
        batch_size=args.batch_size,
        warmup=args.warmup,
        repeats=args.repeats,
        seed=args.seed,
    )


def main(argv: list[str] | None = None) -> None:
    """Run every planned (model, mode, category, size), append each row, then write the report."""
    args = parse_args(argv)
    args.output.mkdir(parents=True, exist_ok=True)
    csv_path = args.output / "results.csv"
    if not args.report_only:
        check_inputs(args)
        setup = setup_from(args)
        run_all(args, setup, csv_path)
    from benchmark_report import write_report

    write_report(read_rows(csv_path), args.output)
    print(f"[benchmark] wrote {csv_path}, {args.output / 'results.md'} and plots", flush=True)


def run_all(args: argparse.Namespace, setup: Setup, csv_path: Path) -> None:
    """Measure every planned row not already in the CSV, appending each as soon as it is done."""
    floor = floor_backbone(setup)  # weights that do not fit the backbone stop the run before any fit
    deep_channels = floor.feature_info.channels()[-1]
    if setup.ridge_rank is not None and not 0 < setup.ridge_rank < deep_channels:
        sys.exit(f"--feature-ridge-rank must be between 1 and {deep_channels - 1} for {setup.layers[-1]!r}")
    done = {row_key(row) for row in read_rows(csv_path) if not row["error"]}
    runs = [(mode, category, n, name) for mode, category, n in plan(args) for name in args.models]
    with row_appender(csv_path) as append:
        for index, (mode, category, n_train, name) in enumerate(runs, start=1):
            identity = {
                "mode": mode,
                "model": name,
                "category": category,
                "n_train": n_train,
                "backbone": setup.backbone,
                "settings": settings_of(name, setup),
            }
            label = f"[benchmark {index}/{len(runs)}] {mode} {name} on {category}" + (
                f" with {n_train} training images" if n_train else ""
            )
            if row_key(identity) in done:
                print(f"{label}: already in {csv_path}, skipped", flush=True)
                continue
            print(f"{label} ...", flush=True)
            task = (name, mode, category, n_train, args, setup)
            try:
                row = identity | (measure(*task) if args.in_process else run_isolated(measure, *task))
            except RowFailedError as error:
                row = identity | {"error": str(error)}
            except (ValueError, RuntimeError, MemoryError, torch.OutOfMemoryError) as error:
                row = identity | {"error": describe(error)}
            append(row)
            print(f"{label}: {row}", flush=True)


if __name__ == "__main__":
    main()
