"""Command line: ``python -m vitprune_lite {reproduce,html,train,report,prune,upload,recover}``."""
from __future__ import annotations

import argparse
import sys


def main(argv: list[str] | None = None) -> int:
    from .data import BENCHMARK_NAMES, DEFAULT_BENCHMARK

    parser = argparse.ArgumentParser(prog="python -m vitprune_lite", description=__doc__)
    sub = parser.add_subparsers(dest="cmd", required=True)

    rep = sub.add_parser("reproduce", help="run the notebooks in order with papermill")
    rep.add_argument("--smoke", action="store_true", help="small sizes (what the tests run)")
    rep.add_argument("--only", nargs="+", default=(), metavar="NN", help="notebook numbers, e.g. 00 03")
    rep.add_argument("-p", dest="params", action="append", default=[], metavar="NAME=VALUE",
                     help="parameter passed to every notebook (repeatable)")

    rep.add_argument("--no-html", action="store_true", help="skip the HTML export of the executed notebooks")

    web = sub.add_parser("html", help="export executed notebooks (build/notebooks) to build/html with an index")
    web.add_argument("--screenshot", action="store_true", help="also render index.html in headless Chromium")

    tr = sub.add_parser("train", help="retrain the base model and rewrite data/base_vit.safetensors")
    tr.add_argument("--epochs", type=int, default=None, help="override the default epoch count")
    tr.add_argument("--out", default=None, help="checkpoint path ending in .safetensors (default data/base_vit.safetensors)")
    tr.add_argument("--benchmark", choices=BENCHMARK_NAMES, default=DEFAULT_BENCHMARK,
                    help="v2 (the default): 48 classes at 48 px, written to data/base_vit_v2.safetensors; "
                         "v1: the small 12-class benchmark, data/base_vit.safetensors")
    tr.add_argument("--overwrite-shipped", action="store_true",
                    help="allow replacing the shipped data/base_vit.safetensors (refused otherwise)")

    rp = sub.add_parser("report", help="regenerate README.md's results section from data/results/*.json")
    rp.add_argument("--check", action="store_true", help="only check; exit 1 if the README is stale")

    # Real models and data (prune, upload, recover): arguments and dispatch live in cli_real.py.
    from . import cli_real

    cli_real.add_parsers(sub)

    args = parser.parse_args(argv)
    from .errors import VitpruneError

    try:
        return _run(args)
    except (VitpruneError, FileNotFoundError) as err:
        print(f"error: {err}", file=sys.stderr)
        return 1


def _run(args: argparse.Namespace) -> int:
    from . import cli_real

    if args.cmd in cli_real.COMMANDS:
        return cli_real.main(args)
    if args.cmd == "report":
        from . import paths
        from .report import Refused, load_results, update_readme

        stale = update_readme(write=not args.check)
        print(("README.md results section is stale: run `python -m vitprune_lite report`" if args.check else
               "README.md results section rewritten") if stale else "README.md results section is up to date")
        for res in load_results(paths.root() / "data" / "results").values():
            if isinstance(res, Refused):  # its section says so; say it here too
                print(f"warning: not read: {res.reason}", file=sys.stderr)
        return int(stale and args.check)
    if args.cmd == "reproduce":
        from .reproduce import NotebookFailed, export_html, parse_param, reproduce

        try:
            params = dict(parse_param(p) for p in args.params)
            done = reproduce(only=args.only, smoke=args.smoke, parameters=params)
        except (NotebookFailed, ValueError, FileNotFoundError) as err:
            print(f"error: {err}", file=sys.stderr)
            return 1
        if not args.no_html:
            print(f"HTML: {export_html(done)}")
        return 0
    if args.cmd == "html":
        from . import paths
        from .reproduce import export_html, screenshot

        index = export_html()
        print(f"wrote {index}")
        if args.screenshot:
            print(f"screenshot: {screenshot(index, paths.build_dir() / 'html' / 'index.png')}")
        return 0
    if args.cmd == "train":
        import dataclasses

        from . import models, paths
        from .errors import InvalidValueError

        # Every option is checked before training starts: a refusal costs seconds, not the training.
        v2 = args.benchmark == "v2"
        tcfg = models.V2_TRAIN if v2 else models.TrainConfig()
        if args.epochs is not None:
            try:
                tcfg = dataclasses.replace(tcfg, epochs=args.epochs)
            except InvalidValueError as err:
                raise InvalidValueError(f"--epochs {args.epochs}: {err}") from None
        default_out = models.shipped_checkpoint("v2" if v2 else "v1")
        target = models.check_checkpoint_path(args.out or default_out, args.overwrite_shipped)
        if v2:
            from . import data_v2

            model, meta = models.train_base_model(models.V2_CONFIG, tcfg, bench=data_v2.load_benchmark(tcfg.seed),
                                                  fixed_cost=True)
        else:
            model, meta = models.train_base_model(tcfg=tcfg)
        out = models.save_checkpoint(model, target, meta, overwrite_shipped=args.overwrite_shipped)
        print(f"wrote {out}: " + ", ".join(f"{k} {v:.3f}" for k, v in meta["accuracy"].items()))
        return 0
    return 2


if __name__ == "__main__":
    sys.exit(main())
