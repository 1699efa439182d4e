"""vitprune_lite: a small, reproducible companion to three papers on pruning Vision Transformers.

- TAP-ViTs (arXiv 2601.02437): devices upload a Gaussian mixture of their private features; the
  cloud selects matching public images and prunes a model per device and budget.
- ToaSt (arXiv 2602.15720): coupled Q/K and V/O dimension pruning inside heads, plus Token
  Channel Selection in the feed-forward network.
- Pruning One More Token (arXiv 2407.05941): latency-aware, training-free token pruning, with
  Token Merging and Top-K as baselines.

Modules, one concept each:

- ``compat``      keeps ``import timm`` working when torchvision's compiled ops cannot load.
- ``paths``       where data, figures and results live; atomic writes.
- ``errors``      the exception types raised for bad input (one per kind of problem).
- ``methods``     the registry of methods: one name, display label and plot style per method.
- ``variants``    ``variant="project" | "reference"``: this project's implementation or the
                  authors' published code, for every method (``docs/deviations.md``).
- ``data``        the embedded synthetic benchmark (public pool + private device tasks) and
                  loaders for real image folders and scikit-learn's digits.
- ``data_v2``     benchmark v2 (48 fine-grained classes at 48 px, cluttered scenes, 8 styles, 8
                  devices): built and tested; the default switches to it with its trained model.
- ``models``      the base ViT: config, the one training loop, safetensors checkpoints, timm names.
- ``vit``         the ViT's structure, known once: head geometry, the supported-model check, the
                  forward stages (embed, blocks, head) and eval mode; every module below reads it.
- ``surgery``     the one mechanism that physically removes heads, head dimensions and channels.
- ``measure``     FLOPs, parameters, memory, latency and accuracy, used by every notebook.
- ``features``    frozen feature extractors a device or the cloud embeds images with.
- ``gmm``         TAP-ViTs' device/cloud exchange: GMM uploads and public-image selection.
- ``privacy``     what an upload reveals: membership inference, nearest-record distance.
- ``importance``  unit scores: TAP-ViTs HSIC and KL layer importance, ToaSt, baselines.
- ``tcs``         ToaSt's Token Channel Selection in the MLP.
- ``peers``       the torch-pruning library as a peer baseline.
- ``latency``     latency-workload curves L(n), step detection, test-retest.
- ``runtime``     ONNX Runtime as a second latency backend: export, exactness check, sessions.
- ``predictor``   per-device latency prediction of a plan (structure x token method) from a few
                  measurements, and its validation on held-out plans.
- ``tokens``      token reduction: Pruning One More Token, ToMe, Top-K, EViT.
- ``pipelines``   end-to-end device pipelines (upload + budget -> pruned model + report).
- ``folder_data`` ImageNet-style image folders read from disk on demand, seeded augmentation.
- ``structure``   a pruned model's architecture in its safetensors metadata (loads with no original).
- ``realscale``   the real path's pruning: a model by name or file + an image folder + a budget.
- ``recover``     recovery fine-tuning on one process or many (torchrun, DDP), exact resume.
- ``cli_real``    command line of ``prune``, ``upload`` and ``recover``.
- ``report``      the README's results section, generated from ``data/results``.
- ``plots``, ``reproduce``, ``benchmarks``: figures, the papermill runner, speed benchmarks.

Submodules are imported explicitly (``from vitprune_lite import surgery``), so importing the
package itself stays cheap.
"""
from . import compat as _compat  # noqa: F401  (installs the torchvision work-around)

__version__ = "0.1.0"
