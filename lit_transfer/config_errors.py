"""Configuration errors in a line or two: the key, what is wrong and what is valid.

jsonargparse reports a bad value inside a ``class_path``/``init_args`` section as a failed match against every type
of a Union, with the whole namespace printed after it; the useful sentence is one of a dozen lines. This module
keeps that sentence, names the key, and adds the closest valid names to unknown ones.
"""

from __future__ import annotations

import difflib
import importlib
import inspect
import re
from collections.abc import Iterable

_NOISE = (
    re.compile(r"^Does not validate against any of the Union subtypes"),
    re.compile(r"^Subtypes: "),
    re.compile(r"^Errors:$"),
    re.compile(r"^- Expected a <class 'NoneType'>"),
    re.compile(r"^Given value type: "),
    re.compile(r"^Given value: "),
    re.compile(r"^tip: For details of accepted options"),
    re.compile(r"^Validation failed: "),
)
_KEY = re.compile(r'Parser key "([^"]+)"')
_CLASS_PATH = re.compile(r"Problem with given class_path '([^']+)'")
_UNKNOWN_OPTION = re.compile(r"""(?:Option '([^']+)' is not accepted|No action for key "([^"]+)")""")
_UNRECOGNIZED = re.compile(r"unrecognized arguments: (\S+)")
_GIVEN = re.compile(r"^\s*Given value: (.+)$", re.MULTILINE)


def class_options(class_path: str) -> list[str]:
    """The ``init_args`` names a class accepts, or none if it cannot be imported.

    Its ``__init__`` parameters and, where it takes ``**kwargs`` (passed on to ``super().__init__``, as the data
    modules do), those of the base classes after it, as jsonargparse resolves them.
    """
    module, _, name = class_path.rpartition(".")
    try:
        cls = getattr(importlib.import_module(module), name)
    except (ImportError, AttributeError, ValueError, TypeError):
        return []
    names: list[str] = []
    for klass in cls.__mro__:
        if "__init__" not in vars(klass) or klass is object:
            continue
        try:
            parameters = inspect.signature(klass.__init__).parameters.values()
        except (ValueError, TypeError):
            break
        skip = (inspect.Parameter.VAR_POSITIONAL, inspect.Parameter.VAR_KEYWORD)
        names += [p.name for p in parameters if p.name != "self" and p.kind not in skip and p.name not in names]
        if not any(p.kind is inspect.Parameter.VAR_KEYWORD for p in parameters):
            break
    return names


def _did_you_mean(name: str, valid: Iterable[str]) -> str:
    close = difflib.get_close_matches(name, list(valid), n=3, cutoff=0.6)
    return f"; did you mean {' or '.join(repr(c) for c in close)}?" if close else ""


def explain(message: str, options: Iterable[str] = ()) -> str:
    """A short account of a jsonargparse error ``message``; ``options`` are the command's flags, for did-you-mean."""
    keys = _KEY.findall(message)
    class_paths = _CLASS_PATH.findall(message)
    # nested keys: "data" → class_path → "image_size" is data.init_args.image_size
    key = ".init_args.".join(keys) if class_paths else ".".join(keys) or None
    unknown = _UNKNOWN_OPTION.search(message)
    if unknown:
        name = unknown.group(1) or unknown.group(2)
        owner = class_paths[-1] if class_paths else None
        valid = class_options(owner) if owner else []
        where = f"{key}.init_args.{name}" if key and owner and len(keys) == 1 else f"{key}.{name}" if key else name
        text = f"unknown key {where}"
        if owner:
            text += f": {owner.rpartition('.')[2]} has no option {name!r}"
        text += _did_you_mean(name, valid)
        if valid:
            text += f" Valid options: {', '.join(valid)}"
        return text
    unrecognized = _UNRECOGNIZED.search(message)
    if unrecognized:
        flag = unrecognized.group(1)
        hint = _did_you_mean(flag, options)
        return f"unknown option {flag}{hint or '; run with --help to list the options'}"
    kept = []
    for line in message.splitlines():
        line = line.strip()
        if not line or any(p.search(line) for p in _NOISE) or _KEY.fullmatch(line.removesuffix(":")):
            continue
        line = line.removeprefix("- ").strip()
        if line.startswith("Problem with given class_path") and line.endswith(":"):
            continue
        kept.append(line)
    text = " ".join(kept) if kept else message.strip()
    given = [v.strip() for v in _GIVEN.findall(message) if not v.strip().startswith(("NestedArg", "Namespace"))]
    if given and given[0] not in text:  # an Optional type: the value is only on the filtered "Given value" line
        text += f", not {given[0]!r}"
    return f"{key}: {text}" if key and not text.startswith(key) else text
