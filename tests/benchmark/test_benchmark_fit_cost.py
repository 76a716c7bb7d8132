"""The fit-cost measurement: every run timed, and each fast map checked against the dense float64 rows."""

from anomalib_featureridge.benchmark.fit_cost import format_fit_cost, measure_fit_cost


def test_fit_cost_times_every_run_and_checks_each_map() -> None:
    cost = measure_fit_cost("resnet18", ["layer1", "layer2"], image_size=48, batch=2, repeats=1, dense=True)
    assert set(cost.seconds_per_image) == {"extract", "accumulate", "accumulate_float32", "dense"}
    assert all(seconds > 0 for seconds in cost.seconds_per_image.values())
    # float64 products differ from the dense rows by rounding only; float32 ones by float32 rounding.
    assert cost.map_difference["accumulate"] < 1e-5
    assert cost.map_difference["accumulate"] < cost.map_difference["accumulate_float32"] < 1e-2
    extract = cost.seconds_per_image["extract"]
    assert cost.extra_over_backbone("dense") == (cost.seconds_per_image["dense"] - extract) / extract
    report = format_fit_cost(cost).splitlines()
    assert len(report) == 4
    assert "map vs dense float64" in report[1]
    assert "fit cost over extraction" not in report[0]
