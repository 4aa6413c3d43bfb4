"""The analysis commands of the ``dipclip`` CLI: ``analyze`` (ID vs accuracy) and ``plot`` (result figures)."""

from __future__ import annotations

from pathlib import Path

from ..errors import DipclipError
from .common import FORMATTER, out_dir, path_arg


def add_commands(subparsers) -> None:
    analyze = subparsers.add_parser(
        "analyze", formatter_class=FORMATTER, help="ID_k vs accuracy per epoch, and their Spearman rho",
        description="For each run folder: plot ID_k of the prompt and of its update per epoch together with the\n"
                    "accuracies recorded with `train --eval-every E`, and compute Spearman's rho between ID and\n"
                    "each accuracy over the epochs (the DIP paper's Figure 1). Writes PNG + JSON per run.",
        epilog="examples:\n"
               "  dipclip train --method coop ... --subsample base --eval-every 5 --out runs/pets-coop\n"
               "  dipclip analyze runs/pets-coop runs/pets-dip --out analysis/\n",
    )
    analyze.add_argument("runs", type=path_arg, nargs="+", help="run folders (the --out of `dipclip train`)")
    analyze.add_argument("--out", type=out_dir, default="analysis", metavar="DIR", help="default: analysis")
    analyze.set_defaults(func=cmd_analyze)

    plot = subparsers.add_parser(
        "plot", formatter_class=FORMATTER, help="figures from a protocol's summary.json",
        description="Draw a protocol's aggregate table: base/new/HM bars per dataset and method (base2new),\n"
                    "accuracy-vs-shots curves (fewshot), test-accuracy bars (xd, dg). Reads only the stored\n"
                    "summary.json, never logs.",
        epilog="examples:\n"
               "  dipclip plot runs/base2new/summary.json\n"
               "  dipclip plot runs/fewshot/summary.json --out figures/\n",
    )
    plot.add_argument("summary", type=path_arg, help="a summary.json written by base2new/fewshot/xd/dg")
    plot.add_argument("--out", type=out_dir, default=None, metavar="DIR", help="default: the summary's folder")
    plot.set_defaults(func=cmd_plot)


def cmd_analyze(args) -> int:
    from ..analysis import analysis_names, analyze_run, load_run

    for run in args.runs:  # every run checked before any file is written
        load_run(run)
    for run, name in zip(args.runs, analysis_names(args.runs), strict=True):
        report = analyze_run(run, out=args.out, name=name)
        parts = []
        for pair, value in report["spearman"].items():
            rho = "n/a" if value["rho"] is None else f"{value['rho']:+.3f}"
            parts.append(f"rho({pair}) = {rho} over {value['points']} epochs")
        rhos = ", ".join(parts) or "no evaluations recorded (train with --eval-every)"
        print(f"{run}: {report['method']} on {report['dataset']}: {rhos}; plot {report['png']}")
    return 0


def cmd_plot(args) -> int:
    from ..plots import load_summary, plot_base_new_bars, plot_fewshot_curves

    path = Path(args.summary)
    if path.is_dir():  # the protocol's folder (runs/base2new) holds its summary.json
        if not (path / "summary.json").is_file():
            raise DipclipError(f"{path} is a folder without a summary.json; give the summary.json a protocol "
                               "command wrote (runs/PROTOCOL/summary.json)")
        path = path / "summary.json"
    summary = load_summary(path)
    out = Path(args.out) if args.out else path.parent
    fewshot = summary["protocol"] == "fewshot"
    target = out / ("fewshot_curves.png" if fewshot else f"{summary['protocol']}_bars.png")
    try:
        (plot_fewshot_curves if fewshot else plot_base_new_bars)(summary, target)
    except DipclipError as exc:  # a summary with nothing to draw: named
        raise DipclipError(f"{path}: {exc}") from None
    print(f"wrote {target}")
    return 0
