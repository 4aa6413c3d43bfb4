"""Argument checks of the Python API, run before anything is loaded.

The command line's argparse types already give ints, floats and lists; a Python caller can pass anything,
and a wrong type found after the backbone loaded (``epochs=2.5``) or never found (``classnames="bag"``,
read as the classes 'b', 'a', 'g') costs a run or gives a wrong number. :func:`checked` wraps each public
function of :mod:`dipclip.api`: every argument the caller passed is checked by its name (one table for all
functions), ``None`` only where the parameter's type or default allows it, and a path given as
``os.PathLike`` is passed on as ``str`` (``metrics.json`` records it). Ranges that a config owns (``lr > 0``,
a crop share in (0, 1]) are left to that config, so each is refused in one place with one wording.

Also here, because the data checks (:mod:`dipclip.data.validate`) and the command line share them: what
CLIP's tokenizer makes of a class name (:func:`tokenizer_text`), class lists, templates and seeds.
"""

from __future__ import annotations

import functools
import html
import inspect
import math
import os
import string
from collections.abc import Callable, Sequence
from typing import Any

from .errors import DipclipError

SEED_MAX = 2**32 - 1  # numpy's seed range, so Dassl's seeding takes it; seed * 100003 + epoch stays in 64 bits
SPLIT_NAMES = ("train", "val", "test")
SUBSAMPLES = ("all", "base", "new")
TEMPLATE_EXAMPLE = "a photo of a {}."


# ----------------------------------------------------------------------------------------------------
# One value


def _kind(value: object) -> str:
    return type(value).__name__


def whole_number(name: str, value: object, minimum: int | None = None) -> int:
    """An ``int`` (not a bool, not a float with an integer value: refused alike, so 2.0 and 2.5 agree)."""
    if isinstance(value, bool) or not isinstance(value, int):
        example = int(value) if isinstance(value, float) and math.isfinite(value) else (minimum or 1)
        raise DipclipError(f"{name} must be a whole number (an int), got {value!r} ({_kind(value)}); "
                           f"pass e.g. {name}={max(example, minimum or example)}")
    if minimum is not None and value < minimum:
        raise DipclipError(f"{name} must be >= {minimum}, got {value}; pass e.g. {name}={minimum}")
    return value


def real_number(name: str, value: object, finite: bool = True) -> float | int:
    """An int or float (not a bool, not a string); finite unless the config that owns it says so itself."""
    if isinstance(value, bool) or not isinstance(value, int | float):
        raise DipclipError(f"{name} must be a number, got {value!r} ({_kind(value)}); pass an int or a float")
    if finite and not math.isfinite(value):
        raise DipclipError(f"{name} must be a finite number, got {value!r}; pass a finite value")
    return value


def flag(name: str, value: object) -> bool:
    """``True`` or ``False``: a truthy string such as ``"no"`` would silently mean yes."""
    if not isinstance(value, bool):
        raise DipclipError(f"{name} must be True or False, got {value!r} ({_kind(value)})")
    return value


def text(name: str, value: object) -> str:
    if not isinstance(value, str):
        raise DipclipError(f"{name} must be a str, got {value!r} ({_kind(value)})")
    return value


def path(name: str, value: object) -> str:
    """A non-empty path as ``str`` (``os.PathLike`` accepted, so that ``metrics.json`` can record it)."""
    if isinstance(value, os.PathLike):
        value = os.fspath(value)
    if not isinstance(value, str) or not value:
        raise DipclipError(f"{name} must be a path (a str or pathlib.Path), got {value!r} ({_kind(value)})")
    return value


def choice(name: str, value: object, choices: Sequence[str]) -> str:
    if not isinstance(value, str) or value not in choices:
        raise DipclipError(f"{name} must be one of {', '.join(choices)}, got {value!r}")
    return value


def seed(name: str, value: object) -> int:
    """A seed every random generator of a run takes: 0 to 2**32 - 1 (numpy's and so Dassl's range)."""
    if isinstance(value, bool) or not isinstance(value, int) or not 0 <= value <= SEED_MAX:
        raise DipclipError(f"{name} must be a whole number from 0 to {SEED_MAX} (the seeds numpy and Dassl take), "
                           f"got {value!r}; pass e.g. {name}=1")
    return value


def string_list(name: str, value: object) -> list[str]:
    """A list (or tuple) of strings; a single ``str`` is refused, since iterating it gives its letters."""
    if isinstance(value, str):
        raise DipclipError(f"{name} must be a list of strings, got the str {value!r} (it would be read letter by "
                           f"letter); pass [{value!r}]")
    if not isinstance(value, list | tuple) or not all(isinstance(item, str) for item in value):
        raise DipclipError(f"{name} must be a list of strings, got {value!r:.80} ({_kind(value)})")
    return list(value)


