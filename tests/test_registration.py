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
            "import sys, anomalib_featureridge_plugin_loader as h; "
            "print(any(isinstance(f, h.PluginFinder) for f in sys.meta_path))"
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


SMALL = {"backbone": "resnet18", "pre_trained": False}


@pytest.mark.parametrize(
    "route",
    [
        "get_model('FeatureRidge', **SMALL)",
        "get_model({'class_path': 'FeatureRidge'}, **SMALL)",
        "get_model({'class_path': 'FeatureRidge', 'init_args': SMALL})",
        "get_model({'class_path': 'anomalib.models.FeatureRidge', 'init_args': SMALL})",
        "get_model({'class_path': 'anomalib_featureridge.FeatureRidge', 'init_args': SMALL})",
        "get_model(OmegaConf.create({'class_path': 'FeatureRidge', 'init_args': SMALL}))",
        "__import__('anomalib.models', fromlist=['FeatureRidge']).FeatureRidge(**SMALL)",
    ],
)
def test_every_get_model_route_finds_the_plugin(route: str) -> None:
    out = _ok(
        _python(
            f"""
            from omegaconf import OmegaConf
            from anomalib.models import get_model
            SMALL = {SMALL!r}
            model = {route}
            print(type(model).__name__, model.model.backbone)
            """,
        ),
    )
    assert out.split() == ["FeatureRidge", "resnet18"]


def test_from_anomalib_models_import_both_plugin_models() -> None:
    out = _ok(
        _python(
            "from anomalib.models import FeatureRidge, WinClipPlus; print(FeatureRidge.__name__, WinClipPlus.__name__)"
        )
    )
    assert out.split() == ["FeatureRidge", "WinClipPlus"]


def test_plugin_imported_first_also_registers() -> None:
    out = _ok(
        _python(
            """
            import anomalib_featureridge
            from anomalib.models import get_model, list_models
            from anomalib.models import FeatureRidge
            model = get_model({"class_path": "FeatureRidge", "init_args": {"backbone": "resnet18", "pre_trained": 0}})
            print("feature_ridge" in list_models(), FeatureRidge is anomalib_featureridge.FeatureRidge)
            print(type(model) is FeatureRidge)
            """,
        ),
    )
    assert out.split() == ["True", "True", "True"]


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


def _install_fake_distribution(root, entry_points: str, module_code: str) -> dict[str, str]:
    """A distribution on PYTHONPATH (module ``fake_plugin`` + dist-info), as pip would leave it."""
    (root / "fake_plugin.py").write_text(textwrap.dedent(module_code))
    dist_info = root / "fake_plugin-0.1.dist-info"
    dist_info.mkdir()
    (dist_info / "METADATA").write_text("Metadata-Version: 2.1\nName: fake-plugin\nVersion: 0.1\n")
    (dist_info / "entry_points.txt").write_text("[anomalib.models]\n" + textwrap.dedent(entry_points))
    return {"PYTHONPATH": f"{root}{os.pathsep}{os.environ.get('PYTHONPATH', '')}"}


FAKE_MODELS = """
    from anomalib.models.components import AnomalibModule

    class Padim(AnomalibModule):
        pass

    class NotAModel:
        pass
"""


def test_entry_points_are_loaded_and_checked_and_never_break_anomalib(tmp_path) -> None:
    env = _install_fake_distribution(
        tmp_path,
        """
        clash = fake_plugin:Padim
        missing = fake_plugin:NoSuchClass
        wrong_type = fake_plugin:NotAModel
        broken = no_such_module_xyz:Model
        """,
        FAKE_MODELS,
    )
    result = _python(
        """
        import warnings
        warnings.simplefilter("always")
        with warnings.catch_warnings(record=True) as caught:
            import anomalib.models as models
        from anomalib.models.image import Padim
        print("builtin-kept", models.Padim is Padim, "feature_ridge" in models.list_models())
        for warning in caught:
            if "anomalib plugin" in str(warning.message):
                print("WARNING", warning.message)
        """,
        **env,
    )
    out = _ok(result)
    assert "builtin-kept True True" in out
    warnings_by_plugin = {line.split("'")[1]: line for line in out.splitlines() if line.startswith("WARNING")}
    assert set(warnings_by_plugin) == {"clash", "missing", "wrong_type", "broken"}, out
    assert "no_such_module_xyz" in warnings_by_plugin["broken"]
    assert "anomalib.models.image.padim.lightning_model.Padim" in warnings_by_plugin["clash"]
    assert "fake_plugin.Padim" in warnings_by_plugin["clash"]
    assert "NoSuchClass" in warnings_by_plugin["missing"]
    assert "AnomalibModule subclass" in warnings_by_plugin["wrong_type"]


def test_two_copies_of_the_loader_load_the_group_once(tmp_path) -> None:
    """Another distribution that copies the pattern under its own module name must not double the work."""
    import shutil

    import anomalib_featureridge_plugin_loader

    shutil.copy(anomalib_featureridge_plugin_loader.__file__, tmp_path / "other_plugin_loader.py")
    env = _install_fake_distribution(tmp_path, "clash = fake_plugin:Padim\n", FAKE_MODELS)
    out = _ok(
        _python(
            """
            import warnings
            import other_plugin_loader
            other_plugin_loader.install()
            warnings.simplefilter("always")
            with warnings.catch_warnings(record=True) as caught:
                from anomalib.models import FeatureRidge
            print(sum("anomalib plugin 'clash'" in str(warning.message) for warning in caught))
            """,
            **env,
        )
    )
    assert out.strip() == "1"


BENCHMARK_CONFIG = """
accelerator: cpu
benchmark:
  seed: 0
  model:
    grid:
      - class_path: FeatureRidge
        init_args: {{backbone: resnet18, pre_trained: false, sigma: 0.0}}
      - class_path: anomalib_featureridge.FeatureRidge
        init_args: {{backbone: resnet18, pre_trained: false, sigma: 2.0}}
  data:
    class_path: MVTecAD
    init_args: {{root: {root}, category: synthetic, num_workers: 0, train_batch_size: 8, eval_batch_size: 8}}
"""


def test_anomalib_benchmark_runs_a_model_grid(tmp_path) -> None:
    from anomalib_featureridge.data import SyntheticSpec, make_synthetic_dataset

    make_synthetic_dataset(
        tmp_path / "data", spec=SyntheticSpec(image_size=32, n_train=4, n_test_good=2, n_test_per_defect=1)
    )
    config = tmp_path / "benchmark.yaml"
    config.write_text(BENCHMARK_CONFIG.format(root=tmp_path / "data"))
    result = subprocess.run(
        ["anomalib", "benchmark", "--config", str(config)],
        capture_output=True,
        text=True,
        cwd=tmp_path,
        timeout=600,
        check=False,
    )
    assert result.returncode == 0, (result.stdout + result.stderr)[-4000:]
    (results_csv,) = (tmp_path / "runs" / "benchmark").rglob("results.csv")
    lines = results_csv.read_text().splitlines()
    assert len(lines) == 3, lines
    assert "image_AUROC" in lines[0]
