"""Registration in fresh interpreters: the installed .pth hook makes FeatureRidge a built-in-like model."""

import os
import subprocess
import sys
import textwrap

import pytest


def _python(code: str, **env: str) -> subprocess.CompletedProcess:
    environment = {**os.environ, **env}
    return subprocess.run(
        [sys.executable, "-c", textwrap.dedent(code)],
        capture_output=True,
        text=True,
        env=environment,
        timeout=300,
        check=False,
    )


def _ok(result: subprocess.CompletedProcess) -> str:
    assert result.returncode == 0, result.stderr[-3000:]
    return result.stdout


def test_hook_is_installed_at_interpreter_start() -> None:
    out = _ok(
        _python(
            "import sys, anomalib_plugin_loader as h; print(any(isinstance(f, h.PluginFinder) for f in sys.meta_path))"
        )
    )
    assert out.strip() == "True"


def test_interpreter_start_does_not_import_torch_or_anomalib() -> None:
    out = _ok(_python("import sys; print('torch' in sys.modules, 'anomalib' in sys.modules)"))
    assert out.strip() == "False False"


def test_get_model_and_list_models_without_importing_the_plugin() -> None:
    out = _ok(
        _python(
            """
            from anomalib.models import get_model, list_models
            model = get_model("feature_ridge", backbone="resnet18", pre_trained=False)
            print(type(model).__module__, "feature_ridge" in list_models(), "FeatureRidge" in list_models("pascal"))
            """,
        ),
    )
    assert out.split() == ["anomalib_featureridge.models.feature_ridge.lightning_model", "True", "True"]


def test_plugin_imported_first_also_registers() -> None:
    out = _ok(
        _python(
            """
            import anomalib_featureridge
            from anomalib.models import list_models
            print("feature_ridge" in list_models())
            """,
        ),
    )
    assert out.strip() == "True"


def test_importing_anomalib_itself_registers() -> None:
    out = _ok(
        _python(
            """
            import anomalib.models.components as components
            print("FeatureRidge" in {cls.__name__ for cls in components.AnomalibModule.__subclasses__()})
            """,
        )
    )
    assert out.strip() == "True"


def test_plugin_names_do_not_shadow_built_in_models() -> None:
    out = _ok(
        _python(
            """
            import anomalib.models as models
            from anomalib.models.components import AnomalibModule
            built_in = [c.__name__ for c in AnomalibModule.__subclasses__() if c.__module__.startswith("anomalib.")]
            plugin_prefix = "anomalib_featureridge"
            plugins = [c.__name__ for c in AnomalibModule.__subclasses__() if c.__module__.startswith(plugin_prefix)]
            print(sorted(plugins), sorted(set(built_in) & set(plugins)))
            """,
        ),
    )
    assert out.strip() == "['FeatureRidge', 'SyntheticDefectMetric', 'WinClipPlus'] []"


def test_disable_switch_leaves_anomalib_untouched() -> None:
    out = _ok(
        _python(
            "from anomalib.models import list_models; print('feature_ridge' in list_models())",
            ANOMALIB_PLUGINS_DISABLE="1",
        )
    )
    assert out.strip() == "False"


def test_broken_plugin_warns_instead_of_breaking_anomalib() -> None:
    out = _ok(
        _python(
            """
            import warnings
            from importlib import metadata
            import anomalib_plugin_loader as loader

            broken = metadata.EntryPoint("broken", "no_such_module_xyz:Model", "anomalib.models")
            metadata_entry_points = metadata.entry_points
            metadata.entry_points = lambda group: [broken] if group == "anomalib.models" else metadata_entry_points(
                group=group
            )
            with warnings.catch_warnings(record=True) as caught:
                warnings.simplefilter("always")
                print(loader.load_plugins(), any("broken" in str(w.message) for w in caught))
            """,
        ),
    )
    assert out.strip() == "[] True"


@pytest.mark.parametrize("model_argument", ["FeatureRidge", "anomalib_featureridge.FeatureRidge"])
def test_cli_knows_the_model(model_argument: str) -> None:
    result = subprocess.run(
        ["anomalib", "train", "--model.help", model_argument],
        capture_output=True,
        text=True,
        timeout=300,
        check=False,
    )
    assert result.returncode == 0, result.stderr[-3000:]
    assert "--model.backbone_weights" in result.stdout
    assert "--model.alpha" in result.stdout
