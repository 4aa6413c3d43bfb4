"""Published training recipes as data: one JSON file per method, like open_clip's model configs.

Each file holds, per protocol (``base2new``, ``fewshot``, ``xd``; ``dg`` evaluates the ``xd`` model), every
value the authors' config files and scripts set, and names its source (repository, commit, files). A
recipe is resolved for a protocol, a dataset and a shot count: protocol values override the file's
``defaults``, then each matching rule (``when`` dataset / shots) sets dotted keys (``train.epochs``).

Sections map onto the run's configuration: ``train`` (epochs, batch_size), ``optim`` (optimizer, lr,
momentum, weight_decay, warmup_epochs, warmup_lr), ``prompt`` (n_ctx, init_text: ``null`` for a random
context, class_position, class_specific, prompt_depth) and ``method`` (the numbers of the method's own
loss: kg_weight, prograd_lambda, gpa_mean, gpa_std). Both end up in the run's ``PromptConfig``.

A protocol may also fix ``shots``: the shot count of the run its authors' script trains for that protocol
(ProGrad's and KgCoOp's ImageNet source for ``xd``/``dg`` trains on 4 shots, the others on 16). It is about
the data, not the run's configuration: :func:`recipe_shots` reads it for the protocol runner.
"""

from __future__ import annotations

import copy
import difflib
import json
from collections.abc import Sequence
from dataclasses import dataclass, field
from importlib import resources

from ..errors import DipclipError

RECIPE_PROTOCOLS = ("base2new", "fewshot", "xd")
PROTOCOL_OF = {"base2new": "base2new", "fewshot": "fewshot", "xd": "xd", "dg": "xd"}
SECTIONS = {
    "train": {"epochs", "batch_size"},
    "optim": {"optimizer", "lr", "momentum", "weight_decay", "warmup_epochs", "warmup_lr"},
    "prompt": {"n_ctx", "init_text", "class_position", "class_specific", "prompt_depth"},
    "method": {"kg_weight", "prograd_lambda", "gpa_mean", "gpa_std"},  # methods.base.METHOD_SETTINGS
}
PROTOCOL_KEYS = {"files", "why", "rules", "shots", *SECTIONS}


@dataclass(frozen=True)
class Recipe:
    """A resolved recipe: the values a run starts from, and where each came from."""

    method: str
    protocol: str
    values: dict  # section -> {key: value}
    source: dict
    files: list[str]
    notes: list[str] = field(default_factory=list)
    shots: int | None = None  # the shots the authors' script trains on for this protocol, where it fixes them

    @property
    def name(self) -> str:
        return f"{self.method}/{self.protocol}"

    def get(self, dotted: str, default=None):
        section, _, key = dotted.partition(".")
        return self.values.get(section, {}).get(key, default)

    def describe(self) -> dict:
        """What metrics.json and adapters record about the recipe (the overrides are added by the caller)."""
        return {"name": self.name, "source": {**self.source, "files": self.files}, "notes": self.notes}


def recipe_methods() -> list[str]:
    """Methods with a shipped recipe file."""
    folder = resources.files(__package__)
    return sorted(p.name.removesuffix(".json") for p in folder.iterdir() if p.name.endswith(".json"))


def load_recipe_file(method: str) -> dict:
    """The raw recipe file of a method (``kgcoop+dip`` reads ``kgcoop``'s), checked for unknown keys."""
    base = method.partition("+")[0]
    if base not in recipe_methods():
        raise DipclipError(f"no recipe for method {method!r}; recipes exist for {', '.join(recipe_methods())}")
    raw = json.loads(resources.files(__package__).joinpath(f"{base}.json").read_text(encoding="utf-8"))
    _check(raw, base)
    return raw


def _check(raw: dict, name: str) -> None:
    where = f"recipe {name}.json"
    for section, keys in raw.get("defaults", {}).items():
        _check_section(section, keys, f"{where} defaults")
    missing = [p for p in RECIPE_PROTOCOLS if p not in raw.get("protocols", {})]
    if missing:
        raise DipclipError(f"{where} lacks protocol(s) {', '.join(missing)}")
    for protocol, body in raw["protocols"].items():
        unknown = set(body) - PROTOCOL_KEYS
        if unknown:
            raise DipclipError(f"{where} {protocol}: unknown key(s) {sorted(unknown)}")
        for section in SECTIONS:
            if section in body:
                _check_section(section, body[section], f"{where} {protocol}")
        shots = body.get("shots")
        if shots is not None and (isinstance(shots, bool) or not isinstance(shots, int) or shots < 1):
            raise DipclipError(f"{where} {protocol}: shots must be an integer >= 1, got {shots!r}")
        for rule in body.get("rules", []):
            if set(rule.get("when", {})) - {"dataset", "shots"}:
                raise DipclipError(f"{where} {protocol}: a rule's 'when' takes dataset and shots only")
            for dotted in rule.get("set", {}):
                section, _, key = dotted.partition(".")
                _check_section(section, {key: None}, f"{where} {protocol} rule")


