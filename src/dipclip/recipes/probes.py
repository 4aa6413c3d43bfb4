"""Published recipes of the feature-space methods (``recipes/probes/METHOD.json``), one file per method.

A file holds ``method``, ``summary``, ``source`` (repository, commit, files), ``defaults`` with the sections
``optim`` (optimizer, lr, ... as for prompts, plus ``eps`` and ``schedule``), ``train`` (epochs, batch_size) and
``head`` (the method's own hyperparameters), an optional ``search`` (the grid its hyperparameter search walks and
the split it runs on), ``protocols`` (the protocols the method can do, each with optional section overrides and
``rules`` as in the prompt recipes) and ``notes`` (every deliberate deviation and its reason). A protocol absent
from ``protocols`` is one the method cannot do.
"""

from __future__ import annotations

import copy
import json
from importlib import resources

from ..errors import DipclipError
from . import PROTOCOL_OF, Recipe, _matches

SECTIONS = ("optim", "train", "head")
# the keys a recipe may set per section (head keys are checked against the method's own settings when used)
OPTIM_KEYS = {"optimizer", "lr", "momentum", "weight_decay", "warmup_epochs", "warmup_lr", "eps", "schedule",
              "eta_min"}
TRAIN_KEYS = {"epochs", "batch_size", "crop_scale"}
ALLOWED = {"optim": OPTIM_KEYS, "train": TRAIN_KEYS}
PROTOCOL_BODY_KEYS = {"files", "shots", "rules", *SECTIONS}


def probe_recipe_methods() -> list[str]:
    folder = resources.files(__package__).joinpath("probes")
    if not folder.is_dir():
        return []
    return sorted(p.name.removesuffix(".json") for p in folder.iterdir() if p.name.endswith(".json"))


def load_probe_recipe_file(method: str) -> dict:
    if method not in probe_recipe_methods():
        raise DipclipError(f"no recipe for feature method {method!r}; recipes exist for "
                           f"{', '.join(probe_recipe_methods()) or 'none'}")
    text = resources.files(__package__).joinpath("probes", f"{method}.json").read_text(encoding="utf-8")
    raw = json.loads(text)
    where = f"recipe probes/{method}.json"
    for key in ("method", "source", "defaults", "protocols"):
        if key not in raw:
            raise DipclipError(f"{where} lacks {key!r}")
    for section, values in raw["defaults"].items():
        _check_section(where, section, values)
    unknown = set(raw["protocols"]) - set(PROTOCOL_OF)
    if unknown:
        raise DipclipError(f"{where}: unknown protocol(s) {sorted(unknown)}")
    for protocol, body in raw["protocols"].items():
        extra = set(body) - PROTOCOL_BODY_KEYS
        if extra:
            raise DipclipError(f"{where} {protocol}: unknown key(s) {sorted(extra)}")
        for section in SECTIONS:
            if section in body:
                _check_section(f"{where} {protocol}", section, body[section])
        for rule in body.get("rules", []):
            for dotted in rule.get("set", {}):
                section, _, key = dotted.partition(".")
                _check_section(f"{where} {protocol} rule", section, {key: None})
    return raw


def _check_section(where: str, section: str, values: dict) -> None:
    if section not in SECTIONS:
        raise DipclipError(f"{where}: unknown section {section!r}; use {', '.join(SECTIONS)}")
    if not isinstance(values, dict):
        raise DipclipError(f"{where}: {section} must be an object")
    unknown = set(values) - ALLOWED.get(section, set(values))
    if unknown:
        raise DipclipError(f"{where}: unknown {section} key(s) {sorted(unknown)}")


def probe_protocols(method: str) -> list[str]:
    """The protocols a feature method's recipe declares (``dg`` follows ``xd``)."""
    declared = set(load_probe_recipe_file(method)["protocols"])
    return [p for p in PROTOCOL_OF if p in declared or (p == "dg" and "xd" in declared)]


def resolve_probe_recipe(method: str, protocol: str = "fewshot", dataset: str | None = None,
                         shots: int | None = None) -> Recipe:
    """The resolved recipe of a feature method for ``protocol``; a protocol it cannot do is refused."""
    raw = load_probe_recipe_file(method)
    key = protocol if protocol in raw["protocols"] else PROTOCOL_OF.get(protocol, protocol)
    if key not in raw["protocols"]:
        raise DipclipError(f"{method} cannot run the {protocol} protocol (its authors' recipe covers "
                           f"{', '.join(raw['protocols'])} only)")
    body = raw["protocols"][key] or {}
    values = copy.deepcopy(raw["defaults"])
    for section in SECTIONS:
        if section in body:
            values.setdefault(section, {}).update(copy.deepcopy(body[section]))
    notes = list(raw.get("notes", []))
    for rule in body.get("rules", []):
        if _matches(rule.get("when", {}), dataset, shots):
            for dotted, value in rule["set"].items():
                section, _, name = dotted.partition(".")
                values.setdefault(section, {})[name] = value
            if rule.get("why"):
                notes.append(rule["why"])
    templates = raw.get("templates", {})
    if dataset in templates:  # the authors' own templates for this dataset
        values.setdefault("head", {})["templates"] = list(templates[dataset])
    source = dict(raw["source"])
    files = list(source.pop("files", []))
    return Recipe(method=method, protocol=key, values=values, source=source, files=files, notes=notes,
                  shots=body.get("shots"))
