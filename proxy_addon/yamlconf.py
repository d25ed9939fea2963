"""A typed reader for YAML configuration files that knows nothing of what their keys mean.

- `load_yaml`: a file's text as data, refusing a key given twice in one mapping.
- `${VAR}` references in string values, expanded from the environment the caller passes
  (`expand_env`); `missing_variables` finds every missing one of a file at once.
- `Reader`: typed access to one mapping (`text`, `number`, `integer`, `bool`, `choice`, `words`,
  `string_map`, `section`) that remembers the keys read, so that `done()` refuses the others
  as unknown, with a did-you-mean.

Every error is a `ConfigError` that names the file, the key path (``routes[2].host``) and what
was expected. The schema (which keys exist, what they mean) is the caller's: `config.py` for
authproxy. Pure: nothing here reads a file or `os.environ`, and it imports nothing of ours.
"""

from __future__ import annotations

import difflib
import math
import re
from collections.abc import Mapping
from typing import Any, NamedTuple

import yaml

__all__ = [
    "ConfigError",
    "MissingVariable",
    "Reader",
    "Unavailable",
    "UniqueKeyLoader",
    "Verbatim",
    "env_problems",
    "expand_env",
    "kind_of",
    "load_yaml",
    "missing_error",
    "missing_variables",
    "unavailable",
]


class ConfigError(Exception):
    """The configuration is wrong. str() says where and what was expected."""

    def __init__(self, source: str, key: str, message: str) -> None:
        self.source, self.key, self.message = source, key, message
        where = f"{source}: {key}" if key else source
        super().__init__(f"{where}: {message}")


# --- YAML ----------------------------------------------------------------------------------------

# libyaml's parser when PyYAML was built with it: a config of 10 000 routes parses 6x faster.
_BaseLoader: type[yaml.SafeLoader] = getattr(yaml, "CSafeLoader", yaml.SafeLoader)


_MERGE_TAG = "tag:yaml.org,2002:merge"


class UniqueKeyLoader(_BaseLoader):  # type: ignore[valid-type,misc]
    """A safe loader that refuses a key given twice in one mapping: YAML keeps the last one
    silently, so a second `client_secret:` or `routes:` would win without a word."""

    def construct_mapping(self, node: yaml.MappingNode, deep: bool = False) -> dict[Any, Any]:
        seen: dict[Any, yaml.Node] = {}
        for key_node, _ in node.value:
            if key_node.tag == _MERGE_TAG:
                continue  # `<<: *anchor`: merged keys may be overridden, the base class merges
            key = self.construct_object(key_node, deep=deep)  # type: ignore[no-untyped-call]
            if isinstance(key, list | dict):
                continue  # unhashable: the base class reports it
            if key in seen:
                first = seen[key].start_mark.line + 1
                raise yaml.constructor.ConstructorError(
                    None, None,
                    f"duplicate key {key!r} (first given on line {first})",
                    key_node.start_mark,
                )  # fmt: skip
            seen[key] = key_node
        return super().construct_mapping(node, deep=deep)  # type: ignore[no-any-return]


def load_yaml(text: str, source: str) -> Any:
    """The data of a YAML document; ConfigError (with line and column) if it is not valid."""
    try:
        return yaml.load(text, Loader=UniqueKeyLoader)  # noqa: S506 (a SafeLoader)
    except yaml.YAMLError as e:
        mark = getattr(e, "problem_mark", None)
        where = f"line {mark.line + 1}, column {mark.column + 1}: " if mark else ""
        problem = getattr(e, "problem", None) or str(e)
        raise ConfigError(source, "", f"not valid YAML: {where}{problem}") from None


# --- environment references ----------------------------------------------------------------------

# $$ (a literal $), ${VAR}, ${VAR:-default} / ${VAR-default} (default when unset or empty /
# unset), ${VAR:?message} / ${VAR?message} (an error when unset or empty / unset), as Docker
# Compose reads them. Any other $ is an error: kept literally it would hide a typo.
_ENV_REF = re.compile(r"\$(?:(\$)|\{([A-Za-z_][A-Za-z0-9_]*)(?:(:?[-?])([^}]*))?\}|)")


class MissingVariable(NamedTuple):
    name: str
    key: str  # where in the file
    message: str | None  # the config's own (${VAR:?message})


def expand_env(value: str, env: Mapping[str, str], source: str, key: str) -> str:
    """Replace the environment references of `value` (see _ENV_REF). Raises ConfigError for
    a missing variable or a `$` of another form."""
    missing = env_problems(value, env, source, key)
    if missing:
        raise missing_error(source, missing)
    return _ENV_REF.sub(lambda m: _substitute(m, env) or "", value)


