"""``anomalib-featureridge benchmark``: FeatureRidge against anomalib's models on your own images.

One module per reason to change, so that a new model, a new figure or a new output touches one file:

- :mod:`.options`: the command-line options (argparse only, so ``--help`` starts without torch);
- :mod:`.harness`: how a figure is taken on a shared, noisy machine (timing in alternation, peak
  memory sampling, one process per row, rows appended as measured and skipped on a re-run);
- :mod:`.construction`: every model built from its registered name with the run's shared settings;
- :mod:`.measurement`: one row: fit, test, inference and size of one model on one data set;
- :mod:`.sweep`: the rows a command asks for, checked before any fit, measured and resumed;
- :mod:`.report`: the Markdown tables and plots rebuilt from the CSV;
- :mod:`.per_image` / :mod:`.recording`: each tested row's per-image scores and reduced maps, kept
  during its test pass; :mod:`.html_report` / :mod:`.page_figures`: the static page built from them.

The measurements behind the scripts in ``tools/`` (each script is its options and one call here),
which reuse the harness and the construction above:

- :mod:`.fit_cost`: FeatureRidge's fit against the backbone's forward pass, float64 and float32 products;
- :mod:`.export_latency`: exported models in torch eager, ONNX Runtime and OpenVINO;
- :mod:`.inference_scale`: FeatureRidge heads against Patchcore banks of full-size training sets;
- :mod:`.winclip_speed`: WinClipPlus against anomalib's WinClip on the same weights;
- :mod:`.fit_scale`: FeatureRidge's fit over training-set size, on one and several processes;
- :mod:`.threshold_study`: thresholds chosen three ways, on real and on synthetic defects;
- :mod:`.winclip_paper`: the WinCLIP paper's MVTec AD table reproduced.

Nothing is imported here, so that importing the options does not import torch.
"""
