"""Typed, frozen, strict configs: the one mechanism every hmoe component is configured through.

A component declares its config as::

    @config
    class MLPConfig(Config):
        hidden_dims: tuple[int, ...] = (128, 64)
        dropout: float = 0.0

and gets ``to_dict`` / strict ``from_dict`` (unknown key or wrong type -> ``ConfigError`` naming
the key path and the valid keys), ``apply_overrides`` for dotted paths (the CLI's ``--set``,
the search spaces and the tests all go through it) and a stable ``config_hash``.

Supported field types: ``bool``, ``int``, ``float``, ``str``, ``Literal[...]``, ``X | None``,
nested ``Config`` subclasses, ``tuple[T, ...]`` / fixed ``tuple[A, B]`` and ``Mapping[str, T]``
or ``Mapping[Literal[...], T]`` (a fixed key set; stored as an immutable, hashable
``FrozenMap``). A ``float`` must be finite (``.inf`` and
``.nan`` are refused with the key path). ``@config`` is
``@dataclass(frozen=True, kw_only=True, slots=True)`` whose constructor also checks and
normalises every value against its annotation, so a config built in Python is as strict as one
read from YAML. Cross-field validation goes in ``__post_init__`` and raises ``ConfigError``;
``apply_overrides`` re-runs it.
"""

from __future__ import annotations

import dataclasses
import hashlib
import inspect
import json
import math
import types
import typing
from collections.abc import Iterator, Mapping
from typing import Any, Literal, TypeVar, Union

__all__ = [
    "Config",
    "ConfigError",
    "FrozenMap",
    "apply_overrides",
    "config",
    "config_hash",
    "iter_configs",
    "parse_override_value",
    "to_plain",
]

C = TypeVar("C", bound="Config")
HASH_LENGTH = 8


class ConfigError(ValueError):
    """A config value, key or path the user gave is invalid; the message names the key path."""


class FrozenMap(Mapping[str, Any]):
    """An immutable, hashable ``str``-keyed mapping (a frozen dataclass does not freeze dicts)."""

    __slots__ = ("_data",)

    def __init__(self, data: Mapping[str, Any] | None = None) -> None:
        self._data = dict(data or {})

    def __getitem__(self, key: str) -> Any:
        return self._data[key]

    def __iter__(self) -> Iterator[str]:
        return iter(self._data)

    def __len__(self) -> int:
        return len(self._data)

    def __hash__(self) -> int:
        return hash(tuple(sorted(self._data.items())))

    def __eq__(self, other: object) -> bool:
        return isinstance(other, Mapping) and dict(self._data) == dict(other)

    def __repr__(self) -> str:
        return f"FrozenMap({self._data!r})"


def config(cls: type[C]) -> type[C]:
    """Make ``cls`` a frozen, keyword-only, slotted dataclass whose constructor type-checks."""
    cls = dataclasses.dataclass(frozen=True, kw_only=True, slots=True)(cls)
    raw_init = cls.__init__

    def __init__(self: Config, **kwargs: Any) -> None:
        fields = {f.name for f in dataclasses.fields(cls) if f.init}
        unknown = sorted(set(kwargs) - fields)
        if unknown:
            raise ConfigError(
                f"{cls.__name__}: unknown key(s) {unknown}; valid keys: {sorted(fields)}"
            )
        hints = _hints(cls)
        checked = {k: _convert(hints[k], v, f"{cls.__name__}.{k}") for k, v in kwargs.items()}
        raw_init(self, **checked)

    __init__.__doc__ = raw_init.__doc__
    __init__.__signature__ = inspect.signature(raw_init)  # type: ignore[attr-defined]
    cls.__init__ = __init__  # type: ignore[method-assign]
    return cls


class Config:
    """Base of every hmoe config; subclasses are decorated with ``@config``."""

    __slots__ = ()

    def to_dict(self) -> dict[str, Any]:
        """Return a JSON-safe nested dict (tuples as lists); ``from_dict`` reads it back."""
        return {f.name: to_plain(getattr(self, f.name)) for f in dataclasses.fields(self)}

    @classmethod
    def from_dict(cls: type[C], data: Mapping[str, Any], *, path: str = "") -> C:
        """Build the config from ``data``, strictly: unknown keys and wrong types are errors.

        Args:
            data: a nested mapping as produced by ``to_dict`` (missing keys take defaults).
            path: the key path of ``data`` inside an enclosing config, for error messages.
        """
        return _convert(cls, data, path or cls.__name__)

    def config_hash(self) -> str:
        """A stable short hash of the resolved config (the run identity)."""
        return config_hash(self)


def config_hash(config: Config) -> str:
    blob = json.dumps(config.to_dict(), sort_keys=True, separators=(",", ":"))
    return hashlib.sha256(blob.encode()).hexdigest()[:HASH_LENGTH]