def env_problems(
    value: str, env: Mapping[str, str], source: str, key: str
) -> list[MissingVariable]:
    """The variables `value` needs that are missing; raises ConfigError for a malformed `$`."""
    missing = []
    for m in _ENV_REF.finditer(value):
        if m.group(1) is None and m.group(2) is None:
            raise ConfigError(
                source, key,
                f"unsupported '$' at {value[m.start():m.start() + 12]!r}: write ${{VAR}}, "
                "${VAR:-default} or ${VAR:?message} for an environment variable, $$ for a "
                "literal $",
            )  # fmt: skip
        if m.group(2) is not None and _substitute(m, env) is None:
            op, arg = m.group(3), m.group(4)
            message = arg if op and op.endswith("?") and arg else None
            missing.append(MissingVariable(m.group(2), key, message))
    return missing


def _substitute(m: re.Match[str], env: Mapping[str, str]) -> str | None:
    """The text for one reference; None when its variable is missing (and has no default)."""
    if m.group(1) is not None:
        return "$"
    name, op, arg = m.group(2), m.group(3), m.group(4)
    value = env.get(name)
    unset = value is None or (value == "" and op is not None and op.startswith(":"))
    if not unset:
        return value
    if op is not None and op.endswith("-"):
        return arg
    return None


def missing_error(source: str, missing: list[MissingVariable]) -> ConfigError:
    """One error for one or more missing variables, each with the key that needs it."""
    if len(missing) == 1:
        v = missing[0]
        why = f": {v.message}" if v.message else ""
        return ConfigError(source, v.key, f"environment variable {v.name} is not set{why}")
    parts = [f"{v.name} (for {v.key}{': ' + v.message if v.message else ''})" for v in missing]
    return ConfigError(source, "", f"environment variables not set: {', '.join(parts)}")


def missing_variables(
    data: Any, env: Mapping[str, str], source: str, path: str = ""
) -> list[MissingVariable]:
    """Every missing variable of the file at once, before parsing stops at the first."""
    if isinstance(data, str):
        return env_problems(data, env, source, path or "(top level)")
    found: list[MissingVariable] = []
    if isinstance(data, dict):
        for k, v in data.items():
            found += missing_variables(v, env, source, f"{path}.{k}" if path else str(k))
    elif isinstance(data, list):
        for i, v in enumerate(data):  # a list of strings (scopes) is named as a whole
            item = path if isinstance(v, str) else f"{path}[{i}]"
            found += missing_variables(v, env, source, item)
    return found


class Verbatim(str):
    """A value taken as it is, never expanded (the caller read it from a secret file)."""

    __slots__ = ()


class Unavailable(Verbatim):
    """A value left unread: a lenient key (see `Reader`) whose variable, or the file the
    caller was to read it from, is missing. Never to be sent anywhere."""

    __slots__ = ()


def unavailable(value: object) -> bool:
    """Is this value one left unread (`Unavailable`)?"""
    return isinstance(value, Unavailable)


# --- typed reading -------------------------------------------------------------------------------


