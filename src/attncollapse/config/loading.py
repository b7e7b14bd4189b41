"""Reading config files: YAML (with `1e-5` as a float, duplicate keys found), `--set`
values, and the configs shipped in the package. Knows nothing of the schema; every problem
is a `ConfigError` naming the file.
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

import yaml

from .. import _io


class ConfigError(ValueError):
    """Every problem found in a config, each as "location: message".

    Attributes:
        errors: the messages, in file order.
    """

    def __init__(self, errors: list[str], source: str | None = None):
        self.errors = list(dict.fromkeys(errors))  # drop exact repeats, keep order
        where = f" in {source}" if source else ""
        n = len(self.errors)
        super().__init__(f"{n} problem{'s' * (n != 1)}{where}:\n  " + "\n  ".join(self.errors))

class _Loader(yaml.SafeLoader):
    """SafeLoader that reads `1e-5` as a float (YAML 1.1 wants `1.0e-5`)."""


_Loader.add_implicit_resolver(
    "tag:yaml.org,2002:float",
    re.compile(r"""^(?:[-+]?(?:[0-9][0-9_]*)\.[0-9_]*(?:[eE][-+]?[0-9]+)?
                  |[-+]?(?:[0-9][0-9_]*)(?:[eE][-+]?[0-9]+)
                  |\.[0-9_]+(?:[eE][-+]?[0-9]+)?
                  |[-+]?\.(?:inf|Inf|INF)|\.(?:nan|NaN|NAN))$""", re.X),
    list("-+0123456789."),
)


def parse_value(text: str) -> Any:
    """A `--set` value as YAML (`1e-4` → float, `[1, 2]` → list, `qv` → str).

    Raises:
        yaml.YAMLError: not YAML, or aliases expanding past MAX_CONFIG_NODES values.
    """
    node = yaml.compose(text, Loader=_Loader)
    if node is not None and _expanded_size(node) > MAX_CONFIG_NODES:
        raise yaml.YAMLError(f"aliases expand to more than {MAX_CONFIG_NODES:,} values")
    return yaml.load(text, Loader=_Loader)


def parse_assignments(items: list[str] | tuple, flag: str = "--set") -> tuple[list[tuple[str, Any]], list[str]]:
    """`KEY=VALUE` strings as (key, parsed value) pairs, plus one error per malformed item.

    The one parser of `--set` and `--executor-opt`: a missing `=` or an empty key is an
    error (never a silent `key=None`).
    """
    pairs, errors = [], []
    for item in items:
        key, sep, text = item.partition("=")
        if not sep or not key.strip():
            errors.append(f"{flag} {item}: expected KEY=VALUE")
            continue
        try:
            pairs.append((key.strip(), parse_value(text)))
        except yaml.YAMLError as exc:  # `--set seeds=[1,2`: name the item, not the parser's state
            errors.append(f"{flag} {item}: not a valid YAML value ({getattr(exc, 'problem', None) or exc}); "
                          "e.g. optim.lr=1e-4, seeds=[1,2], lora.targets=qkvo")
    return pairs, errors


MAX_CONFIG_BYTES = 1 << 20
"""Largest config file read: a study's YAML is a few KB."""

MAX_CONFIG_NODES = 100_000
"""Most YAML values a config may expand to, aliases counted at every use: a few hundred
bytes of nested `&a [*b, *b, ...]` anchors expand to billions (a "billion laughs" file
hangs any reader that walks the values)."""


def _expanded_size(root: yaml.Node) -> int:
    """Values `root` stands for with every alias expanded, counted on the composed graph
    (an alias is the same node object, so each node is sized once)."""
    memo: dict[int, int] = {}
    order, stack = [], [root]
    while stack:  # post-order without recursion (a deep file must not hit the recursion limit)
        node = stack.pop()
        if id(node) in memo:
            continue
        memo[id(node)] = -1
        order.append(node)
        if isinstance(node, yaml.SequenceNode):
            stack.extend(node.value)
        elif isinstance(node, yaml.MappingNode):
            stack.extend(x for kv in node.value for x in kv)
    for node in reversed(order):
        kids = (node.value if isinstance(node, yaml.SequenceNode)
                else [x for kv in node.value for x in kv] if isinstance(node, yaml.MappingNode) else [])
        memo[id(node)] = min(1 + sum(max(memo[id(k)], 1) for k in kids), MAX_CONFIG_NODES + 1)
    return memo[id(root)]


