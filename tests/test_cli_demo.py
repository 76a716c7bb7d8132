"""``anomalib-featureridge``: a deterministic demo and a --help that does not import anomalib."""

import re
import subprocess
import sys

import torch

from anomalib_featureridge.cli import build_parser, main


def _demo_metrics(root, capsys) -> dict[str, float]:
    arguments = ["demo", "--root", str(root), "--image-size", "48", "--n-train", "6", "--seed", "3"]
    assert main(arguments) == 0
    line = next(line for line in capsys.readouterr().out.splitlines() if line.startswith("Metrics: "))
    return {name: float(value) for name, value in re.findall(r"(\w+) ([0-9.]+)", line.removeprefix("Metrics: "))}


def test_demo_is_deterministic(tmp_path, capsys) -> None:
    """Byte-identical data must give identical metrics: the random backbone follows --seed as well."""
    first = _demo_metrics(tmp_path / "a", capsys)
    torch.manual_seed(12345)  # whatever the caller's random state
    second = _demo_metrics(tmp_path / "b", capsys)
    assert {"image_AUROC", "pixel_AUROC"} <= set(first)
    assert first == second


def test_help_does_not_import_anomalib_or_torch() -> None:
    code = (
        "import sys\n"
        "from anomalib_featureridge.cli import main\n"
        "for command in ([], ['demo'], ['predict'], ['make-dataset'], ['synthesize-defects'], ['benchmark']):\n"
        "    try:\n"
        "        main([*command, '--help'])\n"
        "    except SystemExit:\n"
        "        pass\n"
        "print('IMPORTED', 'torch' in sys.modules, 'anomalib' in sys.modules)\n"
    )
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120, check=False)
    assert result.returncode == 0, result.stderr[-3000:]
    assert result.stdout.strip().endswith("IMPORTED False False")
    for command in ("make-dataset", "demo", "predict", "synthesize-defects", "benchmark"):
        assert command in result.stdout.split("positional arguments")[0]


def test_every_option_has_help() -> None:
    parser = build_parser()
    subparsers = next(action for action in parser._actions if action.dest == "command")
    missing = [
        f"{name} {action.option_strings or action.dest}"
        for name, subparser in subparsers.choices.items()
        for action in subparser._actions
        if not action.help
    ]
    assert not missing
