"""The files of an SDTM export: Dataset-JSON v1.1, SAS XPORT v5 (pyreadstat) and CSV.

Every format carries the same values: a null is `null` in Dataset-JSON, an empty string (Char)
or a missing value (Num) in XPORT, and an empty field in CSV.
"""

from __future__ import annotations

import csv
import functools
import io
import json
import math
import tempfile
from importlib import resources
from pathlib import Path
from typing import TYPE_CHECKING, Any

import jsonschema

from service.export.sdtm.metadata import Variable
from service.export.sdtm.model import Dataset, Package, Value

if TYPE_CHECKING:  # pandas and pyreadstat are imported by the XPORT writer, not at start-up
    import pandas as pd

DATASET_JSON_VERSION = "1.1.0"
ORIGINATOR = "trialbridge"
_INTEGER_SUFFIXES = ("SEQ", "DY", "CD")
_INTEGERS = frozenset({"AGE", "VISITNUM"})


def mdv_oid(study_id: str) -> str:
    """The define.xml MetaDataVersion OID every file names."""
    return f"MDV.{study_id}.SDTMIG.3.4"


def item_oid(dataset: str, variable: str) -> str:
    """A variable's ItemDef OID (shared by Dataset-JSON columns and define.xml)."""
    return f"IT.{dataset}.{variable}"


def is_integer(v: Variable) -> bool:
    """A Num variable that only holds whole numbers (--SEQ, --DY, codes, AGE, VISITNUM)."""
    return v.type == "Num" and (v.name in _INTEGERS or v.name.endswith(_INTEGER_SUFFIXES))


def data_type(v: Variable) -> str:
    """The Dataset-JSON dataType (and define.xml DataType, after `define_type`)."""
    if v.type == "Num":
        return "integer" if is_integer(v) else "double"
    return "datetime" if v.is_date else "string"


def define_type(v: Variable) -> str:
    """Define-XML 2.1 DataType: integer, float, datetime or text."""
    return {"integer": "integer", "double": "float", "datetime": "datetime"}.get(
        data_type(v), "text"
    )


def column_length(ds: Dataset, v: Variable) -> int | None:
    """A Char column's length: its longest value (at least 1), as SDTM submissions size them."""
    if v.type != "Char":
        return None
    return max([1, *(len(str(r.get(v.name))) for r in ds.rows if r.get(v.name) is not None)])


def _version() -> str:
    from importlib.metadata import PackageNotFoundError, version

    try:
        return version("trialbridge")
    except PackageNotFoundError:  # pragma: no cover - run from a source tree without install
        return "0"


def _cell(v: Variable, value: Value) -> Value:
    if value is None or v.type != "Num":
        return value
    return int(value) if is_integer(v) else float(value)


def dataset_json(ds: Dataset, package: Package) -> dict[str, Any]:
    """The dataset as a CDISC Dataset-JSON v1.1 document."""
    keys = ds.spec.keys
    columns: list[dict[str, Any]] = []
    for v in ds.spec.variables:
        column: dict[str, Any] = {
            "itemOID": item_oid(ds.name, v.name),
            "name": v.name,
            "label": v.label,
            "dataType": data_type(v),
        }
        length = column_length(ds, v)
        if length is not None:
            column["length"] = length
        if v.name in keys:
            column["keySequence"] = keys.index(v.name) + 1
        columns.append(column)
    return {
        "datasetJSONCreationDateTime": package.created,
        "datasetJSONVersion": DATASET_JSON_VERSION,
        "fileOID": f"{package.study_id}.{ds.name}",
        "originator": ORIGINATOR,
        "sourceSystem": {"name": ORIGINATOR, "version": _version()},
        "studyOID": package.study_id,
        "metaDataVersionOID": mdv_oid(package.study_id),
        "metaDataRef": "define.xml",
        "itemGroupOID": f"IG.{ds.name}",
        "records": len(ds.rows),
        "name": ds.name,
        "label": ds.spec.label,
        "columns": columns,
        "rows": [[_cell(v, row.get(v.name)) for v in ds.spec.variables] for row in ds.rows],
    }


def dataset_json_bytes(ds: Dataset, package: Package) -> bytes:
    """Dataset-JSON as UTF-8 bytes."""
    return json.dumps(dataset_json(ds, package), ensure_ascii=False).encode()


@functools.cache
def _validator() -> jsonschema.protocols.Validator:
    text = resources.files("service.export.sdtm.schemas").joinpath("dataset.schema.json")
    schema = json.loads(text.read_text())
    return jsonschema.Draft201909Validator(schema)


def schema_errors(document: Any) -> list[str]:
    """Where a Dataset-JSON document breaks the official v1.1 schema (empty: valid)."""
    return [
        f"{'/'.join(str(p) for p in e.absolute_path) or '(root)'}: {e.message}"
        for e in sorted(_validator().iter_errors(document), key=lambda e: list(e.absolute_path))
    ]


def _frame(ds: Dataset) -> pd.DataFrame:
    import pandas as pd

    data: dict[str, Any] = {}
    for v in ds.spec.variables:
        values = [row.get(v.name) for row in ds.rows]
        if v.type == "Num":
            data[v.name] = pd.Series(
                [math.nan if x is None else float(x) for x in values], dtype="float64"
            )
        else:
            data[v.name] = pd.Series(["" if x is None else str(x) for x in values], dtype=object)
    return pd.DataFrame(data, columns=list(ds.spec.names))


def write_xpt(ds: Dataset, path: Path) -> None:
    """The dataset as a SAS XPORT version 5 file (names ≤ 8, labels ≤ 40, text ≤ 200)."""
    import pyreadstat  # with pandas, ~50 MB a process that may never export

    pyreadstat.write_xport(
        _frame(ds),
        str(path),
        file_label=ds.spec.label,
        column_labels=[v.label for v in ds.spec.variables],
        table_name=ds.name,
        file_format_version=5,
    )


def xpt_bytes(ds: Dataset) -> bytes:
    """The XPORT file's bytes (written through a temporary file: the writer needs a path)."""
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / f"{ds.name.lower()}.xpt"
        write_xpt(ds, path)
        return path.read_bytes()


def _csv_value(v: Variable, value: Value) -> str:
    if value is None:
        return ""
    if v.type == "Num":
        number = float(value)
        return str(int(number)) if number.is_integer() else repr(number)
    return str(value)


def csv_text(ds: Dataset) -> str:
    """The dataset as CSV: a header of variable names, then one line per row."""
    out = io.StringIO()
    writer = csv.writer(out, lineterminator="\r\n")
    writer.writerow(ds.spec.names)
    for row in ds.rows:
        writer.writerow([_csv_value(v, row.get(v.name)) for v in ds.spec.variables])
    return out.getvalue()
