"""anomalib's versioned run folders (``vN`` beside a ``latest`` link): the one place this package changes them.

anomalib's Engine makes ``vN`` and points ``latest`` at it when a fit starts, so ``latest`` leads to
whatever the run left, finished or not. Here an interrupted fit (or the test ``anomalib train`` runs
after it) marks its folder and ``latest`` goes back; an interrupted ``anomalib test``, which writes
into ``latest``'s folder, marks its results partial until a test completes. ``latest`` is re-pointed
in one way (also by the distributed fit, which shares rank 0's folder).
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


def _described(reason: BaseException) -> str:
    if isinstance(reason, KeyboardInterrupt):
        return "KeyboardInterrupt: Ctrl-C"
    return f"{type(reason).__name__}: {reason}" if str(reason) else type(reason).__name__


_PARTIAL_TEST = "This run's test stopped before it completed"


def mark_incomplete_run(version_dir: Path, reason: BaseException, stage: str = "fit") -> None:
    """Mark an interrupted run's version folder and point ``latest`` back to the last complete run.

    anomalib's Engine makes a ``vN`` folder and points ``latest`` at it before the fit starts, so after an
    interrupted fit (or the test ``anomalib train`` runs after it) ``latest`` leads to partial results. The
    folder is kept (it may hold checkpoints) and marked; ``latest`` moves back only when an earlier complete
    run exists (with none it stays: anomalib recreates a link, not a folder, named ``latest``).
    """
    checkpoints = (
        "Its checkpoints, if any, are partial."
        if stage == "fit"
        else "Its checkpoint is complete, but its test images and metrics are partial."
    )
    (version_dir / INCOMPLETE_MARKER).write_text(
        f"This run stopped before its {stage} completed ({_described(reason)}).\n"
        f"{checkpoints} Rerun the training; this folder can be deleted.\n"
    )
    latest = version_dir.parent / "latest"
    moved = ""
    if latest.is_symlink() and latest.resolve() == version_dir.resolve():
        complete = _complete_versions_before(version_dir)
        if complete:
            point_latest(complete[-1])
            moved = f"; `latest` points to {complete[-1].name} again, the last complete run"
    logger.warning(
        "The %s stopped before it completed (%s): %s is incomplete (marked with %s)%s.",
        stage,
        type(reason).__name__,
        version_dir,
        INCOMPLETE_MARKER,
        moved or "; `latest` still points to it, as no earlier run is complete",
    )


def mark_partial_test(version_dir: Path, reason: BaseException) -> None:
    """Mark a folder whose test (``anomalib test``, after a complete fit) stopped part-way; ``latest`` stays.

    anomalib's test writes into the folder ``latest`` points to, whatever checkpoint it scores: moving
    ``latest`` away would send the rerun's images into another run's folder. The fit's checkpoint is
    complete, so the marker says what is partial, and a test that completes here removes it.
    """
    if (version_dir / INCOMPLETE_MARKER).exists() and not is_partial_test_marker(version_dir):
        return  # the fit itself is incomplete: that marker says more
    (version_dir / INCOMPLETE_MARKER).write_text(
        f"{_PARTIAL_TEST} ({_described(reason)}).\n"
        "The fit's checkpoint is complete, but the test images and metrics here are partial. Run `anomalib test` "
        "again: a test that completes removes this file.\n"
    )
    logger.warning(
        "The test stopped before it completed (%s): its images and metrics in %s are partial (marked with %s).",
        type(reason).__name__,
        version_dir,
        INCOMPLETE_MARKER,
    )


def is_partial_test_marker(version_dir: Path) -> bool:
    """Whether the folder's marker was left by a stopped test alone (the fit before it completed)."""
    marker = version_dir / INCOMPLETE_MARKER
    return marker.is_file() and marker.read_text().startswith(_PARTIAL_TEST)


class IncompleteRunMarker(Callback):
    """On an exception or Ctrl-C during a fit or a test, mark the version folder (see :func:`mark_incomplete_run`)."""

    def on_exception(self, trainer: Trainer, pl_module: LightningModule, exception: BaseException) -> None:
        """Fits and tests write into a version folder that later commands follow through ``latest``.

        A test on the trainer that has just fitted (``anomalib train``) is part of that run; a test alone
        (``anomalib test``) leaves the fit's folder complete but its test results partial. ``predict`` and
        ``export`` make no run folder (they write into ``latest``'s): they are not marked.
        """
        del pl_module
        version_dir = Path(trainer.default_root_dir)
        if not (trainer.is_global_zero and is_version_folder(version_dir)):
            return
        if trainer.state.fn == TrainerFn.FITTING:
            mark_incomplete_run(version_dir, exception)
        elif trainer.state.fn == TrainerFn.TESTING:
            if trainer.fit_loop.epoch_progress.current.completed > 0:
                mark_incomplete_run(version_dir, exception, stage="test")
            else:
                mark_partial_test(version_dir, exception)

    def on_test_end(self, trainer: Trainer, pl_module: LightningModule) -> None:
        """A test that completes replaces the partial results a stopped one left: its marker goes."""
        del pl_module
        version_dir = Path(trainer.default_root_dir)
        if trainer.is_global_zero and is_partial_test_marker(version_dir):
            (version_dir / INCOMPLETE_MARKER).unlink()
