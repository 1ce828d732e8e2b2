"""Parquet shards with tensor columns (Arrow's canonical `fixed_shape_tensor`, readable without Ray or torch)."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from ..artifacts import atomic_file


def write_shard(path: str | Path, columns: dict[str, np.ndarray], meta: dict) -> None:
    """Write one shard atomically: it exists under its final name only when complete (the unit of resume)."""
    arrays = {}
    for name, values in columns.items():
        if values.ndim > 1:
            arrays[name] = pa.FixedShapeTensorArray.from_numpy_ndarray(np.ascontiguousarray(values))
        else:
            arrays[name] = pa.array(values)
    table = pa.table(arrays).replace_schema_metadata({"trce_ray": json.dumps(meta)})
    with atomic_file(path) as tmp:
        pq.write_table(table, tmp)


def shard_meta(path: str | Path) -> dict:
    """The metadata written with a shard (kind, items, denoiser rows spent), read from the footer only."""
    return json.loads(pq.read_schema(path).metadata[b"trce_ray"])


def read_shard(path: str | Path) -> dict[str, np.ndarray]:
    table = pq.read_table(path)
    out = {}
    for name in table.column_names:
        col = table.column(name).combine_chunks()
        out[name] = col.to_numpy_ndarray() if isinstance(col, pa.FixedShapeTensorArray) else col.to_numpy()
    return out
