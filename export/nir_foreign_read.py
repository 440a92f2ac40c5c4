"""Reading a NIR file written by another tool: every node with no or an unknown type, a missing or unknown
field, and every edge to no node is named before `nir.read` sees the file (whose own errors name nothing).
"""
from __future__ import annotations

import dataclasses

import h5py
import nir
import numpy as np

from durableio import NIR_READ_ERRORS

from .nir_foreign_check import ForeignGraphError, raise_problems


# NIR's node types as its reader knows them, and the fields of each on file (nir.write writes one dataset
# per dataclass field; Input and Output write their shape).
NIR_TYPES = {name: getattr(nir, name) for name in ("Affine", "AvgPool2d", "Conv1d", "Conv2d", "CubaLI", "CubaLIF",
                                                    "Delay", "Flatten", "I", "IF", "Input", "LI", "LIF", "Linear",
                                                    "NIRGraph", "Output", "Scale", "SumPool2d", "Threshold")}
DERIVED_FIELDS = ("input_type", "output_type", "metadata")


def _file_fields(cls) -> tuple[set[str], set[str]]:
    """The datasets a node of this type must have, and those it may have."""
    if cls in (nir.Input, nir.Output):
        return {"shape"}, {"shape"}
    fields = [f for f in dataclasses.fields(cls) if f.name not in DERIVED_FIELDS]
    required = {f.name for f in fields if f.default is dataclasses.MISSING and
                f.default_factory is dataclasses.MISSING}
    return required, {f.name for f in fields} | ({"input_type"} if cls is nir.Flatten else set())


def _text(value) -> str | None:
    value = value.item() if isinstance(value, np.ndarray) and value.ndim == 0 else value
    if isinstance(value, bytes):
        return value.decode("utf-8", "replace")
    return value if isinstance(value, str) else None


def _scan_graph(prefix: str, group: h5py.Group, problems: list[str]) -> None:
    nodes, edges = group.get("nodes"), group.get("edges")
    if not isinstance(nodes, h5py.Group):
        problems.append(f"graph {prefix or '/node'!r}: has no 'nodes' group")
        return
    for name, node in nodes.items():
        _scan_node(prefix + name, node, problems)
    if not isinstance(edges, h5py.Dataset):
        problems.append(f"graph {prefix or '/node'!r}: has no 'edges' dataset")
        return
    if edges.size is not None and edges.size > MAX_DATASET_VALUES:
        problems.append(f"graph {prefix or '/node'!r}: edges claim {edges.size} values: a damaged file?")
        return
    array = np.asarray(edges[()], dtype=object)
    if array.size and (array.ndim != 2 or array.shape[1] != 2):
        problems.append(f"graph {prefix or '/node'!r}: edges have shape {array.shape}, not (E, 2)")
        return
    for a, b in array.reshape(-1, 2):
        a, b = _text(a), _text(b)
        for end in (a, b):
            if end is None or end not in nodes:
                problems.append(f"edge {a!r} -> {b!r}: no node named {end!r}")


# The most values one dataset may claim: 2^27 (a 1 GiB float64 weight matrix, 11,585 x 11,585), far above any
# network we compile; a damaged header can claim billions, which h5py would try to allocate when nir.read reads it.
MAX_DATASET_VALUES = 1 << 27


def _oversized(name: str, group: h5py.Group, problems: list[str]) -> None:
    for key, item in group.items():
        if isinstance(item, h5py.Dataset) and item.size is not None and item.size > MAX_DATASET_VALUES:
            problems.append(f"node {name!r}: dataset {key!r} claims {item.size} values (shape {item.shape}), more "
                            f"than {MAX_DATASET_VALUES}: a damaged file?")
        elif isinstance(item, h5py.Group) and key == "metadata":
            _oversized(name, item, problems)


def _scan_node(name: str, node, problems: list[str]) -> None:
    if not isinstance(node, h5py.Group):
        problems.append(f"node {name!r}: not an HDF5 group")
        return
    _oversized(name, node, problems)
    kind = _text(node["type"][()]) if isinstance(node.get("type"), h5py.Dataset) else None
    if kind is None:
        problems.append(f"node {name!r}: has no 'type' string")
        return
    cls = NIR_TYPES.get(kind)
    if cls is None:
        problems.append(f"node {name!r}: type {kind!r} is not a NIR node type")
        return
    if "metadata" in node and not isinstance(node["metadata"], h5py.Group):
        problems.append(f"node {name!r}: metadata is not a group")
    if cls is nir.NIRGraph:
        _scan_graph(name + ".", node, problems)
        return
    required, allowed = _file_fields(cls)
    keys = set(node.keys()) - {"type", "metadata"}
    for field in sorted(required - keys):
        problems.append(f"node {name!r} ({kind}): field {field!r} is missing")
    for field in sorted(keys - allowed):
        problems.append(f"node {name!r} ({kind}): unknown field {field!r}")


def structural_problems(path: str) -> list[str]:
    """Every structural problem of a NIR file, by node: a missing or unknown type, a missing or unknown field,
    an edge to no node ([] for none). A file that is no HDF5 file or no NIR graph is a ForeignGraphError."""
    problems = []
    try:
        with h5py.File(path, "r") as f:
            top = f.get("node")
            kind = _text(top["type"][()]) if isinstance(top, h5py.Group) and \
                isinstance(top.get("type"), h5py.Dataset) else None
            if kind != "NIRGraph":
                raise ForeignGraphError(f"{path}: not a NIR graph (no /node of type NIRGraph)")
            _scan_graph("", top, problems)
    except ForeignGraphError:
        raise
    except (OSError, RuntimeError, KeyError, ValueError, TypeError) as err:  # h5py's on a damaged file
        raise ForeignGraphError(f"{path}: not a readable HDF5 file ({type(err).__name__}: {err})") from None
    return problems


def read_foreign(path: str) -> nir.NIRGraph:
    """A NIR file read with every structural problem listed by node (`structural_problems`) before `nir.read`,
    whose own errors do not say where."""
    problems = structural_problems(path)
    if problems:
        raise_problems([f"{path}: {problems[0]}"] + problems[1:])
    try:
        return nir.read(path)
    except NIR_READ_ERRORS as err:  # nir's constructors and type checks: many kinds, none naming the node
        raise ForeignGraphError(f"{path}: not a valid NIR graph ({type(err).__name__}: {err})") from None