class Reader:
    """Typed access to one mapping of the file, with key paths for error messages.

    `lenient_keys`: keys whose value reads as `Unavailable` when a variable it needs is missing,
    instead of raising (a caller's secrets, for a command that does not use them). They hold
    for every mapping below this one (`section`).
    """

    def __init__(
        self,
        data: Any,
        source: str,
        path: str,
        env: Mapping[str, str],
        *,
        lenient_keys: frozenset[str] = frozenset(),
    ) -> None:
        if not isinstance(data, dict):
            raise ConfigError(
                source, path or "(top level)", f"expected a mapping, got {kind_of(data)}"
            )
        self.data: dict[Any, Any] = data
        self.source, self.path, self.env = source, path, env
        self.lenient_keys = lenient_keys
        self._seen: set[str] = set()

    def key(self, name: str) -> str:
        """The key path of `name` in this mapping, for a message."""
        return f"{self.path}.{name}" if self.path else name

    def error(self, name: str, message: str) -> ConfigError:
        return ConfigError(self.source, self.key(name), message)

    def raw(self, name: str) -> Any:
        """The value as YAML gave it, strings with their variables expanded; None if absent."""
        self._seen.add(name)
        value = self.data.get(name)
        if isinstance(value, str) and not isinstance(value, Verbatim):
            if name in self.lenient_keys and env_problems(
                value, self.env, self.source, self.key(name)
            ):
                return Unavailable(f"<{name} not available>")
            return expand_env(value, self.env, self.source, self.key(name))
        return value

    def has(self, name: str) -> bool:
        return self.data.get(name) is not None

    def text(self, name: str, default: str | None = None, *, required: bool = False) -> str | None:
        value = self.raw(name)
        if value is None:
            if required:
                others = [str(k) for k in self.data if k != name]
                typo = difflib.get_close_matches(name, others, n=1, cutoff=0.85)
                hint = f" (is {typo[0]!r} a typo of it?)" if typo else ""
                raise self.error(name, "is required" + hint)
            return default
        if isinstance(value, bool) or not isinstance(value, str | int | float):
            raise self.error(name, f"expected a string, got {kind_of(value)}")
        text = value if isinstance(value, str) else str(value)  # keeps Unavailable
        if required and not text:
            raise self.error(name, "must not be empty")
        return text

    def choice(self, name: str, choices: tuple[str, ...], default: str) -> str:
        value = self.text(name, default)
        if value not in choices:
            raise self.error(name, f"expected one of {', '.join(choices)}, got {value!r}")
        return value

    def number(self, name: str, default: float, *, minimum: float = 0.0) -> float:
        value = self.raw(name)
        if value is None:
            return default
        try:
            number = float(value) if not isinstance(value, bool) else None
        except (TypeError, ValueError):
            number = None
        if number is None or math.isnan(number) or number < minimum:
            raise self.error(name, f"expected a number >= {minimum:g}, got {value!r}")
        return number

    def integer(self, name: str, default: int, *, minimum: int, maximum: int) -> int:
        value = self.raw(name)
        if value is None:
            return default
        try:
            number = int(value) if not isinstance(value, bool | float) else None
        except (TypeError, ValueError):
            number = None
        if number is None or not minimum <= number <= maximum:
            raise self.error(
                name, f"expected a whole number from {minimum} to {maximum}, got {value!r}"
            )
        return number

    def bool(self, name: str, default: bool) -> bool:
        value = self.raw(name)
        if value is None:
            return default
        if not isinstance(value, bool):
            raise self.error(name, f"expected true or false, got {value!r}")
        return value

    def words(self, name: str) -> tuple[str, ...]:
        """A list of strings, or one space-separated string (as OAuth scopes are written)."""
        value = self.raw(name)
        if value is None:
            return ()
        if isinstance(value, str):
            return tuple(value.split())
        if isinstance(value, list) and all(isinstance(v, str) for v in value):
            return tuple(expand_env(v, self.env, self.source, self.key(name)) for v in value)
        raise self.error(name, f"expected a list of strings, got {kind_of(value)}")

    def with_defaults(self, defaults: Mapping[str, Any]) -> Reader:
        """This mapping over a preset's values; keys the preset brings are never 'unknown'."""
        merged = self.with_data({**defaults, **self.data})
        merged._seen |= set(defaults) - set(self.data)
        return merged

    def with_data(self, data: dict[Any, Any]) -> Reader:
        """The same place in the file holding `data` instead; the keys read stay read."""
        out = Reader(data, self.source, self.path, self.env, lenient_keys=self.lenient_keys)
        out._seen |= self._seen
        return out

    def section(self, name: str) -> Reader:
        """The mapping under `name` (an absent one is empty)."""
        self._seen.add(name)
        value = self.data.get(name)
        return Reader(
            {} if value is None else value, self.source, self.key(name), self.env,
            lenient_keys=self.lenient_keys,
        )  # fmt: skip

    def string_map(self, name: str) -> dict[str, str]:
        sub = self.section(name)
        return {k: sub.text(k, required=True) or "" for k in sub.data}

    def done(self, allowed_also: tuple[str, ...] = ()) -> None:
        """Refuse keys nobody read: a typo must not silently turn a setting off."""
        unknown = [k for k in self.data if k not in self._seen and k not in allowed_also]
        if unknown:
            raise self.error(str(unknown[0]), "unknown key" + _suggest(str(unknown[0]), self))


def kind_of(value: Any) -> str:
    """What a value is, in a user's words ("a mapping", "a list", "nothing")."""
    if value is None:
        return "nothing"
    return {dict: "a mapping", list: "a list", str: "a string", bool: "true/false"}.get(
        type(value), type(value).__name__
    )


def _suggest(name: str, reader: Reader) -> str:
    close = difflib.get_close_matches(name, sorted(reader._seen), n=1)
    return f" (did you mean {close[0]!r}?)" if close else ""
