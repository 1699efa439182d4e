"""Experiments: what the notebooks run, as functions with typed parameters and results.

Each module holds one experiment: a frozen ``Params`` dataclass whose defaults are the full run
(with named presets such as ``smoke`` for the tests and ``lab`` for a quick look), one function
per step that takes the ``Params`` and the previous steps' outputs, and a ``Result`` that writes
and reads its own JSON file (``to_json`` / ``from_json``, with a schema version; one implementation,
``_params.ResultFile``, for all of them). A notebook is
then the parameters cell, one call per section and the table or figure of its output.

- :mod:`~vitprune_lite.experiments.base_model`: notebook 00, the benchmark, the base model and
  what it learned, with the cross-device check.
- :mod:`~vitprune_lite.experiments.gmm_approximation`: notebook 01, a Gaussian mixture per device
  stands in for its private data (uploads, selection of public images, privacy audit).
- :mod:`~vitprune_lite.experiments.head_channel_importance`: notebook 02, thirteen ways to score
  heads and channels, each pruned to TAP-ViTs' five budgets; recovery, the TCS audit, speed-up
  against FLOPs, and the TAP-ViTs faithfulness check.
- :mod:`~vitprune_lite.experiments.device_specificity`: does pruning on a device's own data beat
  one model pruned for every device? (the cross-device matrix; a property of the benchmark).
- :mod:`~vitprune_lite.experiments.latency_curve`: notebook 03, latency-workload curves, POMT's
  choice of R and the token methods' measured batch-1 latency.
- :mod:`~vitprune_lite.experiments.final_comparisons`: notebook 04, every method through the same
  pipeline per device, seed and budget, and the combined planner on the latency predictor.
"""
