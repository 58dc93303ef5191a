"""The strict config base every apv-hub config is built on, and the one override grammar.

A config is a class deriving from `Config` (which makes every subclass a dataclass, so a
subclass only declares fields). Its fields are documented once, with `option`;
their type hints are enforced on construction, on loading and on every override, and each class
validates its ranges in ``validate``. The same machinery serves every config and command:

- ``to_dict`` / ``from_dict`` / ``save`` / ``load``: JSON round trips that name unknown and
  missing fields (a file must name every field, so a checkpoint never picks up a default it was
  not trained with; fields added later have a ``LEGACY`` value that files without them meant);
- ``preset(name, **overrides)``: named settings from the class's ``PRESETS`` registry, where a
  nested section may be given as ``{"preset": name, **overrides}``;
- ``override({"a.b.c": value})``: the ``--set a.b.c=VALUE`` grammar of every command, where
  VALUE is JSON (numbers, true/false, null, lists, objects) and anything that is not JSON is a
  bare string; a comma-separated bare string sets a list field (``--set x=4,4,4``);
- ``fields_help()``: every field's dotted key, type, default and help, for ``--help`` texts.

Types are strict: a bool field takes only true/false, a number field refuses strings and
non-finite values, an int field takes integral floats (``1e5``) but not fractions.
"""

from __future__ import annotations

import dataclasses
import functools
import json
import math
import types
import typing
from collections.abc import Mapping
from pathlib import Path
from typing import Any, ClassVar, TypeVar

from apv_hub.errors import ApvHubError

C = TypeVar("C", bound="Config")


class ConfigError(ApvHubError, ValueError):
    """A config, config file or override that does not describe a valid configuration."""

    exit_code = 2


def option(
    default: Any = dataclasses.MISSING,
    help: str = "",
    *,
    factory: Any = dataclasses.MISSING,
    resumable: bool = False,
) -> Any:
    """A documented config field. ``factory`` builds mutable defaults; ``resumable`` marks
    schedule and output fields that ``--resume`` may change (they decide what is recorded or how
    long a run lasts, never what or how a model learns)."""
    metadata = {"help": help, "resumable": resumable}
    if factory is not dataclasses.MISSING:
        return dataclasses.field(default_factory=factory, metadata=metadata)
    return dataclasses.field(default=default, metadata=metadata)


