"""Reading back: a damaged, truncated or edited file is a `DamagedFile` naming it.

A file written with a checksum (`atomic.write_json(..., checksum=True)`, `write_yaml`
likewise) is verified here; docs/FORMATS.md "Verified files" lists which files carry one.
"""

from __future__ import annotations

import json
import os
from pathlib import Path

import yaml

from .checksum import CHECKSUM_KEY, YAML_CHECKSUM_PREFIX, json_text, sha256_text

FINAL_JSON_KEYS = ("run_id", "status", "best_acc", "delta_pct")
"""What a finished run's final.json must hold to count as done: a file truncated by a
kill, or `{}`, lacks them (docs/FORMATS.md)."""


class DamagedFile(ValueError):
    """A file this tool wrote (or a user gave) that cannot be read back as what it should be.

    Attributes:
        path: the file.
        why: what is wrong with it, and the fix when one is known.
    """

    def __init__(self, path: str | os.PathLike, why: str):
        self.path, self.why = Path(path), why
        super().__init__(f"{path}: {why}")


def read_text_checked(path: str | os.PathLike) -> str:
    """The UTF-8 text of `path`; DamagedFile when it is unreadable or binary."""
    path = Path(path)
    try:
        raw = path.read_bytes()
    except IsADirectoryError:
        raise DamagedFile(path, "is a directory, not a file") from None
    except OSError as exc:
        raise DamagedFile(path, f"cannot be read ({exc.strerror or exc})") from None
    if b"\0" in raw:
        raise DamagedFile(path, "is a binary file, not text") from None
    try:
        return raw.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise DamagedFile(path, f"is not UTF-8 text (byte {exc.start}); save it as UTF-8") from None


def _text_and_fix(path: Path, fix: str) -> tuple[str, str]:
    """The file's text (`read_text_checked`) and the "; fix" tail every message of the caller
    ends with; a damaged file's line gets the fix too."""
    tail = f"; {fix}" if fix else ""
    try:
        return read_text_checked(path), tail
    except DamagedFile as exc:
        raise DamagedFile(path, exc.why + tail) from None


def read_json_checked(path: str | os.PathLike, required_keys: tuple[str, ...] = (), *,
                      fix: str = "") -> dict:
    """A JSON object from `path`, checked to hold `required_keys`.

    Args:
        path: the file.
        required_keys: keys the object must have (a truncated or `{}` file lacks them).
        fix: what the user should do about a damaged file (appended to the message).

    Raises:
        DamagedFile: unreadable, not JSON (e.g. truncated by a kill), not an object, or
            missing a required key.
    """
    path = Path(path)
    text, tail = _text_and_fix(path, fix)
    try:
        obj = json.loads(text)
    except ValueError as exc:
        what = "empty" if not text.strip() else f"not valid JSON ({exc.msg} at line {exc.lineno})"
        raise DamagedFile(path, f"{what} — truncated or damaged{tail}") from None
    if not isinstance(obj, dict):
        raise DamagedFile(path, f"expected a JSON object, found {type(obj).__name__}{tail}")
    if CHECKSUM_KEY in obj:  # written with checksum=True: verify, then drop it
        recorded = obj.pop(CHECKSUM_KEY)
        if recorded != sha256_text(json_text(obj)):
            raise DamagedFile(path, f"checksum mismatch — changed after it was written{tail}")
    missing = [k for k in required_keys if k not in obj]
    if missing:
        raise DamagedFile(path, f"missing {', '.join(missing)} — incomplete or damaged{tail}")
    return obj


def read_yaml_checked(path: str | os.PathLike, *, fix: str = "", require_checksum: bool = False) -> dict:
    """A YAML mapping from `path`; DamagedFile when it is unreadable, not YAML or not a mapping.

    A file written with `write_yaml(..., checksum=True)` is verified against its first line;
    `require_checksum` also refuses one without that line (a file this version wrote always has it).
    """
    path = Path(path)
    text, tail = _text_and_fix(path, fix)
    if text.startswith(YAML_CHECKSUM_PREFIX):  # written with checksum=True
        head, _, body = text.partition("\n")
        if head[len(YAML_CHECKSUM_PREFIX):].strip() != sha256_text(body):
            raise DamagedFile(path, f"checksum mismatch — changed after it was written{tail}")
        text = body
    elif require_checksum:
        raise DamagedFile(path, f"no checksum line — truncated, replaced or damaged{tail}")
    try:
        obj = yaml.safe_load(text)
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        where = f" at line {mark.line + 1}" if mark is not None else ""
        raise DamagedFile(path, f"not valid YAML{where}{tail}") from None
    if not isinstance(obj, dict):
        what = "empty" if obj is None else f"a {type(obj).__name__}, not a mapping"
        raise DamagedFile(path, f"{what}{tail}")
    return obj