def path_list(name: str, value: object) -> list[str]:
    if isinstance(value, str | os.PathLike):
        raise DipclipError(f"{name} must be a list of paths, got the single path {os.fspath(value)!r}; pass "
                           f"[{os.fspath(value)!r}]")
    if not isinstance(value, list | tuple):
        raise DipclipError(f"{name} must be a list of paths, got {value!r:.80} ({_kind(value)})")
    return [path(f"{name}[{i}]", item) for i, item in enumerate(value)]


def number_table(name: str, value: object) -> dict:
    """``{option: value}`` (``method_options``): numbers for prompt methods; feature methods also take switches,
    names and lists of numbers. The option names and their types are checked by the method's settings."""
    if not isinstance(value, dict) or not all(isinstance(key, str) for key in value):
        raise DipclipError(f"{name} must be a dict of option name -> number, got {value!r:.80}")
    for key, number in value.items():
        if isinstance(number, str):  # feature methods' names (covariance="ks"); a number as text is a mistake
            try:
                float(number)
            except ValueError:
                continue
        if number is None or isinstance(number, bool):  # feature methods' switches
            continue
        if isinstance(number, list | tuple):  # a feature method's grid (Tip-Adapter's search steps)
            for i, item in enumerate(number):
                if not isinstance(item, str):
                    real_number(f"{name}[{key!r}][{i}]", item, finite=False)
            continue
        real_number(f"{name}[{key!r}]", number, finite=False)  # the method config says what is finite
    return value


# ----------------------------------------------------------------------------------------------------
# Class names as CLIP's tokenizer sees them


@functools.cache
def _pretokenizer():
    import ftfy
    import regex

    # open_clip.tokenizer.SimpleTokenizer: clean='lower' (ftfy, HTML entities twice, whitespace, lower case),
    # then this pattern; each piece is BPE-encoded on its own, so equal pieces give equal token ids and back.
    pattern = regex.compile(r"""<start_of_text>|<end_of_text>|'s|'t|'re|'ve|'m|'ll|'d|[\p{L}]+|[\p{N}]|"""
                            r"""[^\s\p{L}\p{N}]+""", regex.IGNORECASE)
    return ftfy.fix_text, pattern


def tokenizer_text(name: str) -> tuple[str, ...]:
    """The pieces CLIP's BPE tokenizer encodes for class name ``name`` (``_`` shown as a space, as prompts
    do): two names with the same pieces get the same token ids, so the text encoder cannot tell them apart
    (case, spacing, Unicode forms such as fullwidth letters, ligatures and HTML entities do not count)."""
    fix_text, pattern = _pretokenizer()
    cleaned = html.unescape(html.unescape(fix_text(name.replace("_", " ")))).strip()
    return tuple(pattern.findall(" ".join(cleaned.split()).lower()))


def classname_problem(names: Sequence[str]) -> str | None:
    """What is wrong with a class list, as words that follow its name ("names several classes 'cat'; ..."):
    an empty name, or names the tokenizer reads alike; ``None`` when nothing is."""
    keys = [tokenizer_text(name) for name in names]
    empty = [i for i, key in enumerate(keys) if not key]
    if empty:
        more = f" ({len(empty) - 1} more are)" if len(empty) > 1 else ""
        return f"names class {empty[0]} {names[empty[0]]!r}, which is empty to CLIP's tokenizer{more}"
    seen: dict[tuple[str, ...], list[str]] = {}
    for name, key in zip(names, keys, strict=True):
        seen.setdefault(key, []).append(name)
    same = [group for group in seen.values() if len(group) > 1]
    if not same:
        return None
    group = same[0]
    more = f" ({len(same) - 1} more such group(s))" if len(same) > 1 else ""
    if len(set(group)) == 1:
        return f"names several classes {group[0]!r}{more}; class names must be unique"
    return (f"names classes {' and '.join(map(repr, dict.fromkeys(group)))} that CLIP's tokenizer reads as the "
            f"same text {' '.join(tokenizer_text(group[0]))!r}{more}; class names must be unique to the tokenizer "
            "(case, spacing, Unicode forms and HTML entities do not count)")


def class_names(name: str, value: object) -> list[str]:
    """A list of class names, none empty, no two alike to the tokenizer."""
    names = string_list(name, value)
    if not names:
        raise DipclipError(f"{name} is empty; give at least one class name")
    problem = classname_problem(names)
    if problem is not None:
        raise DipclipError(f"{name} {problem}: rename or drop that class")
    return names


# ----------------------------------------------------------------------------------------------------
# Templates