@dataclasses.dataclass
class Config:
    """Base of every config: typed fields, validation, presets, JSON and overrides."""

    PRESETS: ClassVar[dict[str, dict[str, Any]]] = {}
    # Fields added after files of this config were first written, with the value that a file
    # without the field meant (what the code did before the field existed).
    LEGACY: ClassVar[dict[str, Any]] = {}

    def __init_subclass__(cls, **kwargs: Any) -> None:
        super().__init_subclass__(**kwargs)
        dataclasses.dataclass(cls)

    def __post_init__(self) -> None:
        hints = type_hints(type(self))
        for f in dataclasses.fields(self):
            value = coerce(getattr(self, f.name), hints[f.name], f.name)
            object.__setattr__(self, f.name, value)
        self.validate()

    def validate(self) -> None:
        """Check ranges and relations between fields; raise ConfigError naming the field."""

    # Dicts and files ----------------------------------------------------------------------------

    def to_dict(self) -> dict[str, Any]:
        """Every field, sections as nested dicts, tuples as lists (JSON-ready)."""
        return {f.name: _plain(getattr(self, f.name)) for f in dataclasses.fields(self)}

    @classmethod
    def from_dict(
        cls: type[C], data: Mapping[str, Any], *, complete: bool = False, ignore: tuple = ()
    ) -> C:
        """Build from a dict, naming unknown keys; with ``complete`` (what a saved file must be)
        also naming missing ones. Keys in ``ignore`` are skipped (metadata written beside the
        fields). Sections may be dicts, instances or ``{"preset": name, ...}`` (not complete)."""
        return _build(cls, data, complete=complete, ignore=ignore, prefix="")

    def save(self, path: str | Path) -> Path:
        from apv_hub.io import write_atomic

        text = json.dumps(self.to_dict(), indent=2, sort_keys=True) + "\n"
        return write_atomic(path, text.encode())

    @classmethod
    def load(cls: type[C], path: str | Path, *, ignore: tuple = ()) -> C:
        """Read a saved config; every error names the file."""
        data = read_json_object(path, what=f"a {cls.__name__} file")
        try:
            return cls.from_dict(data, complete=True, ignore=ignore)
        except ConfigError as e:
            raise ConfigError(f"{path}: {e}") from None

    # Presets and overrides ----------------------------------------------------------------------

    @classmethod
    def preset(cls: type[C], name: str, **overrides: Any) -> C:
        """Preset ``name`` of ``cls.PRESETS`` with field overrides (sections as nested dicts)."""
        if name not in cls.PRESETS:
            raise ConfigError(
                f"unknown {cls.__name__} preset {name!r}; choose one of {sorted(cls.PRESETS)}"
            )
        return cls.from_dict(merge(cls.PRESETS[name], overrides))

    def replace(self: C, **changes: Any) -> C:
        """A validated copy with top-level fields changed."""
        return type(self).from_dict({**self.to_dict(), **changes}, complete=True)

    def override(self: C, assignments: Mapping[str, Any], *, from_text: bool = False) -> C:
        """A validated copy with dotted keys set, e.g. ``{"agent.behavior.horizon": 7}``.

        ``from_text``: the values come from a command line (see `parse_assignment`), so a
        comma-separated string may set a list field. Unknown keys are named with the keys that
        exist there and the full keys that end the same way."""
        data = self.to_dict()
        for key, value in assignments.items():
            node, last, annotation = _locate(type(self), data, key)
            if from_text and _is_sequence(annotation):
                value = text_list(value)
            node[last] = value
        return type(self).from_dict(data, complete=True)

    def flat(self) -> dict[str, Any]:
        """``{"a.b.c": value}`` for every leaf field (open dicts such as env options are leaves)."""
        return _flatten(self.to_dict(), type(self))

    @classmethod
    def fields_help(cls, prefix: str = "") -> list[tuple[str, str, Any, str]]:
        """(dotted key, type, default, help) of every leaf field, sections expanded."""
        rows = []
        hints = type_hints(cls)
        for f in dataclasses.fields(cls):
            hint = hints[f.name]
            section = _section_class(hint)
            if section is not None:
                rows += section.fields_help(f"{prefix}{f.name}.")
                continue
            if f.default is not dataclasses.MISSING:
                default = f.default
            elif f.default_factory is not dataclasses.MISSING:
                default = f.default_factory()
            else:
                default = None
            rows.append(
                (f"{prefix}{f.name}", _type_name(hint), _plain(default), f.metadata["help"])
            )
        return rows

    @classmethod
    def resumable_keys(cls) -> set[str]:
        """Dotted keys that ``--resume`` may change."""
        keys = set()
        hints = type_hints(cls)
        for f in dataclasses.fields(cls):
            section = _section_class(hints[f.name])
            if section is not None:
                keys |= {f"{f.name}.{k}" for k in section.resumable_keys()}
            elif f.metadata.get("resumable"):
                keys.add(f.name)
        return keys


# The override grammar --------------------------------------------------------------------------


def parse_value(text: str) -> Any:
    """A command-line value: JSON when it parses (numbers, true/false, null, lists, objects),
    else the text itself as a bare string."""
    try:
        return json.loads(text)
    except json.JSONDecodeError:
        return text


def parse_assignment(item: str) -> tuple[str, Any]:
    """``"a.b=VALUE"`` -> ``("a.b", parsed VALUE)``, naming a malformed item."""
    key, sep, raw = item.partition("=")
    if not sep or not key.strip():
        raise ConfigError(f"--set expects KEY=VALUE (e.g. model.lr=1e-4), got {item!r}")
    return key.strip(), parse_value(raw.strip())


def text_list(value: Any) -> Any:
    """A command-line value for a list field: ``"4,4,4"`` -> ``[4, 4, 4]``, ``"a"`` -> ``["a"]``
    (items parsed like `parse_value`); lists and anything else pass through."""
    if isinstance(value, str):
        return [parse_value(v) for v in value.split(",")] if value else []
    return value


