"""``anomalib-featureridge benchmark`` as users run it: the installed command, from any directory.

That its ``--help`` imports neither torch nor anomalib is tested with the other commands (test_cli_demo.py).
"""

from __future__ import annotations

import csv
import shutil
import subprocess

SMOKE = ["--backbone", "resnet18", "--layers", "layer2", "layer3", "--random-init", "--batch-size", "4"]
SMOKE += ["--warmup", "0", "--repeats", "1", "--num-workers", "0"]


def test_installed_command_runs_from_another_directory(synthetic_root, tmp_path):
    command = shutil.which("anomalib-featureridge")
    assert command, "the anomalib-featureridge command is not on PATH: install the package (pip install .)"
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    arguments = ["benchmark", "--root", str(synthetic_root), "--categories", "synthetic", "--models", "FeatureRidge"]
    arguments += ["--skip-full", "--scaling", "4", "--output", "results", *SMOKE]
    # Each row in its own process (the default), which the console script must be able to start.
    result = subprocess.run(
        [command, *arguments], cwd=elsewhere, capture_output=True, text=True, timeout=600, check=False
    )
    assert result.returncode == 0, result.stderr[-3000:]
    (row,) = csv.DictReader((elsewhere / "results" / "results.csv").open())
    assert row["error"] == ""
    assert (row["model"], row["mode"], row["n_train"]) == ("FeatureRidge", "scaling", "4")
    assert float(row["fit_s"]) > 0
    assert (elsewhere / "results" / "results.md").exists()
