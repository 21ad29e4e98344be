"""Edit a YAML parameters file the way a person would: change the values that changed.

People keep parameters files with comments, their own key order and their own quoting; a
write through the API that re-dumped the file would strip all of it and turn a one-line
change into a rewrite of the whole file (and a diff nobody can review). So a write here:

1. loads the current text with ruamel.yaml's round-trip loader (comments, key order and
   quote styles are kept on the loaded nodes) and changes only what differs from the new
   parameters: unchanged values stay the very same nodes, a changed string keeps its quote
   style, a new key goes at its sorted place in a mapping whose keys are sorted (else at
   the end), a removed key is removed;
2. dumps both the unchanged and the edited document with the same settings, and carries
   the difference between those two dumps onto the original text (a three-way line merge
   with the unchanged dump as the base). ruamel's output is close to the input but not
   byte-exact (it drops text before the document, normalises the indentation of
   sequences); lines the edit did not touch come from the original text, byte for byte;
3. checks that the result reads back as exactly the new parameters, and otherwise falls
   back to ruamel's own dump (then to a plain sorted dump): never a wrong file.

A file that is not a YAML mapping (empty, broken: a write may fix it) is written afresh.
"""

from __future__ import annotations

import difflib
import io
import math
from collections.abc import Mapping
from typing import Any

import yaml
from ruamel.yaml import YAML
from ruamel.yaml.comments import CommentedMap, CommentedSeq
from ruamel.yaml.error import YAMLError as RuamelError
from ruamel.yaml.scalarstring import ScalarString
from ruamel.yaml.util import load_yaml_guess_indent

# Long values stay on one line, as a person wrote them (ruamel folds at 80 by default).
_WIDTH = 1 << 16


def edit(original: str | None, params: Mapping[str, Any]) -> str:
    """The text of the parameters file holding `params`, as close to `original` as can be.

    `original` None (no file) or text that is not a YAML mapping gives a fresh dump."""
    plain = _plain(params)
    if original is not None:
        edited = _edit(original, plain)
        if edited is not None:
            return edited
    return fresh(plain)


def fresh(params: Mapping[str, Any]) -> str:
    """A new file: keys sorted, block style (what a first write has always produced)."""
    return yaml.safe_dump(_plain(params), sort_keys=True, default_flow_style=False,
                          allow_unicode=True)


def changed_paths(old: Any, new: Any, prefix: str = "") -> list[str]:
    """Dotted paths whose values differ between two plain documents, in document order:
    a key added or removed is its own path, a list that changed is the list's path."""
    if isinstance(old, Mapping) and isinstance(new, Mapping):
        out: list[str] = []
        for key in [*old, *(k for k in new if k not in old)]:
            path = f"{prefix}.{key}" if prefix else str(key)
            if key not in new or key not in old:
                out.append(path)
            else:
                out += changed_paths(old[key], new[key], path)
        return out
    return [] if _same(old, new) else [prefix or "."]


# -- the edit ---------------------------------------------------------------------------


def _edit(original: str, params: dict[str, Any]) -> str | None:
    try:
        _data, indent, offset = load_yaml_guess_indent(original)
        rt = _yaml(indent or 2, offset or 0)
        doc = rt.load(original)
        if not isinstance(doc, CommentedMap):
            return None
        base = _dump(rt, doc)
        _merge(doc, params)
        new = _dump(rt, doc)
    except (RuamelError, ValueError, TypeError):
        return None  # not YAML ruamel can keep: written afresh
    for candidate in (_three_way(original, base, new), new):
        if _reads_as(candidate, params):
            return candidate
    return None


def _yaml(indent: int, offset: int) -> YAML:
    rt = YAML(typ="rt")
    rt.preserve_quotes = True
    rt.width = _WIDTH
    rt.allow_unicode = True
    rt.indent(mapping=indent, sequence=max(indent, offset + 2), offset=offset)
    return rt


def _dump(rt: YAML, doc: Any) -> str:
    buf = io.StringIO()
    rt.dump(doc, buf)
    return buf.getvalue()


