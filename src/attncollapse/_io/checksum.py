"""The digests self-verifying files carry (docs/FORMATS.md, "Verified files").

JSON files hold `"checksum": "sha256:<hex>"` as their first key, YAML files a first line
`# checksum: sha256:<hex>`, safetensors files a digest of their tensors in the header;
checkpoint directories a manifest of file digests. `verified.py` reads them back.
"""

from __future__ import annotations

import hashlib
import json
import os
from pathlib import Path
from typing import Any

CHECKSUM_KEY = "checksum"
"""The key under which a self-verifying JSON file holds `sha256:<hex>` of the rest (docs/FORMATS.md)."""

YAML_CHECKSUM_PREFIX = "# checksum: "
"""First line of a self-verifying YAML file: `# checksum: sha256:<hex>` of the text after it."""


def json_text(obj: Any) -> str:
    """The JSON text `write_json` writes (and a checksum is taken of)."""
    return json.dumps(obj, indent=2, sort_keys=False)


def sha256_text(text: str) -> str:
    """`sha256:<hex>` of UTF-8 `text`."""
    return "sha256:" + hashlib.sha256(text.encode("utf-8")).hexdigest()


def sha256_file(path: str | os.PathLike) -> str:
    """The bare hex sha256 of a file's bytes (read in 4 MiB blocks)."""
    h = hashlib.sha256()
    with open(path, "rb") as fh:
        for block in iter(lambda: fh.read(1 << 22), b""):
            h.update(block)
    return h.hexdigest()


def json_has_checksum(path: str | os.PathLike) -> bool:
    """Whether `path` starts as `write_json(..., checksum=True)` writes (cheap: its first bytes)."""
    try:
        with open(Path(path), "rb") as fh:
            return fh.read(40).startswith(b'{\n  "' + CHECKSUM_KEY.encode() + b'": "sha256:')
    except OSError:
        return False
