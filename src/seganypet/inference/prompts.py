"""The ``prompts.json`` format of ``seganypet segment`` and applying prompts to a :class:`Session`.

Schema (JSON)::

    {
      "objects": [
        {
          "name": "lesion 1",
          "prompts": [
            {"point": [i, j, k]},                       # positive click, input voxel indices
            {"point": [i, j, k], "positive": false},    # negative (correction) click
            {"point_mm": [x, y, z], "positive": true},  # a click in RAS millimetres
            {"box": [[i0, j0, k0], [i1, j1, k1]]}       # two opposite corner voxels (inclusive)
          ]
        }
      ]
    }

A bare list of objects is accepted too. Objects become labels 1, 2, ... in file order; each object's
prompts are applied in order (as a user would click). Names must be unique and non-empty (a missing
name becomes ``"object <n>"``).
"""

from __future__ import annotations

import json
import math
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from seganypet.errors import PromptError


@dataclass
class Prompt:
    """One prompt: ``kind`` is ``"point"`` (``ijk``, ``positive``), ``"point_mm"`` (``xyz``,
    ``positive``) or ``"box"`` (``corners``)."""

    kind: str
    coords: tuple[float, ...]
    positive: bool = True

    def to_json(self) -> dict[str, Any]:
        if self.kind == "box":
            return {"box": [list(self.coords[:3]), list(self.coords[3:])]}
        return {self.kind: list(self.coords), "positive": self.positive}


@dataclass
class ObjectPrompts:
    name: str | None
    prompts: list[Prompt] = field(default_factory=list)


def _numbers(value: Any, n: int, where: str) -> tuple[float, ...]:
    if isinstance(value, (list, tuple)) and n == 6 and len(value) == 2:
        value = [*value[0], *value[1]] if all(isinstance(v, (list, tuple)) for v in value) else value
    if not isinstance(value, (list, tuple)) or len(value) != n:
        raise PromptError(f"{where} needs {n} numbers, got {value!r}.")
    out = []
    for v in value:
        if isinstance(v, bool) or not isinstance(v, (int, float)) or not math.isfinite(v):
            raise PromptError(f"{where} needs {n} finite numbers, got {value!r}.")
        out.append(float(v))
    return tuple(out)


def parse_prompt(item: Any, where: str) -> Prompt:
    """One prompt from its JSON form (see the module docstring)."""
    if not isinstance(item, dict):
        raise PromptError(f'{where} must be an object like {{"point": [i, j, k]}}, got {item!r}.')
    kinds = [k for k in ("point", "point_mm", "box") if k in item]
    if len(kinds) != 1:
        raise PromptError(f"{where} must have exactly one of 'point', 'point_mm' or 'box'.")
    unknown = set(item) - {"point", "point_mm", "box", "positive"}
    if unknown:
        raise PromptError(f"{where} has unknown field(s) {', '.join(sorted(unknown))}.")
    kind = kinds[0]
    positive = item.get("positive", True)
    if not isinstance(positive, bool):
        raise PromptError(f"{where}: 'positive' must be true or false.")
    if kind == "box":
        if "positive" in item:
            raise PromptError(f"{where}: a box has no 'positive' field.")
        return Prompt("box", _numbers(item["box"], 6, f"{where} box"))
    return Prompt(kind, _numbers(item[kind], 3, f"{where} {kind}"), positive)


def parse_prompts(data: Any) -> list[ObjectPrompts]:
    """Objects from the parsed JSON of a prompts file."""
    if isinstance(data, dict):
        if set(data) - {"objects"}:
            raise PromptError(
                'A prompts file holds {"objects": [...]}; other top-level fields are not known.'
            )
        data = data.get("objects")
    if not isinstance(data, list) or not data:
        raise PromptError('A prompts file must list at least one object under "objects".')
    out = []
    seen: set[str] = set()
    for n, obj in enumerate(data, 1):
        where = f"Object {n} of the prompts file"
        if not isinstance(obj, dict):
            raise PromptError(f"{where} must be an object with 'name' and 'prompts'.")
        unknown = set(obj) - {"name", "prompts"}
        if unknown:
            raise PromptError(f"{where} has unknown field(s) {', '.join(sorted(unknown))}.")
        name = obj.get("name")
        if name is not None and (not isinstance(name, str) or not name.strip()):
            raise PromptError(f"{where} has an empty or non-text name.")
        if name is not None:
            if name.strip() in seen:
                raise PromptError(f"Two objects of the prompts file are named {name.strip()!r}.")
            seen.add(name.strip())
        prompts = obj.get("prompts")
        if not isinstance(prompts, list) or not prompts:
            raise PromptError(f"{where} needs a non-empty 'prompts' list.")
        parsed = [parse_prompt(p, f"Prompt {m} of object {n}") for m, p in enumerate(prompts, 1)]
        if parsed[0].kind != "box" and not parsed[0].positive:
            raise PromptError(f"The first prompt of object {n} must be positive.")
        out.append(ObjectPrompts(name.strip() if name else None, parsed))
    return out


def load_prompts(path: str | os.PathLike[str]) -> list[ObjectPrompts]:
    """Read and validate a prompts file."""
    p = Path(path)
    try:
        text = p.read_text(encoding="utf-8")
    except OSError as err:
        raise PromptError(f"Cannot read the prompts file {p}: {err.strerror or err}.") from None
    try:
        data = json.loads(text)
    except json.JSONDecodeError as err:
        raise PromptError(f"The prompts file {p} is not valid JSON (line {err.lineno}: {err.msg}).") from None
    return parse_prompts(data)


def apply_prompt(session: Any, prompt: Prompt) -> Any:
    """Apply one prompt to the session's active object; returns the mask."""
    if prompt.kind == "point":
        return session.add_point(prompt.coords, prompt.positive)
    if prompt.kind == "point_mm":
        ijk = session.image.mm_to_ijk(prompt.coords)
        return session.add_point([float(v) for v in ijk], prompt.positive)
    return session.add_box(prompt.coords[:3], prompt.coords[3:])
