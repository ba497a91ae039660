"""Each role's small TOML config: every key checked, unknown keys are errors (as
for policies), paths relative to the config file, and command-line flags
override what the file says. Errors name the file and the key."""
from __future__ import annotations

import tomllib
from dataclasses import dataclass
from pathlib import Path

from ..errors import ParameterError

MAX_CONFIG = 1 << 20


class ConfigError(ParameterError):
    """A role's config file (or a flag overriding it) is wrong; names the file and key."""


@dataclass(frozen=True)
class Key:
    name: str
    kind: str                  # "str" "int" "float" "bool" "path" "paths" "strs"
    required: bool = False
    default: object = None
    help: str = ""


def _check(where: str, key: Key, value):
    kind = key.kind
    ok = {"str": lambda v: isinstance(v, str) and v != "",
          "int": lambda v: isinstance(v, int) and not isinstance(v, bool),
          "float": lambda v: isinstance(v, (int, float)) and not isinstance(v, bool),
          "bool": lambda v: isinstance(v, bool),
          "path": lambda v: isinstance(v, (str, Path)) and str(v) != "",
          "paths": lambda v: isinstance(v, list) and v and all(isinstance(x, (str, Path)) and str(x) for x in v),
          "strs": lambda v: isinstance(v, list) and all(isinstance(x, str) and x for x in v)}[kind]
    if not ok(value):
        want = {"str": "a non-empty string", "int": "an integer", "float": "a number", "bool": "true or false",
                "path": "a path", "paths": "a non-empty list of paths or URLs", "strs": "a list of strings"}[kind]
        raise ConfigError(f"{where}: key {key.name!r} must be {want}, got {value!r}")
    return float(value) if kind == "float" else value


def _resolve(base: Path, value):
    """A relative path is relative to the config file; URLs stay as they are."""
    text = str(value)
    if text.startswith(("http://", "https://")):
        return text
    path = Path(text).expanduser()
    return path if path.is_absolute() else base / path


def load(path: Path | None, schema: list[Key], overrides: dict | None = None, role: str = "config") -> dict:
    """The config as a dict of every key in `schema`: the file's values (if a file is
    given), then the non-None `overrides` (command-line flags, relative to the working
    directory), then defaults. Raises ConfigError naming the file and key."""
    by_name = {k.name: k for k in schema}
    values: dict = {}
    where = "command line"
    if path is not None:
        where = str(path)
        try:
            with open(path, "rb") as f:
                raw = f.read(MAX_CONFIG + 1)
        except OSError as e:
            raise ConfigError(f"cannot read {role} config {path}: {e.strerror or e}") from None
        if len(raw) > MAX_CONFIG:
            raise ConfigError(f"{path}: larger than {MAX_CONFIG} bytes")
        try:
            data = tomllib.loads(raw.decode("utf-8"))
        except (UnicodeDecodeError, tomllib.TOMLDecodeError) as e:
            raise ConfigError(f"{path}: not valid TOML: {e}") from None
        unknown = sorted(set(data) - set(by_name))
        if unknown:
            raise ConfigError(f"{path}: unknown key{'s' if len(unknown) > 1 else ''} {', '.join(map(repr, unknown))}"
                              f" in a {role} config (known: {', '.join(sorted(by_name))})")
        base = Path(path).resolve().parent
        for name, value in data.items():
            key = by_name[name]
            value = _check(where, key, value)
            if key.kind == "path":
                value = _resolve(base, value)
            elif key.kind == "paths":
                value = [_resolve(base, v) for v in value]
            values[name] = value
    for name, value in (overrides or {}).items():
        if value is None or name not in by_name:
            continue
        key = by_name[name]
        value = _check(f"--{name.replace('_', '-')}", key, value)
        if key.kind == "path":
            value = _resolve(Path.cwd(), value)
        elif key.kind == "paths":
            value = [_resolve(Path.cwd(), v) for v in value]
        values[name] = value
    for key in schema:
        if key.name not in values:
            if key.required:
                raise ConfigError(f"{where}: the {role} config needs key {key.name!r} ({key.help})"
                                  if path is not None else
                                  f"missing --{key.name.replace('_', '-')} (or a --config file with "
                                  f"{key.name!r}): {key.help}")
            values[key.name] = key.default
    return values


def describe(schema: list[Key]) -> str:
    """The keys of a config, for --help."""
    return "; ".join(f"{k.name}{'' if k.required else ' (optional)'}: {k.help}" for k in schema)
