"""Plumbing shared by every stage, one room per concern:

- `atomic`: atomic writes (temp file, fsync, `os.replace`), unchecked reads, disk-full lines;
- `checksum`: the digests self-verifying files carry (docs/FORMATS.md "Verified files");
- `verified`: reading files back checked (`DamagedFile` names a damaged or edited one);
- `tensors`: safetensors files with their own digest; `arrays`: .npz files likewise;
- `checkpoints`: checkpoint directories with a manifest;
- `env`: the environment record (`env.json`);
- `progress`: progress lines for terminals and logs.

Every name is re-exported here, so callers write `from .. import _io` and `_io.write_json`.
`_io.open_output` is the seam every file body is written through (tests replace it to
inject a full disk; `atomic.write_bytes` looks it up here at call time).
"""

from .atomic import (
    atomic_path,
    disk_full_message,
    follow_umask,
    jsonable,
    open_output,
    read_json,
    read_yaml,
    umask,
    write_bytes,
    write_json,
    write_text,
    write_yaml,
)
from .arrays import ARRAYS_CHECKSUM, arrays_digest, load_arrays_checked, save_arrays
from .checkpoints import (
    checkpoint_dir,
    checkpoint_name,
    checkpoints,
    clean_orphans,
    prune_checkpoints,
    verify_checkpoint,
)
from .checksum import (
    CHECKSUM_KEY,
    YAML_CHECKSUM_PREFIX,
    json_has_checksum,
    json_text,
    sha256_file,
    sha256_text,
)
from .env import environment, git_commit
from .progress import PlainProgress, progress
from .tensors import TENSOR_META_KEY, load_tensors_checked, save_tensors, tensors_digest
from .verified import (
    FINAL_JSON_KEYS,
    DamagedFile,
    read_json_checked,
    read_text_checked,
    read_yaml_checked,
)

__all__ = [
    "ARRAYS_CHECKSUM", "arrays_digest", "load_arrays_checked", "save_arrays",
    "CHECKSUM_KEY", "FINAL_JSON_KEYS", "TENSOR_META_KEY", "YAML_CHECKSUM_PREFIX",
    "DamagedFile", "PlainProgress",
    "atomic_path", "checkpoint_dir", "checkpoint_name", "checkpoints", "clean_orphans",
    "disk_full_message", "follow_umask", "environment", "git_commit", "json_has_checksum", "json_text",
    "jsonable", "load_tensors_checked", "open_output", "progress", "prune_checkpoints",
    "read_json", "read_json_checked", "read_text_checked", "read_yaml", "read_yaml_checked",
    "save_tensors", "sha256_file", "sha256_text", "tensors_digest", "umask", "verify_checkpoint",
    "write_bytes", "write_json", "write_text", "write_yaml",
]
