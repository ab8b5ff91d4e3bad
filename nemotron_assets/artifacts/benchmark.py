"""mcq_benchmark_parquet: the BYOB multiple-choice schema, with answer index and letter in agreement."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from nemotron_assets.artifacts.files import data_files, read_parquet
from nemotron_assets.errors import contract_error

COLUMNS = ("question_id", "question", "options", "answer_index", "answer", "cot_content", "src", "category")


def validate_mcq_benchmark(path: Path) -> dict[str, Any]:
    rows = 0
    for file in data_files(path, (".parquet",)):
        table = read_parquet(file, "mcq_schema_mismatch")
        missing = [c for c in COLUMNS if c not in table.column_names]
        if missing:
            raise contract_error("mcq_schema_mismatch", f"{file}: missing columns {missing}")
        for i, row in enumerate(table.select(["question_id", "options", "answer_index", "answer"]).to_pylist()):
            options, index = row["options"] or [], row["answer_index"]
            if len(options) < 2 or not (0 <= index < len(options)) or row["answer"] != chr(ord("A") + index):
                raise contract_error(
                    "mcq_schema_mismatch", f"{file} row {i} ({row['question_id']}): bad options/answer"
                )
        rows += table.num_rows
    if rows == 0:
        raise contract_error("empty_artifact", f"{path}: no questions")
    return {"questions": rows}
