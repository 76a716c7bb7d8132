"""anomalib's versioned run folders (``vN`` beside a ``latest`` link): the one place this package changes them.

anomalib's Engine makes ``vN`` and points ``latest`` at it when a fit starts, so ``latest`` leads to
whatever the run left, finished or not. Here an interrupted fit marks its folder, and ``latest``
is re-pointed in one way (also by the distributed fit, which shares rank 0's folder).
"""

from __future__ import annotations

import logging
import os
import re
import shutil
from pathlib import Path

from lightning.pytorch import Callback, LightningModule, Trainer
from lightning.pytorch.trainer.states import TrainerFn

logger = logging.getLogger(__name__)

INCOMPLETE_MARKER = "INCOMPLETE.txt"
_VERSION = re.compile(r"v(\d+)")


def is_version_folder(path: Path) -> bool:
    """Whether ``path`` is named as anomalib names its run folders (``v0``, ``v1``, ...)."""
    return _VERSION.fullmatch(path.name) is not None


def point_latest(version_dir: Path) -> None:
    """Point the ``latest`` link beside ``version_dir`` at it, replacing the old link in one step."""
    latest = version_dir.parent / "latest"
    temporary = latest.with_name("latest.tmp")
    temporary.unlink(missing_ok=True)
    temporary.symlink_to(version_dir, target_is_directory=True)
    os.replace(temporary, latest)


def discard_if_empty(run_dir: Path) -> None:
    """Remove a run folder that holds no file (only empty sub-folders); ``latest`` goes back to the last complete run.

    With no earlier complete run, a ``latest`` link left dangling is removed.
    """
    if not run_dir.is_dir() or any(path.is_file() for path in run_dir.rglob("*")):
        return
    latest = run_dir.parent / "latest"
    points_here = latest.is_symlink() and latest.resolve() == run_dir.resolve()
    complete = _complete_versions_before(run_dir) if is_version_folder(run_dir) and points_here else []
    shutil.rmtree(run_dir)
    if complete:
        point_latest(complete[-1])
    elif latest.is_symlink() and not latest.exists():
        latest.unlink()


def _complete_versions_before(version_dir: Path) -> list[Path]:
    """Sibling version folders older than ``version_dir`` not marked incomplete, oldest first."""
    number = int(_VERSION.fullmatch(version_dir.name).group(1))
    older = [
        (int(match.group(1)), path)
        for path in version_dir.parent.iterdir()
        if (match := _VERSION.fullmatch(path.name)) and path.is_dir() and not path.is_symlink()
    ]
    return [path for index, path in sorted(older) if index < number and not (path / INCOMPLETE_MARKER).exists()]


def mark_incomplete_run(version_dir: Path, reason: BaseException) -> None:
    """Mark an interrupted fit's version folder and point ``latest`` back to the last complete run.

    anomalib's Engine makes a ``vN`` folder and points ``latest`` at it before the fit starts, so after an
    interrupted fit ``latest`` leads to partial results. The folder is kept (it may hold checkpoints) and
    marked; ``latest`` moves back only when an earlier complete run exists (with none it stays: anomalib
    recreates a link, not a folder, named ``latest``).
    """
    (version_dir / INCOMPLETE_MARKER).write_text(
        f"This run stopped before its fit completed ({type(reason).__name__}: {reason}).\n"
        "Its checkpoints, if any, are partial. Rerun the training; this folder can be deleted.\n"
    )
    latest = version_dir.parent / "latest"
    moved = ""
    if latest.is_symlink() and latest.resolve() == version_dir.resolve():
        complete = _complete_versions_before(version_dir)
        if complete:
            point_latest(complete[-1])
            moved = f"; `latest` points to {complete[-1].name} again, the last complete run"
    logger.warning(
        "The fit stopped before it completed (%s): %s is incomplete (marked with %s)%s.",
        type(reason).__name__,
        version_dir,
        INCOMPLETE_MARKER,
        moved or "; `latest` still points to it, as no earlier run is complete",
    )


class IncompleteRunMarker(Callback):
    """On an exception or Ctrl-C during a fit, mark the run folder incomplete (see :func:`mark_incomplete_run`)."""

    def on_exception(self, trainer: Trainer, pl_module: LightningModule, exception: BaseException) -> None:
        """Only fits write a version folder that later commands follow through ``latest``."""
        del pl_module
        version_dir = Path(trainer.default_root_dir)
        if trainer.state.fn == TrainerFn.FITTING and trainer.is_global_zero and is_version_folder(version_dir):
            mark_incomplete_run(version_dir, exception)