def parse_assignments(items: list[str] | tuple[str, ...]) -> dict[str, Any]:
    """Several ``KEY=VALUE`` items -> {key: value}, later items winning."""
    return dict(parse_assignment(item) for item in items)


# Helpers ---------------------------------------------------------------------------------------


def merge(base: Mapping[str, Any], extra: Mapping[str, Any]) -> dict[str, Any]:
    """Merge nested override dicts: dicts are merged key by key, anything else replaced."""
    out = dict(base)
    for key, value in extra.items():
        if isinstance(value, Mapping) and isinstance(out.get(key), Mapping):
            out[key] = merge(out[key], value)
        else:
            out[key] = value
    return out


def read_json_object(path: str | Path, what: str = "a JSON object") -> dict[str, Any]:
    """Read a JSON file that must hold an object; errors name the file and what is wrong."""
    path = Path(path)
    try:
        text = path.read_text()
    except FileNotFoundError:
        raise ConfigError(f"no file at {path}") from None
    except (OSError, UnicodeDecodeError) as e:
        raise ConfigError(f"cannot read {path}: {e}") from None
    try:
        data = json.loads(text)
    except json.JSONDecodeError as e:
        raise ConfigError(f"{path} is not valid JSON ({e}); expected {what}") from None
    if not isinstance(data, dict):
        raise ConfigError(f"{path} holds a JSON {type(data).__name__}, expected {what}")
    return data


@functools.cache
def type_hints(cls: type) -> dict[str, Any]:
    return typing.get_type_hints(cls)


def coerce(value: Any, hint: Any, where: str) -> Any:
    """``value`` as type ``hint`` (the strict rules of the module doc), or a ConfigError."""
    origin, args = typing.get_origin(hint), typing.get_args(hint)
    if origin in (typing.Union, types.UnionType):
        if value is None and type(None) in args:
            return None
        options = [a for a in args if a is not type(None)]
        if len(options) == 1:
            return coerce(value, options[0], where)
        raise TypeError(f"unsupported config type {hint} at {where}")
    if hint is Any:
        return value
    if hint is bool:
        if isinstance(value, bool):
            return value
        raise _type_error(where, "true or false", value)
    if hint is int:
        if isinstance(value, int) and not isinstance(value, bool):
            return value
        if isinstance(value, float) and value.is_integer():
            return int(value)
        raise _type_error(where, "an integer", value)
    if hint is float:
        if isinstance(value, int | float) and not isinstance(value, bool):
            if not math.isfinite(value):
                raise ConfigError(f"{where} must be a finite number, got {value}")
            return float(value)
        raise _type_error(where, "a number", value)
    if hint is str:
        if isinstance(value, str):
            return value
        raise _type_error(where, "a string", value)
    if origin in (tuple, list):
        if not isinstance(value, list | tuple):
            raise _type_error(where, "a list", value)
        item = args[0] if args else Any
        items = [coerce(v, item, f"{where}[{i}]") for i, v in enumerate(value)]
        return tuple(items) if origin is tuple else items
    if origin is dict or hint is dict:
        if not isinstance(value, Mapping):
            raise _type_error(where, "an object", value)
        return dict(value)
    section = _section_class(hint)
    if section is not None:
        if isinstance(value, section):
            return value
        if isinstance(value, Mapping):
            return _build(section, value, complete=False, ignore=(), prefix=f"{where}.")
        raise _type_error(where, f"a {section.__name__} object", value)
    raise TypeError(f"unsupported config type {hint} at {where}")


def _type_error(where: str, expected: str, value: Any) -> ConfigError:
    return ConfigError(f"{where} takes {expected}, got {value!r} ({type(value).__name__})")


