"""Each option is declared once: the constructors, the CLI help, the checkpoint rules and the benchmark follow."""

from __future__ import annotations

import argparse
import inspect
import subprocess
import sys

import pytest

from anomalib_featureridge import FeatureRidge
from anomalib_featureridge.benchmark import options as benchmark_options
from anomalib_featureridge.models.feature_ridge import FeatureRidgeModel
from anomalib_featureridge.models.feature_ridge.heads import HEAD_NAMES
from anomalib_featureridge.models.feature_ridge.options import BY_NAME, OPTIONS, check_options, recorded_settings

ANOMALIB_COMPONENTS = {"pre_processor", "post_processor", "evaluator", "visualizer"}


@pytest.mark.parametrize("constructor", [FeatureRidgeModel, FeatureRidge])
def test_both_constructors_take_every_declared_option_with_its_default(constructor: type) -> None:
    parameters = dict(inspect.signature(constructor.__init__).parameters)
    parameters.pop("self")
    declared = {option.name: option.default for option in OPTIONS}
    taken = {name: p.default for name, p in parameters.items() if name not in ANOMALIB_COMPONENTS}
    assert taken == declared
    for option in OPTIONS:
        assert f"{option.name}: {option.help[0].upper()}{option.help[1:]}" in constructor.__doc__


def test_the_cli_help_describes_every_option() -> None:
    result = subprocess.run(
        [sys.executable, "-m", "anomalib.cli.cli", "train", "--model.help", "FeatureRidge"],
        capture_output=True,
        text=True,
        check=False,
    )
    if result.returncode != 0:
        result = subprocess.run(
            ["anomalib", "train", "--model.help", "FeatureRidge"], capture_output=True, text=True, check=True
        )
    text = " ".join(result.stdout.split())
    for option in OPTIONS:
        assert f"--model.{option.name}" in text
        first_words = " ".join(option.help.split()[:4])
        assert first_words[1:] in text, f"the help of {option.name} is not in --model.help"


def test_the_benchmark_offers_every_benchmark_option_and_passes_it_to_feature_ridge() -> None:
    parser = argparse.ArgumentParser()
    benchmark_options.add_arguments(parser)
    values = {"alpha": "2.0", "rank": "8", "region": "3", "pool": "3", "sigma": "1.0"}
    for option in OPTIONS:
        flag = f"--feature-ridge-{option.name.replace('_', '-')}"
        if option.benchmark is None:
            assert flag not in parser.format_help()
            continue
        given = (
            ["4", "8"] if option.name == "channels" else [option.choices[-1] if option.choices else values[option.name]]
        )
        args = parser.parse_args([flag, *given])
        passed = dict((key, value) for _, key, value in benchmark_options.model_options(args) if value is not None)
        expected = [int(v) for v in given] if option.name == "channels" else option.benchmark(given[0])
        assert passed == {option.name: expected}


def test_every_option_names_real_heads_and_every_head_is_offered() -> None:
    assert BY_NAME["head"].choices == HEAD_NAMES
    for option in OPTIONS:
        assert option.heads is None or set(option.heads) <= set(HEAD_NAMES)


def test_a_checkpoint_records_only_what_its_head_reads_and_scores_with() -> None:
    local = recorded_settings(check_options({"head": "local"}))
    assert "region" in local
    assert "alpha" not in local, "the local head does not read alpha: a checkpoint is never refused over it"
    assert "fit_precision" not in local
    assert "region" not in recorded_settings(check_options({"head": "paper"}))


@pytest.mark.parametrize(
    ("options", "message"),
    [
        ({"layers": "layer2,layer3"}, r"layers must be a list of two layer names"),
        ({"head": "median"}, r"head must be one of"),
        ({"sigma": -1}, r"sigma must be >= 0"),
        ({"no_such_option": 1}, r"FeatureRidge has no option \['no_such_option'\]"),
    ],
)
def test_bad_values_are_refused_naming_the_option(options: dict, message: str) -> None:
    with pytest.raises(ValueError, match=message):
        check_options(options)