def _merge(old: Any, new: Any) -> Any:
    """`old` (round-trip nodes) changed in place into `new` where they differ; returns the
    node to store (the same one when nothing changed, so its comments and style stay)."""
    if isinstance(old, CommentedMap) and isinstance(new, Mapping):
        for key in [k for k in old if k not in new]:
            del old[key]
        ordered = _is_sorted(list(old))
        for key, value in new.items():
            if key in old:
                merged = _merge(old[key], value)
                if merged is not old[key]:
                    old[key] = merged
            elif ordered:
                old.insert(_sorted_position(list(old), key), key, value)
            else:
                old[key] = value
        return old
    if isinstance(old, CommentedSeq) and isinstance(new, list) and len(old) == len(new):
        for i, value in enumerate(new):
            merged = _merge(old[i], value)
            if merged is not old[i]:
                old[i] = merged
        return old
    if _same(old, new):
        return old
    if isinstance(new, str) and isinstance(old, ScalarString):
        return type(old)(new)  # "1.0" -> "2.0", not 2.0 nor '2.0': the quote style stays
    return new


def _is_sorted(keys: list[Any]) -> bool:
    names = [str(k) for k in keys]
    return names == sorted(names)  # one key (or none) is sorted too: a file we wrote


def _sorted_position(keys: list[Any], key: Any) -> int:
    return next((i for i, k in enumerate(keys) if str(k) > str(key)), len(keys))


def _same(a: Any, b: Any) -> bool:
    """Equal as YAML values: True is not 1, 1 is not 1.0, key order does not matter."""
    if isinstance(a, Mapping) and isinstance(b, Mapping):
        return a.keys() == b.keys() and all(_same(a[k], b[k]) for k in a)
    if isinstance(a, list | tuple) and isinstance(b, list | tuple):
        return len(a) == len(b) and all(_same(x, y) for x, y in zip(a, b, strict=True))
    if isinstance(a, bool) or isinstance(b, bool):
        return isinstance(a, bool) and isinstance(b, bool) and a == b
    if isinstance(a, int | float) and isinstance(b, int | float):
        if isinstance(a, float) and isinstance(b, float) and math.isnan(a) and math.isnan(b):
            return True
        return isinstance(a, int) == isinstance(b, int) and a == b
    if isinstance(a, str) and isinstance(b, str):
        return str(a) == str(b)  # a ScalarString (quoted) is the same string
    return type(a) is type(b) and bool(a == b)


def _three_way(original: str, base: str, new: str) -> str:
    """`original` with the changes from `base` to `new` (line-wise). Where the original
    differs from the base only in form, its lines are kept; where both differ, the
    change wins (those lines take ruamel's form)."""
    orig_lines = original.splitlines(keepends=True)
    base_lines = base.splitlines(keepends=True)
    new_lines = new.splitlines(keepends=True)
    to_orig = _line_map(base_lines, orig_lines)
    to_new = _line_map(base_lines, new_lines)
    out: list[str] = []
    b = o = n = 0  # the next unconsumed line of each
    for i in range(len(base_lines)):
        if i not in to_orig or i not in to_new:
            continue
        out += _gap(base_lines[b:i], orig_lines[o:to_orig[i]], new_lines[n:to_new[i]])
        out.append(orig_lines[to_orig[i]])
        b, o, n = i + 1, to_orig[i] + 1, to_new[i] + 1
    out += _gap(base_lines[b:], orig_lines[o:], new_lines[n:])
    return "".join(out)


def _line_map(a: list[str], b: list[str]) -> dict[int, int]:
    """Line i of `a` -> its line in `b`, for the lines the two have in common."""
    out: dict[int, int] = {}
    matcher = difflib.SequenceMatcher(None, a, b, autojunk=False)
    for block in matcher.get_matching_blocks():
        for k in range(block.size):
            out[block.a + k] = block.b + k
    return out


def _gap(base: list[str], orig: list[str], new: list[str]) -> list[str]:
    if new == base:
        return orig  # unchanged here: the original's own lines (comments, form)
    if orig == base:
        return new
    if not base:
        return orig + new  # text only the original has (a leading comment), then the new
    return new


def _reads_as(text: str, params: dict[str, Any]) -> bool:
    try:
        return _same(yaml.safe_load(text), params)
    except yaml.YAMLError:
        return False


def _plain(value: Any) -> Any:
    """Mappings and sequences as dict and list, which is what the dumpers can write."""
    if isinstance(value, Mapping):
        return {k: _plain(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [_plain(v) for v in value]
    return value