def _duplicate_keys(node: yaml.Node, path: str = "") -> list[str]:
    """Keys given twice in one YAML mapping (PyYAML silently keeps the last)."""
    out: list[str] = []
    if isinstance(node, yaml.MappingNode):
        seen: dict[str, int] = {}
        for k, v in node.value:
            key = str(k.value)
            here = f"{path}.{key}" if path else key
            if key in seen:
                out.append(f"{here}: duplicate key (line {k.start_mark.line + 1}, "
                           f"first at line {seen[key]})")
            else:
                seen[key] = k.start_mark.line + 1
            out.extend(_duplicate_keys(v, here))
    elif isinstance(node, yaml.SequenceNode):
        for i, v in enumerate(node.value):
            out.extend(_duplicate_keys(v, f"{path}[{i}]"))
    return out


def read_config_yaml(path: str | Path) -> tuple[Any, list[str]]:
    """Parse a YAML file; returns (data, duplicate-key errors).

    Raises:
        ConfigError: not UTF-8 text, binary, unreadable, not YAML, or empty.
    """
    try:
        size = Path(path).stat().st_size
    except OSError:
        size = 0  # read_text_checked names what is wrong with it
    if size > MAX_CONFIG_BYTES:
        raise ConfigError([f"{size / 2**20:.1f} MiB: too large for a config (limit {MAX_CONFIG_BYTES >> 20} MiB; "
                           "a study's YAML is a few KB) — is this the right file?"], str(path))
    try:
        text = _io.read_text_checked(path)
    except _io.DamagedFile as exc:
        raise ConfigError([exc.why], str(path)) from None
    if not text.strip() or all(not ln.strip() or ln.lstrip().startswith("#") for ln in text.splitlines()):
        raise ConfigError(["empty file: expected a matrix (name:, defaults:, runs:) or a run config"],
                          str(path))
    try:
        node = yaml.compose(text, Loader=_Loader)
        if node is not None and _expanded_size(node) > MAX_CONFIG_NODES:
            raise ConfigError([f"its YAML aliases expand to more than {MAX_CONFIG_NODES:,} values (an alias bomb?); "
                               "write the values out or use fewer nested aliases"], str(path))
        data = yaml.load(text, Loader=_Loader)
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        where = f" at line {mark.line + 1}, column {mark.column + 1}" if mark is not None else ""
        raise ConfigError([f"not valid YAML{where}: {getattr(exc, 'problem', None) or exc}"], str(path)) from None
    return data, (_duplicate_keys(node) if node is not None else [])


def packaged_configs() -> dict[str, Path]:
    """The configs shipped in the package: name → path (paper, demo, paper-shapes)."""
    root = Path(__file__).resolve().parent.parent / "configs"
    return {p.stem: p for p in sorted(root.glob("*.yaml"))}


def resolve_config_path(name: str | Path) -> Path:
    """A config file path, or the name of a packaged config (`paper`, `demo.yaml`)."""
    p = Path(name).expanduser()
    if p.is_file():
        return p
    shipped = packaged_configs()
    if p.is_dir():  # e.g. a matrix directory given to `validate` / `run` instead of its YAML
        raise FileNotFoundError(f"{name}: is a directory; give a matrix or run config YAML file, or a packaged "
                                f"config ({', '.join(shipped)}); `attncollapse status` reads matrix directories")
    stem = p.name[:-5] if p.name.endswith(".yaml") else p.name
    if p.parent == Path(".") and stem in shipped:
        return shipped[stem]
    raise FileNotFoundError(f"{name}: no such file, and not a packaged config ({', '.join(shipped)})")
