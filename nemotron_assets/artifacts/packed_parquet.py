"""packed_parquet: packed SFT bins in Parquet, laid out as Megatron-Bridge's packed-sequence loader reads them.

One row = one bin: `input_ids` list<int32>, `loss_mask` list<uint8> (already shifted for labels),
`seq_start_id` list<int32> (start offset of each sub-sequence, beginning at 0).
Layout: shards/shard_NNNNNN.parquet and splits/{train,valid,test}/<pos>__<dataset>__shard_NNNNNN.parquet links.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np

from nemotron_assets.artifacts.files import data_files, read_parquet, read_provenance
from nemotron_assets.errors import contract_error

SPLITS = ("train", "valid", "test")
COLUMNS = {
    "input_ids": "list<element: int32>",
    "loss_mask": "list<element: uint8>",
    "seq_start_id": "list<element: int32>",
}


def arrow_schema():
    import pyarrow as pa

    return pa.schema(
        [
            ("input_ids", pa.list_(pa.int32())),
            ("loss_mask", pa.list_(pa.uint8())),
            ("seq_start_id", pa.list_(pa.int32())),
        ]
    )


def _offsets_and_values(column) -> tuple[np.ndarray, np.ndarray]:
    array = column.combine_chunks()
    return array.offsets.to_numpy(), array.values.to_numpy()


def check_shard(path: Path, pack_size: int | None) -> dict[str, int]:
    """Validate one shard; return bins, tokens, sequences and trainable tokens."""
    table = read_parquet(path)
    types = {name: str(table.schema.field(name).type) for name in table.schema.names}
    if {k: types.get(k) for k in COLUMNS} != COLUMNS:
        raise contract_error("artifact_type_mismatch", f"{path}: columns {types} are not the packed schema {COLUMNS}")
    ids_off, _ = _offsets_and_values(table["input_ids"])
    mask_off, mask = _offsets_and_values(table["loss_mask"])
    start_off, starts = _offsets_and_values(table["seq_start_id"])
    lengths = np.diff(ids_off)
    if not np.array_equal(lengths, np.diff(mask_off)):
        row = int(np.flatnonzero(lengths != np.diff(mask_off))[0])
        raise contract_error("bad_loss_masks", f"{path}: row {row} has loss_mask length != input_ids length")
    if mask.size and mask.max() > 1:
        raise contract_error("bad_loss_masks", f"{path}: loss_mask values outside {{0, 1}}")
    if pack_size is not None and lengths.size and lengths.max() > pack_size:
        raise contract_error("bad_loss_masks", f"{path}: a bin holds {lengths.max()} tokens > pack_size {pack_size}")
    counts = np.diff(start_off)
    if (counts == 0).any() or (starts[start_off[:-1]] != 0).any():
        raise contract_error("bad_loss_masks", f"{path}: every bin's seq_start_id must start with 0")
    steps = np.diff(starts)
    row_starts = start_off[1:-1] - 1  # positions in `steps` that cross a row boundary
    inner = np.ones(steps.size, bool)
    inner[row_starts[row_starts < steps.size]] = False
    if (steps[inner] <= 0).any() or (starts[start_off[1:] - 1] >= lengths).any():
        raise contract_error("bad_loss_masks", f"{path}: seq_start_id not strictly increasing inside its bin")
    return {
        "bins": int(lengths.size),
        "tokens": int(lengths.sum()),
        "sequences": int(counts.sum()),
        "trainable_tokens": int(mask.sum(dtype=np.int64)),
    }


def validate_packed_parquet(path: Path) -> dict[str, Any]:
    """Contract of a packed_parquet artifact: schema, mask alignment, seq_start_id, non-empty train split."""
    if not path.is_dir():
        raise contract_error("artifact_missing", f"{path}: a packed_parquet artifact is a directory")
    provenance = read_provenance(path) or {}
    pack_size = provenance.get("params", {}).get("pack_size")
    totals = {"shards": 0, "bins": 0, "tokens": 0, "sequences": 0, "trainable_tokens": 0}
    for shard in data_files(path / "shards" if (path / "shards").is_dir() else path, (".parquet",)):
        totals["shards"] += 1
        for key, value in check_shard(shard, pack_size).items():
            totals[key] += value
    if totals["trainable_tokens"] == 0:
        raise contract_error("bad_loss_masks", f"{path}: no token has loss_mask 1")
    splits = {s: sorted((path / "splits" / s).glob("*.parquet")) for s in SPLITS}
    if not splits["train"] or not all(p.exists() for files in splits.values() for p in files):
        raise contract_error("artifact_missing", f"{path}: splits/train is empty or a split link is broken")
    stats: dict[str, Any] = totals | {f"{s}_shards": len(files) for s, files in splits.items()}
    if pack_size:
        stats["pack_size"] = pack_size
        stats["packing_efficiency"] = round(100 * totals["tokens"] / (totals["bins"] * pack_size), 3)
    return stats