def _build(cls: type[C], data: Mapping[str, Any], complete: bool, ignore: tuple, prefix: str) -> C:
    if not isinstance(data, Mapping):
        raise ConfigError(f"{prefix or cls.__name__}: expected an object, got {data!r}")
    data = {k: v for k, v in data.items() if k not in ignore}
    if not complete and "preset" in data:
        name = data.pop("preset")
        return _wrap(prefix, lambda: cls.preset(name, **data))
    names = [f.name for f in dataclasses.fields(cls)]
    unknown = sorted(set(data) - set(names))
    if unknown:
        raise ConfigError(
            f"unknown {cls.__name__} field(s) {', '.join(prefix + k for k in unknown)}; "
            f"fields are {', '.join(names)}"
        )
    if complete:
        data = {**{k: v for k, v in cls.LEGACY.items() if k not in data}, **data}
        missing = [n for n in names if n not in data]
        if missing:
            raise ConfigError(
                f"missing {cls.__name__} field(s) {', '.join(prefix + k for k in missing)}"
            )
    hints = type_hints(cls)
    kwargs = {}
    for key, value in data.items():
        section = _section_class(hints[key])
        if section is not None and isinstance(value, Mapping):
            value = _build(section, value, complete, (), f"{prefix}{key}.")
        kwargs[key] = coerce(value, hints[key], prefix + key)
    return _wrap(prefix, lambda: cls(**kwargs))


def _wrap(prefix: str, make: Any) -> Any:
    """Run ``make``; a validation error raised inside a section gets the section's path."""
    try:
        return make()
    except ConfigError as e:
        if prefix and not str(e).startswith(prefix):
            raise ConfigError(f"{prefix}{e}") from None
        raise


def _section_class(hint: Any) -> type[Config] | None:
    return hint if isinstance(hint, type) and issubclass(hint, Config) else None


def _is_sequence(hint: Any) -> bool:
    args = [a for a in typing.get_args(hint) if a is not type(None)]
    if typing.get_origin(hint) in (typing.Union, types.UnionType) and len(args) == 1:
        hint = args[0]
    return typing.get_origin(hint) in (tuple, list)


def _plain(value: Any) -> Any:
    if isinstance(value, Config):
        return value.to_dict()
    if isinstance(value, tuple | list):
        return [_plain(v) for v in value]
    if isinstance(value, dict):
        return {k: _plain(v) for k, v in value.items()}
    return value


def _type_name(hint: Any) -> str:
    """``int``, ``list[str]``, ``float | None``, ``APVConfig``..."""
    if isinstance(hint, type) and typing.get_origin(hint) is None:
        return hint.__name__
    return str(hint).replace("typing.", "")


def _locate(cls: type[Config], data: dict[str, Any], key: str) -> tuple[dict, str, Any]:
    """The dict that holds dotted ``key`` inside ``data`` (a config's to_dict), its last part,
    and the field's type hint; open dicts (``dict`` fields) accept any new sub-key."""
    parts = key.split(".")
    node, owner = data, cls
    for i, part in enumerate(parts):
        path = ".".join(parts[: i + 1])
        if owner is None:  # Inside an open dict field.
            if i < len(parts) - 1:
                node = node.setdefault(part, {})
                if not isinstance(node, dict):
                    raise ConfigError(f"{path} is not an object; cannot set {key}")
                continue
            return node, part, Any
        names = [f.name for f in dataclasses.fields(owner)]
        if part not in names:
            raise ConfigError(_unknown_key_message(cls, key, path, names))
        hint = type_hints(owner)[part]
        if i == len(parts) - 1:
            return node, part, hint
        section = _section_class(hint)
        if section is None and not (typing.get_origin(hint) is dict or hint is dict):
            raise ConfigError(f"{path} is a {_type_name(hint)}, not a section; cannot set {key}")
        node, owner = node[part], section
    raise AssertionError("unreachable")


def _unknown_key_message(cls: type[Config], key: str, at: str, names: list[str]) -> str:
    leaf = key.rsplit(".", 1)[-1]
    similar = [k for k, *_ in cls.fields_help() if k == leaf or k.endswith("." + leaf)]
    where = at.rsplit(".", 1)[0] if "." in at else "the top level"
    message = f"unknown config key {key!r}; keys at {where}: {', '.join(names)}"
    return message + (f" (did you mean {' or '.join(similar)}?)" if similar else "")


def _flatten(data: dict[str, Any], cls: type[Config] | None, prefix: str = "") -> dict[str, Any]:
    out = {}
    hints = type_hints(cls) if cls is not None else {}
    for key, value in data.items():
        section = _section_class(hints.get(key))
        if section is not None:
            out.update(_flatten(value, section, f"{prefix}{key}."))
        else:
            out[f"{prefix}{key}"] = value
    return out