def _check_section(section: str, keys: dict, where: str) -> None:
    if section not in SECTIONS:
        raise DipclipError(f"{where}: unknown section {section!r}; use {', '.join(SECTIONS)}")
    allowed = SECTIONS[section]
    if set(keys) - allowed:
        raise DipclipError(f"{where}: unknown {section} key(s) {sorted(set(keys) - allowed)}")


def _matches(when: dict, dataset: str | None, shots: int | None) -> bool:
    if "dataset" in when and dataset not in when["dataset"]:
        return False
    return not ("shots" in when and shots not in when["shots"])


def check_dataset_key(dataset: str, known: Sequence[str]) -> None:
    """Refuse a key that is not one of ``known`` (the data registry's): a recipe's dataset rules match keys
    exactly, so ``ImageNet`` or ``pets`` would silently get the default epochs."""
    if dataset in known:
        return
    near = ([k for k in known if k.lower() == dataset.lower()] or [k for k in known if dataset.lower() in k]
            or difflib.get_close_matches(dataset.lower(), known, n=1))
    hint = f" (did you mean {near[0]!r}?)" if near else ""
    raise DipclipError(f"--dataset: unknown dataset key {dataset!r}{hint}; use one of: {', '.join(known)}")


def resolve_recipe(method: str, protocol: str = "base2new", dataset: str | None = None,
                   shots: int | None = None, known_datasets: Sequence[str] | None = None) -> Recipe:
    """The recipe of ``method`` for ``protocol`` (``dg`` gives ``xd``'s), with its dataset and shot rules;
    with ``known_datasets``, ``dataset`` must be one of them."""
    if protocol not in PROTOCOL_OF:
        raise DipclipError(f"unknown recipe {protocol!r}; use {', '.join(RECIPE_PROTOCOLS)}")
    if dataset is not None and known_datasets is not None:
        check_dataset_key(dataset, known_datasets)
    raw = load_recipe_file(method)
    protocol = PROTOCOL_OF[protocol]
    body = raw["protocols"][protocol]
    values = copy.deepcopy(raw.get("defaults", {}))
    for section in SECTIONS:
        if section in body:
            values.setdefault(section, {}).update(copy.deepcopy(body[section]))
    notes = [body["why"]] if body.get("why") else []
    for rule in body.get("rules", []):
        if _matches(rule.get("when", {}), dataset, shots):
            for dotted, value in rule["set"].items():
                section, _, key = dotted.partition(".")
                values.setdefault(section, {})[key] = value
            if rule.get("why"):
                notes.append(rule["why"])
    if raw["source"].get("note"):
        notes.insert(0, raw["source"]["note"])
    source = {k: v for k, v in raw["source"].items() if k != "note"}
    return Recipe(method=method, protocol=protocol, values=values, source=source,
                  files=list(body.get("files", [])), notes=notes, shots=body.get("shots"))


def recipe_shots(method: str, protocol: str) -> int | None:
    """The shot count the authors' script trains ``method`` on for ``protocol`` (``dg`` gives ``xd``'s), or
    None where the recipe fixes none (the protocol's own default applies; few-shot sweeps its K list).
    ``zeroshot`` and any other method without a recipe file have none."""
    if protocol not in PROTOCOL_OF:
        raise DipclipError(f"unknown recipe {protocol!r}; use {', '.join(RECIPE_PROTOCOLS)}")
    if method.partition("+")[0] not in recipe_methods():
        return None
    return load_recipe_file(method)["protocols"][PROTOCOL_OF[protocol]].get("shots")


__all__ = ["PROTOCOL_OF", "RECIPE_PROTOCOLS", "Recipe", "load_recipe_file", "recipe_methods", "recipe_shots",
           "resolve_recipe"]
