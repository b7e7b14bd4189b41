"""Read the tensors of a TorchScript archive without running any of its code.

`torch.jit.load` compiles the archive's `code/` and runs each object's `__setstate__`
while unpickling `data.pkl`: an archive is a program, and a program can write files
(`torch.from_file(path, shared=True)`), so a downloaded "ViT-B-32.pt" must never reach it.
Here `data.pkl` goes through a restricted unpickler instead: it admits the tensor records
(`torch._utils._rebuild_tensor_v2` over `('storage', ...)` persistent ids, read from
`data/<key>`) and the containers TorchScript writes, and turns every `__torch__.*` class
into an inert `ScriptObject` that only stores its state. The `code/` files are read as
text for each class's `__parameters__` and `__buffers__` lines, which is what
`ScriptModule.state_dict()` returns. Anything else in the pickle is refused.
"""

from __future__ import annotations

import ast
import io
import pickle
import re
import zipfile
from pathlib import Path

import torch
from torch import Tensor

# torch.save/jit.save storage classes (`torch.FloatStorage`, ...) → dtype.
_STORAGES = {"DoubleStorage": torch.float64, "FloatStorage": torch.float32, "HalfStorage": torch.float16,
             "BFloat16Storage": torch.bfloat16, "LongStorage": torch.int64, "IntStorage": torch.int32,
             "ShortStorage": torch.int16, "CharStorage": torch.int8, "ByteStorage": torch.uint8,
             "BoolStorage": torch.bool}
# `class X(Module):` ... `__parameters__ = ["a", "b", ]` / `__buffers__ = [...]` in code/*.py.
_CLASS = re.compile(r"^class (\w+)\(Module\):\n((?:[ \t]+.*\n|\n)*)", re.M)
_NAMES = re.compile(r"^\s+__(parameters|buffers)__ = (\[.*\])\s*$", re.M)


class ScriptObject:
    """An inert stand-in for a TorchScript class instance: its qualified name and state."""

    qualname = ""
    state = None

    def __setstate__(self, state) -> None:  # pickle's BUILD: store, never run the archive's code
        self.state = state


def _rebuild_tensor(storage: Tensor, offset: int, size, stride, requires_grad=False, hooks=None,
                    metadata=None) -> Tensor:
    # torch._utils._rebuild_tensor_v2's arguments, over a flat tensor of the storage; cloned
    # so that no two weights share memory (safetensors refuses shared tensors).
    return torch.as_strided(storage, tuple(size), tuple(stride), offset).clone()


def _build_list(items):  # torch.jit._pickle.build_{int,double,bool,tensor}list
    return list(items)


def _restore_type_tag(value, type_str=None):  # torch.jit._pickle.restore_type_tag
    return value


_ALLOWED = {
    ("torch._utils", "_rebuild_tensor_v2"): _rebuild_tensor,
    ("torch._utils", "_rebuild_tensor"): _rebuild_tensor,
    ("collections", "OrderedDict"): dict,
    ("builtins", "set"): set,
    ("builtins", "frozenset"): frozenset,
    ("builtins", "complex"): complex,
    ("torch.jit._pickle", "build_intlist"): _build_list,
    ("torch.jit._pickle", "build_doublelist"): _build_list,
    ("torch.jit._pickle", "build_boollist"): _build_list,
    ("torch.jit._pickle", "build_tensorlist"): _build_list,
    ("torch.jit._pickle", "build_tensor_from_id"): None,  # refused: tensors by id come from outside
    ("torch.jit._pickle", "restore_type_tag"): _restore_type_tag,
}


