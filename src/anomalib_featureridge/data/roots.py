"""A dataset root that is not there is refused, not downloaded into.

anomalib's ``MVTecAD.prepare_data`` downloads and unpacks all of MVTec AD (about 5 GB) whenever
``root/category`` is not a folder, creating ``root`` on the way: a mistyped ``--data.category`` or
``--data.root`` starts a download instead of naming the typo, and offline it fails after creating
the folder. Here a run refuses first, naming the path and the categories that are there; a
download happens only when the user asks for one, with the command the message gives (anomalib's
own ``prepare_data``, called outside a run).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any


def _categories(root: Path) -> list[str]:
    """The folders of ``root`` laid out as MVTec AD categories (with a ``train`` folder)."""
    return sorted(path.name for path in root.iterdir() if path.is_dir() and (path / "train").is_dir())


def download_command(root: Path) -> str:
    """The command that downloads MVTec AD into ``root`` with anomalib's own code."""
    return f"python -c \"from anomalib.data import MVTecAD; MVTecAD(root='{root}').prepare_data()\""


def refuse_missing_mvtec_category(datamodule: Any) -> None:
    """Raise, naming the path and the categories there, when ``MVTecAD`` would download instead of reading."""
    from anomalib.data import MVTecAD
    from anomalib.data.datasets.image.mvtecad import CATEGORIES

    if not isinstance(datamodule, MVTecAD):
        return
    root, category = Path(datamodule.root), str(datamodule.category)
    if (root / category).is_dir():
        return
    download = (
        f"to download MVTec AD (about 5 GB) into {root}, run {download_command(root)} first"
        if category in CATEGORIES
        else f"{category!r} is not an MVTec AD category, so a download would not bring it"
    )
    if not root.is_dir():
        msg = (
            f"The dataset root {root} does not exist (--data.root): anomalib would create it and download all of "
            f"MVTec AD. Point --data.root at the folder that holds the category folders; {download}."
        )
        raise FileNotFoundError(msg)
    there = _categories(root)
    listed = f"the categories there: {', '.join(there)}" if there else "no category folders (with train/) are there"
    msg = (
        f"{root} has no category {category!r} (no folder {root / category}; {listed}): anomalib would download all "
        f"of MVTec AD into {root}. Set --data.category to one of the categories there; {download}."
    )
    raise FileNotFoundError(msg)