def iter_configs(config: Config, prefix: str = "") -> Iterator[tuple[str, Config]]:
    """Yield ``(dotted_path, config)`` for ``config`` and every config nested inside it."""
    yield prefix, config
    for f in dataclasses.fields(config):
        value = getattr(config, f.name)
        children = value.items() if isinstance(value, Mapping) else [(None, value)]
        for key, child in children:
            if isinstance(child, Config):
                name = f.name if key is None else f"{f.name}.{key}"
                yield from iter_configs(child, f"{prefix}.{name}" if prefix else name)


def apply_overrides(config: C, overrides: Mapping[str, Any]) -> C:
    """Return a copy of ``config`` with dotted paths set, validated as ``from_dict`` would.

    ``apply_overrides(cfg, {"model.experts.counts.dcnv2": 2})``. Every path must be a key the
    config declares: a field, a key already in a mapping, or any key of a mapping whose keys
    are a ``Literal`` (``Mapping[Literal["a", "b"], int]`` takes ``a`` and ``b`` whether or
    not they are set yet). An unknown key raises ``ConfigError`` naming the path and the valid
    keys; a whole sub-config or mapping can be replaced by giving a dict at its path. This is
    the only way a config is changed: the CLI's ``--set``, the search spaces and the tests
    all go through it, so they accept exactly the same paths.
    """
    data = config.to_dict()
    for dotted, value in overrides.items():
        if not isinstance(dotted, str) or not dotted:
            raise ConfigError(f"override path must be a non-empty dotted string, got {dotted!r}")
        keys = dotted.split(".")
        node: Any = data
        tp: Any = type(config)
        for depth, key in enumerate(keys):
            where = ".".join(keys[:depth]) or "<root>"
            if not isinstance(node, dict):
                raise ConfigError(
                    f"cannot override {dotted!r}: {where} is {node!r}, not a config or mapping"
                )
            valid = _override_keys(tp, node)
            if key not in valid:
                raise ConfigError(
                    f"unknown override path {dotted!r}: {key!r} is not a key of {where}; "
                    f"valid keys: {sorted(valid)}"
                )
            if depth == len(keys) - 1:
                node[key] = to_plain(value)
            else:
                tp = _child_type(tp, node, key)
                node = node[key]
    return type(config).from_dict(data)


def _mapping_keys(tp: Any) -> tuple[str, ...] | None:
    """The fixed key set of a ``Mapping[Literal[...], T]`` annotation (``None`` for any other
    type: its keys are whatever the value holds)."""
    tp = _one_container(tp)
    origin = typing.get_origin(tp)
    if origin in (Mapping, dict, typing.Mapping):
        key_type = typing.get_args(tp)[0]
        if typing.get_origin(key_type) is Literal:
            return typing.get_args(key_type)
    return None


def _override_keys(tp: Any, node: dict[str, Any]) -> set[str]:
    fixed = _mapping_keys(tp)
    return set(node) | set(fixed or ())


def _child_type(tp: Any, node: dict[str, Any], key: str) -> Any:
    """The annotation of ``node[key]`` inside a value annotated ``tp`` (``Any`` if unknown)."""
    tp = _one_container(tp)
    if isinstance(tp, type) and issubclass(tp, Config):
        return _hints(tp).get(key, Any)
    if typing.get_origin(tp) in (Mapping, dict, typing.Mapping):
        args = typing.get_args(tp)
        return args[1] if args else Any
    return Any


def _one_container(tp: Any) -> Any:
    """``X`` for ``X | None`` when ``X`` is the only config or mapping arm, else ``tp``."""
    if typing.get_origin(tp) not in (Union, types.UnionType):
        return tp
    arms = [
        a
        for a in typing.get_args(tp)
        if (isinstance(a, type) and issubclass(a, Config))
        or typing.get_origin(a) in (Mapping, dict, typing.Mapping)
    ]
    return arms[0] if len(arms) == 1 else tp


def parse_override_value(text: str) -> Any:
    """Parse the value of a CLI ``--set a.b=VALUE`` as a YAML scalar/flow value (``3``, ``0.1``,
    ``true``, ``[64, 32]``, ``{dcn: 2}``, ``null``); anything else stays a string."""
    import yaml

    try:
        return yaml.safe_load(text)
    except yaml.YAMLError:
        return text


def to_plain(value: Any) -> Any:
    """``value`` as ``Config.to_dict`` writes it: configs and mappings as dicts, tuples as
    lists."""
    if isinstance(value, Config):
        return value.to_dict()
    if isinstance(value, Mapping):
        return {str(k): to_plain(v) for k, v in value.items()}
    if isinstance(value, (tuple, list)):
        return [to_plain(v) for v in value]
    return value


_HINTS_CACHE: dict[type, dict[str, Any]] = {}


def _hints(cls: type) -> dict[str, Any]:
    if cls not in _HINTS_CACHE:
        _HINTS_CACHE[cls] = typing.get_type_hints(cls)
    return _HINTS_CACHE[cls]


def _type_name(tp: Any) -> str:
    return getattr(tp, "__name__", None) or str(tp).replace("typing.", "")


