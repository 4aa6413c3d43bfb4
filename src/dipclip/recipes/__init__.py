"""Published training recipes as data: one JSON file per method, like open_clip's model configs.

Each file holds, per protocol (``base2new``, ``fewshot``, ``xd``; ``dg`` evaluates the ``xd`` model), every
value the authors' config files and scripts set, and names its source (repository, commit, files). A
recipe is resolved for a protocol, a dataset and a shot count: protocol values override the file's
``defaults``, then each matching rule (``when`` dataset / shots) sets dotted keys (``train.epochs``).

Sections map onto the run's configuration: ``train`` (epochs, batch_size), ``optim`` (optimizer, lr,
momentum, weight_decay, warmup_epochs, warmup_lr), ``prompt`` (n_ctx, init_text: ``null`` for a random
context, class_position, class_specific, prompt_depth) and ``method`` (the method's own loss weights).
"""

from __future__ import annotations

import copy
import json
from dataclasses import dataclass, field
from importlib import resources

from ..errors import DipclipError

RECIPE_PROTOCOLS = ("base2new", "fewshot", "xd")
PROTOCOL_OF = {"base2new": "base2new", "fewshot": "fewshot", "xd": "xd", "dg": "xd"}
SECTIONS = {
    "train": {"epochs", "batch_size"},
    "optim": {"optimizer", "lr", "momentum", "weight_decay", "warmup_epochs", "warmup_lr"},
    "prompt": {"n_ctx", "init_text", "class_position", "class_specific", "prompt_depth"},
    "method": None,  # checked by the method itself (its options)
}
PROTOCOL_KEYS = {"files", "why", "rules", *SECTIONS}


@dataclass(frozen=True)
class Recipe:
    """A resolved recipe: the values a run starts from, and where each came from."""

    method: str
    protocol: str
    values: dict  # section -> {key: value}
    source: dict
    files: list[str]
    notes: list[str] = field(default_factory=list)

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
    if allowed is not None and set(keys) - allowed:
        raise DipclipError(f"{where}: unknown {section} key(s) {sorted(set(keys) - allowed)}")


def _matches(when: dict, dataset: str | None, shots: int | None) -> bool:
    if "dataset" in when and dataset not in when["dataset"]:
        return False
    return not ("shots" in when and shots not in when["shots"])


def resolve_recipe(method: str, protocol: str = "base2new", dataset: str | None = None,
                   shots: int | None = None) -> Recipe:
    """The recipe of ``method`` for ``protocol`` (``dg`` gives ``xd``'s), with its dataset and shot rules."""
    if protocol not in PROTOCOL_OF:
        raise DipclipError(f"unknown recipe {protocol!r}; use {', '.join(RECIPE_PROTOCOLS)}")
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
                  files=list(body.get("files", [])), notes=notes)


__all__ = ["PROTOCOL_OF", "RECIPE_PROTOCOLS", "Recipe", "load_recipe_file", "recipe_methods", "resolve_recipe"]
