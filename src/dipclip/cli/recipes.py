"""``dipclip recipes``: the published recipe of every method, as shipped data files."""

from __future__ import annotations

import json

from .common import FORMATTER, positive_int
from .overrides import RECIPE_CHOICES


def add_commands(sub) -> None:
    """Add ``recipes`` (list, and ``show METHOD``) to the CLI's subparsers."""
    recipes = sub.add_parser(
        "recipes", formatter_class=FORMATTER, help="list the methods' published recipes, or show one",
        description="Each method trains by default with its authors' published recipe for the protocol\n"
                    "(`train --recipe base2new|fewshot|xd`; the protocol commands pick their own). A recipe\n"
                    "holds every value the official config files and scripts set, and names its source.",
        epilog="examples:\n"
               "  dipclip recipes\n"
               "  dipclip recipes show promptsrc --protocol fewshot --dataset dtd --shots 4\n",
    )
    recipes.set_defaults(func=cmd_list)
    actions = recipes.add_subparsers(dest="action", metavar="ACTION")
    show = actions.add_parser("show", formatter_class=FORMATTER, help="print one method's resolved recipe as JSON",
                              description="The recipe of METHOD for a protocol, with its dataset and shot rules "
                                          "applied when --dataset/--shots are given.")
    show.add_argument("method", metavar="METHOD", help="a method (coop, dip, kgcoop+dip, ...)")
    show.add_argument("--protocol", choices=(*RECIPE_CHOICES, "dg"), default="base2new",
                      help="default base2new; dg uses xd's")
    show.add_argument("--dataset", default=None, metavar="KEY", help="apply the recipe's rules for this dataset")
    show.add_argument("--shots", type=positive_int, default=None, metavar="K", help="apply the rules for K shots")
    show.set_defaults(func=cmd_show)


def cmd_list(args) -> int:
    from ..recipes import RECIPE_PROTOCOLS, load_recipe_file, recipe_methods, resolve_recipe

    print(f"{'method':<10} {'protocol':<9} {'epochs':>6} {'batch':>5} {'lr':>7}  source")
    for method in recipe_methods():
        source = load_recipe_file(method)["source"]
        for protocol in RECIPE_PROTOCOLS:
            recipe = resolve_recipe(method, protocol)
            print(f"{method:<10} {protocol:<9} {recipe.get('train.epochs', '-')!s:>6} "
                  f"{recipe.get('train.batch_size', '-')!s:>5} {recipe.get('optim.lr', '-')!s:>7}  "
                  f"{source['repository']}@{source['commit']}")
    print("Epochs can depend on the dataset and shots: `dipclip recipes show METHOD --protocol P --dataset K --shots N`.")
    return 0


def cmd_show(args) -> int:
    from ..data.registry import DATASET_KEYS
    from ..methods import get_method
    from ..recipes import resolve_recipe

    name = get_method(args.method).name  # checks the name (and spells +dip as the method does)
    recipe = resolve_recipe(name, args.protocol, args.dataset, args.shots, known_datasets=DATASET_KEYS)
    shown = {"name": recipe.name, "values": recipe.values, "source": recipe.source, "files": recipe.files,
             "notes": recipe.notes}
    if recipe.shots is not None:  # the shots the authors' script trains on for this protocol (xd/dg source)
        shown["shots"] = recipe.shots
    print(json.dumps(shown, indent=2))
    return 0