def _convert(tp: Any, value: Any, path: str) -> Any:
    """Check ``value`` against the annotation ``tp`` and return it in canonical form."""
    origin = typing.get_origin(tp)
    if isinstance(tp, type) and issubclass(tp, Config):
        return _convert_config(tp, value, path)
    if tp is Any:
        return value
    if origin in (Union, types.UnionType):
        return _convert_union(tp, value, path)
    if origin is Literal:
        if value not in typing.get_args(tp) or isinstance(value, bool) != any(
            isinstance(a, bool) for a in typing.get_args(tp)
        ):
            raise ConfigError(f"{path}: {value!r} is not one of {list(typing.get_args(tp))}")
        return value
    if origin is tuple:
        return _convert_tuple(tp, value, path)
    if origin in (Mapping, dict, typing.Mapping) or tp in (Mapping, dict):
        return _convert_mapping(tp, value, path)
    if tp is type(None):
        if value is not None:
            raise ConfigError(f"{path}: expected null, got {value!r}")
        return None
    if tp is bool:
        if not isinstance(value, bool):
            raise ConfigError(f"{path}: expected a bool, got {value!r}")
        return value
    if tp is int:
        if isinstance(value, bool) or not isinstance(value, int):
            raise ConfigError(f"{path}: expected an int, got {value!r}")
        return value
    if tp is float:
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            raise ConfigError(f"{path}: expected a float, got {value!r}")
        # no field gives inf or nan a meaning (``None`` is how a field says "no limit"), and
        # a non-finite value slips past range checks (nan > 0 and nan <= 0 are both false)
        try:
            number = float(value)
        except OverflowError:  # an int beyond float's range
            number = math.inf
        if not math.isfinite(number):
            raise ConfigError(f"{path}: expected a finite number, got {value!r}")
        return number
    if tp is str:
        if not isinstance(value, str):
            raise ConfigError(f"{path}: expected a string, got {value!r}")
        return value
    raise TypeError(f"{path}: unsupported config field type {tp!r}")


def _convert_config(cls: type[Config], value: Any, path: str) -> Config:
    if isinstance(value, cls):
        return value  # already checked when it was constructed
    if not isinstance(value, Mapping):
        raise ConfigError(f"{path}: expected a mapping for {cls.__name__}, got {value!r}")
    fields = {f.name: f for f in dataclasses.fields(cls) if f.init}
    unknown = [k for k in value if k not in fields]
    if unknown:
        raise ConfigError(
            f"{path}: unknown key(s) {sorted(map(str, unknown))}; valid keys: {sorted(fields)}"
        )
    hints = _hints(cls)
    kwargs = {}
    for name, f in fields.items():
        if name in value:
            kwargs[name] = _convert(hints[name], value[name], f"{path}.{name}")
        elif f.default is dataclasses.MISSING and f.default_factory is dataclasses.MISSING:
            raise ConfigError(f"{path}: missing required key {name!r}")
    try:
        return cls(**kwargs)
    except ConfigError as err:
        raise ConfigError(f"{path}: {err}") from None


def _convert_union(tp: Any, value: Any, path: str) -> Any:
    args = typing.get_args(tp)
    if value is None and type(None) in args:
        return None
    errors = []
    for arg in args:
        if arg is type(None):
            continue
        try:
            return _convert(arg, value, path)
        except ConfigError as err:
            errors.append(str(err))
    raise ConfigError(
        f"{path}: {value!r} matches none of {[_type_name(a) for a in args]} ({'; '.join(errors)})"
    )


def _convert_tuple(tp: Any, value: Any, path: str) -> tuple[Any, ...]:
    if not isinstance(value, (list, tuple)):
        raise ConfigError(f"{path}: expected a list, got {value!r}")
    args = typing.get_args(tp)
    if len(args) == 2 and args[1] is Ellipsis:
        return tuple(_convert(args[0], v, f"{path}[{i}]") for i, v in enumerate(value))
    if len(value) != len(args):
        raise ConfigError(f"{path}: expected {len(args)} items, got {len(value)}")
    pairs = enumerate(zip(args, value, strict=True))
    return tuple(_convert(a, v, f"{path}[{i}]") for i, (a, v) in pairs)


def _convert_mapping(tp: Any, value: Any, path: str) -> FrozenMap:
    if not isinstance(value, Mapping):
        raise ConfigError(f"{path}: expected a mapping, got {value!r}")
    args = typing.get_args(tp) or (str, Any)
    fixed = _mapping_keys(tp)
    unknown = [k for k in value if fixed is not None and k not in fixed]
    if unknown:
        raise ConfigError(f"{path}: unknown key(s) {unknown}; valid keys: {list(fixed or ())}")
    out = {}
    for key, item in value.items():
        if not isinstance(key, str):
            raise ConfigError(f"{path}: keys must be strings, got {key!r}")
        out[key] = _convert(args[1], item, f"{path}.{key}")
    return FrozenMap(out)
