"""Configs by name: the shipped YAMLs are package data, found from any folder of any install.

The top-level ``configs/`` folder installs as ``lightning_unlearn.configs`` (pyproject's
package-dir), in the editable checkout and in a wheel alike. A config value (``--config V``,
``--trainer.callbacks+=V``) resolves in this order:

1. ``V`` is an existing file (relative to the current folder, or absolute): that file. A user's
   own file always wins over a shipped config of the same name.
2. Otherwise ``V`` is the name of a shipped config, the path under ``configs/`` with or without
   ``.yaml``: ``tinyworld/esd_styles_sequential``, ``callbacks/topk``, ``protocols/simultaneous``.
   A leading ``configs/`` is dropped first, so the repository-relative paths that the README, the
   configs' own comments and the study YAMLs use (``configs/tinyworld/...yaml``) work from any
   folder.
3. Otherwise a :class:`ConfigNameError` names the value and the closest shipped names.

Only values that can be a file name are looked up: an inline YAML (``--config '{...}'``) or a
callback class name (``--trainer.callbacks+=ModelCheckpoint``) passes through to jsonargparse.
"""

from __future__ import annotations

import difflib
import importlib.resources
import re
from pathlib import Path, PurePosixPath

from lightning_unlearn.checks import closest_name
from lightning_unlearn.errors import SettingsError

PACKAGE = "lightning_unlearn.configs"
SUFFIXES = (".yaml", ".yml")
REPO_PREFIX = "configs/"
# The options whose value names a config file. A callbacks value is a file only when it looks like
# one (a folder or a .yaml suffix): a bare word there is a callback class name.
CONFIG_OPTIONS = frozenset({"--config", "--trainer.callbacks", "--trainer.callbacks+"})
# Whitespace or YAML flow/mapping characters: an inline YAML value, never a file name.
INLINE = re.compile(r"[\s{}\[\]:,]")


class ConfigNameError(SettingsError):
    """A config value that is neither an existing file nor the name of a shipped config."""


def shipped_configs_dir() -> Path:
    """The installed ``configs/`` folder (the checkout's own in an editable install)."""
    try:
        root = importlib.resources.files(PACKAGE)
    except ModuleNotFoundError as exc:
        # An editable install made before configs/ became package data has no mapping for it.
        raise ConfigNameError(
            f"the shipped configs ({PACKAGE}) are not installed: reinstall the package "
            "(pip install . or, in a checkout, pip install -e .)"
        ) from exc
    if not isinstance(root, Path):
        # jsonargparse opens configs by path, so a zipped install (zipimport) cannot serve them.
        raise ConfigNameError(f"the shipped configs ({PACKAGE}) are inside an archive ({root}); install unzipped")
    return root


def shipped_config_names() -> list[str]:
    """Every shipped config's name (its path under ``configs/`` without the suffix), sorted."""
    root = shipped_configs_dir()
    return sorted(
        path.relative_to(root).with_suffix("").as_posix()
        for path in root.rglob("*") if path.suffix in SUFFIXES and path.is_file()
    )


def close_names(name: str, names: list[str], limit: int = 4) -> list[str]:
    """The shipped names ``name`` may have meant: a near-spelling, the same file in another
    folder (``esd_styles_sequential`` -> ``tinyworld/...``, ``sd15/...``), then similar names."""
    stem = PurePosixPath(name).name
    found = [closest_name(name, names)]
    found += [n for n in names if PurePosixPath(n).name == stem]
    found += [n for n in names if closest_name(stem, [PurePosixPath(n).name]) is not None]
    found += difflib.get_close_matches(name, names, n=limit, cutoff=0.6)
    unique = list(dict.fromkeys(n for n in found if n is not None))
    return unique[:limit]


def resolve_config(value: str, option: str = "--config") -> str:
    """``value`` if it is an existing file, else the path of the shipped config it names.

    Raises :class:`ConfigNameError` (one line: the option, the value, close names) otherwise."""
    if Path(value).expanduser().is_file():
        return value
    if Path(value).is_absolute():
        raise ConfigNameError(f"{option}={value}: no such file")
    name = value.removeprefix(REPO_PREFIX)
    candidates = [name] if name.endswith(SUFFIXES) else [name + suffix for suffix in SUFFIXES]
    root = shipped_configs_dir()
    for candidate in candidates:
        path = root / candidate
        # ".." would reach out of the configs (the package's code, weights): not a config name.
        if path.is_file() and path.resolve().is_relative_to(root.resolve()):
            return str(path)
    names = shipped_config_names()
    close = close_names(name.removesuffix(".yaml").removesuffix(".yml"), names)
    hint = f"close names: {', '.join(close)}" if close else f"shipped configs: {', '.join(names)}"
    raise ConfigNameError(f"{option}={value}: neither a file nor a shipped config name; {hint}")


def _is_file_reference(option: str, value: str) -> bool:
    if not value or value == "-" or INLINE.search(value):
        return False
    return option == "--config" or "/" in value or value.endswith(SUFFIXES)


def resolve_config_args(args: list[str]) -> list[str]:
    """``args`` with every config value (``--config V``, ``--config=V``,
    ``--trainer.callbacks+=V``...) resolved by :func:`resolve_config`; other arguments as given."""
    resolved: list[str] = []
    i = 0
    while i < len(args):
        arg = args[i]
        option, equals, value = arg.partition("=")
        if equals and option in CONFIG_OPTIONS:
            resolved.append(f"{option}={_resolve(option, value)}")
        elif arg in CONFIG_OPTIONS and i + 1 < len(args):
            resolved += [arg, _resolve(arg, args[i + 1])]
            i += 1
        else:
            resolved.append(arg)
        i += 1
    return resolved


def _resolve(option: str, value: str) -> str:
    return resolve_config(value, option) if _is_file_reference(option, value) else value