def template(name: str, value: object) -> str:
    """A template with exactly one ``{}`` where the class name goes; ``{{`` and ``}}`` are literal braces."""
    value = text(name, value)
    try:
        fields = [(field, spec, conversion) for _, field, spec, conversion in string.Formatter().parse(value)
                  if field is not None]
    except ValueError:
        raise DipclipError(f"{name} {value!r} has an unmatched brace; write a literal brace as '{{{{' or '}}}}' and "
                           f"the class name's place as {{}} (e.g. {TEMPLATE_EXAMPLE!r})") from None
    if not fields:
        raise DipclipError(f"{name} {value!r} has no {{}} where the class name goes; e.g. {TEMPLATE_EXAMPLE!r}")
    if len(fields) > 1:
        raise DipclipError(f"{name} {value!r} has {len(fields)} slots; give exactly one {{}}, where the class name "
                           f"goes (e.g. {TEMPLATE_EXAMPLE!r})")
    if fields[0] != ("", "", None):
        raise DipclipError(f"{name} {value!r} uses a named or formatted slot; write the class name's place as a plain "
                           f"{{}} (e.g. {TEMPLATE_EXAMPLE!r})")
    return value


def template_list(name: str, value: object) -> list[str]:
    values = string_list(name, value)
    if not values:
        raise DipclipError(f"{name} is empty; give at least one template such as {TEMPLATE_EXAMPLE!r}, or None")
    return [template(f"{name}[{i}]", item) for i, item in enumerate(values)]


# ----------------------------------------------------------------------------------------------------
# The API's arguments, by name


def _whole(minimum: int) -> Callable[[str, object], int]:
    return lambda name, value: whole_number(name, value, minimum)


def _choice(choices: Sequence[str]) -> Callable[[str, object], str]:
    return lambda name, value: choice(name, value, choices)


def _entries(name: str, value: object) -> dict:
    """A dict of further arguments (``prompt_overrides``, ``train_options``), each checked by its name."""
    if not isinstance(value, dict):
        raise DipclipError(f"{name} must be a dict of argument name -> value, got {value!r:.80}")
    return {key: check_argument(key, entry, none_allowed=True) for key, entry in value.items()}


CHECKS: dict[str, Callable[[str, object], Any]] = {
    **{key: _whole(1) for key in ("shots", "epochs", "batch_size", "n_ctx", "rank", "id_k", "prompt_depth",
                                  "density_k", "top_k", "k")},
    **{key: _whole(0) for key in ("eval_every", "workers")},
    "lr": functools.partial(real_number, finite=False),  # OptimConfig refuses a non-finite or negative lr
    **{key: real_number for key in ("dip_dropout", "lambda_do", "lambda_pp", "prograd_lambda", "gpa_mean",
                                    "gpa_std", "crop_scale")},
    **{key: flag for key in ("random_init", "class_specific", "vision_dip", "skip_bad_images", "resume",
                             "progress", "feature_cache", "ensemble", "energy")},
    **{key: text for key in ("method", "recipe", "optimizer", "init_text", "class_position", "dip_init", "prompt",
                             "device", "dataset")},
    **{key: path for key in ("data", "model", "pretrained", "adapter", "out")},
    "subsample": _choice(SUBSAMPLES),
    "split": _choice(SPLIT_NAMES),
    "seed": seed,
    "classnames": class_names,
    "template": template,
    "templates": template_list,
    "images": path_list,
    "method_options": number_table,
    "prompt_overrides": _entries,
    "train_options": _entries,
}


def check_argument(name: str, value: object, none_allowed: bool) -> object:
    """``value`` checked (and a path made ``str``) by the rule for ``name``; names without one pass as given."""
    if value is None and none_allowed:
        return None
    rule = CHECKS.get(name)
    if rule is None:
        return value
    if value is None:
        raise DipclipError(f"{name} cannot be None; give a value (or leave it out where it has a default)")
    return rule(name, value)


def checked(function):
    """Check the arguments a caller passed to ``function`` (see the module docstring) before it runs."""
    signature = inspect.signature(function)

    @functools.wraps(function)
    def wrapper(*args, **kwargs):
        bound = signature.bind(*args, **kwargs)
        for name, value in bound.arguments.items():
            parameter = signature.parameters[name]
            if parameter.kind is inspect.Parameter.VAR_KEYWORD:
                bound.arguments[name] = {key: check_argument(key, entry, none_allowed=True)
                                         for key, entry in value.items()}
            else:
                none_allowed = parameter.default is None or "None" in str(parameter.annotation)
                bound.arguments[name] = check_argument(name, value, none_allowed)
        return function(*bound.args, **bound.kwargs)

    return wrapper