class _Unpickler(pickle.Unpickler):
    """`data.pkl` of a TorchScript archive, with only tensor records and inert objects."""

    def __init__(self, data: bytes, zf: zipfile.ZipFile, prefix: str):
        super().__init__(io.BytesIO(data))
        self.zf, self.prefix, self.storages = zf, prefix, {}
        self.classes: set[str] = set()

    def find_class(self, module: str, name: str):
        if module == "__torch__" or module.startswith("__torch__."):
            qualname = f"{module}.{name}"
            self.classes.add(qualname)
            # NEWOBJ makes `cls.__new__(cls)`, BUILD calls our __setstate__: no archive code runs.
            return type(name, (ScriptObject,), {"qualname": qualname})
        if module == "torch" and name in _STORAGES:
            return _STORAGES[name]
        fn = _ALLOWED.get((module, name))
        if fn is None:
            raise pickle.UnpicklingError(f"refused global {module}.{name}")
        return fn

    def persistent_load(self, pid):
        if not (isinstance(pid, tuple) and len(pid) == 5 and pid[0] == "storage"
                and isinstance(pid[1], torch.dtype) and isinstance(pid[2], str)):
            raise pickle.UnpicklingError(f"refused persistent id {str(pid)[:60]}")
        _, dtype, key, _location, numel = pid
        if key not in self.storages:
            raw = bytearray(self.zf.read(f"{self.prefix}/data/{key}"))
            flat = torch.frombuffer(raw, dtype=dtype) if raw else torch.empty(0, dtype=dtype)
            if flat.numel() < numel:
                raise pickle.UnpicklingError(f"storage {key} holds {flat.numel()} of {numel} elements")
            self.storages[key] = flat
        return self.storages[key]


def _tensor_names(zf: zipfile.ZipFile, prefix: str) -> dict[str, tuple[list[str], list[str]]]:
    """Qualified class name → (parameter names, buffer names), read from code/*.py as text."""
    out = {}
    for name in zf.namelist():
        if not (name.startswith(f"{prefix}/code/") and name.endswith(".py")):
            continue
        module = name[len(prefix) + len("/code/"):-len(".py")].replace("/", ".")
        text = zf.read(name).decode("utf-8", "replace")
        for cls, body in _CLASS.findall(text):
            lists = {kind: ast.literal_eval(value) for kind, value in _NAMES.findall(body)}
            out[f"{module}.{cls}"] = (list(lists.get("parameters", [])), list(lists.get("buffers", [])))
    return out


def _walk(obj: ScriptObject, prefix: str, names: dict, out: dict[str, Tensor]) -> None:
    """`ScriptModule.state_dict()` order and names: own parameters, own buffers, then submodules."""
    state = obj.state if isinstance(obj.state, dict) else {}
    params, buffers = names.get(obj.qualname, ([], []))
    for key in (*params, *buffers):
        if isinstance(state.get(key), Tensor):
            out[prefix + key] = state[key]
    for key, value in state.items():
        if isinstance(value, ScriptObject) and value.qualname in names:
            _walk(value, f"{prefix}{key}.", names, out)


def read_torchscript(path: str | Path) -> tuple[dict[str, Tensor], set[str]]:
    """The state dict of a TorchScript archive and the class names in it, executing nothing.

    Args:
        path: a `torch.jit.save` archive (a zip holding `<name>/data.pkl`, `constants.pkl`,
            `code/` and `data/<key>` storages), such as OpenAI's `ViT-B-32.pt`.

    Returns:
        (name → tensor, as `torch.jit.load(path).state_dict()` gives it; the bare class
        names of the archive's objects, mangling dropped: {"QuickGELU", "LayerNorm", ...}).

    Raises:
        pickle.UnpicklingError: the pickle holds anything but tensors, containers and
            TorchScript objects.
        ValueError: a big-endian archive, or no `data.pkl`.
    """
    with zipfile.ZipFile(path) as zf:
        data = [n for n in zf.namelist() if n.count("/") == 1 and n.endswith("/data.pkl")]
        if not data:
            raise ValueError("no data.pkl in the archive")
        prefix = data[0].split("/")[0]
        order = f"{prefix}/byteorder"
        if order in zf.namelist() and zf.read(order).strip() not in (b"", b"little"):
            raise ValueError("a big-endian archive")
        unpickler = _Unpickler(zf.read(data[0]), zf, prefix)
        root = unpickler.load()
        names = _tensor_names(zf, prefix)
    if not isinstance(root, ScriptObject):
        raise ValueError("data.pkl holds no TorchScript module")
    out: dict[str, Tensor] = {}
    _walk(root, "", names, out)
    return out, {q.rsplit(".", 1)[-1] for q in unpickler.classes}
