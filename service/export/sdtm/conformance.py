"""Our SDTM conformance check, driven by the SDTMIG 3.4 metadata in files/ (pure).

The CDISC CORE engine cannot run offline here, so these checks stand in for the CORE rules named
in CHECKS (SDTMIG conformance rule ids, which CORE rules implement; Pinnacle 21 ids where no
conformance rule exists). A sponsor can run CORE itself on the same export.
"""

from __future__ import annotations

import math
from collections import Counter, defaultdict
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from typing import Any, Literal

from service.export.sdtm.dates import complete_day, is_iso8601, sdtm_study_day
from service.export.sdtm.metadata import DomainSpec, Metadata
from service.export.sdtm.model import Dataset, Value

Severity = Literal["error", "warning"]

# check id → (the rules it stands in for, what it checks)
CHECKS: dict[str, tuple[str, str]] = {
    "domain_value": ("CG0413 (P21 SD0004)", "DOMAIN (or RDOMAIN's dataset) matches the dataset"),
    "required_variable": ("CG0014 (P21 SD0056)", "every Req variable is in the dataset"),
    "expected_variable": ("CG0016 (P21 SD0057)", "every Exp variable is in the dataset"),
    "unknown_variable": ("CG0013 (P21 SD0058)", "no variable outside the SDTMIG domain"),
    "required_value": ("CG0014 (P21 SD0002)", "Req variables are never null"),
    "type": ("CG0012 (P21 SD0055)", "Num variables hold numbers, Char variables text"),
    "length": (
        "CG0372, CG0406, CG0416, CG0417 (P21 SD0018, SD0017, SD1049, SD1022)",
        "text within its maximum (--TESTCD, QNAM 8; --TEST, QLABEL 40; others 200)",
    ),
    "codelist": (
        "CG0085 and the other non-extensible codelist rules (P21 CT2001); CG0020 (P21 CT2002)",
        "values in their codelist: an error for a closed one, a warning for an extensible one",
    ),
    "seq_unique": ("CG0028 (P21 SD0005)", "--SEQ unique per USUBJID"),
    "dm_one_record": ("CG0151 (P21 SD0083)", "one DM record per USUBJID"),
    "subject_in_dm": ("CG0029 (P21 SD0064)", "every USUBJID is in DM"),
    "iso8601": ("P21 SD0003 (SDTMIG 3.4 §4.4)", "every --DTC value is ISO 8601"),
    "study_day": (
        "CG0006 (the --DY algorithm)",
        "--DY equals the study day of its --DTC relative to DM.RFSTDTC; null for a partial date",
    ),
    "study_day_zero": ("CG0006 (P21 SD0038)", "no --DY is 0"),
    "epoch_set": (
        "none in CORE (SDTMIG 3.4 §4.1.4.9)",
        "EPOCH set on every record dated on or after RFSTDTC",
    ),
    "supp_parent": ("CG0371 (P21 SD0077)", "each SUPP-- record's parent record exists"),
    "supp_unique": ("CG0411 (P21 SD0086)", "one value per parent record and QNAM"),
}


@dataclass(frozen=True, slots=True)
class Finding:
    """One nonconformance: which check, where (dataset, variable, subject, row) and why."""

    check: str
    severity: Severity
    dataset: str
    variable: str | None
    usubjid: str | None
    row: int | None  # 1-based row of the dataset
    message: str

    def to_json(self) -> dict[str, Any]:
        """The wire shape (CLI and reports)."""
        return {
            "check": self.check,
            "stands_in_for": CHECKS[self.check][0],
            "severity": self.severity,
            "dataset": self.dataset,
            "variable": self.variable,
            "usubjid": self.usubjid,
            "row": self.row,
            "message": self.message,
        }

    def line(self) -> str:
        """One readable line: `ERROR AE row 3 (S-…) AESTDY [study_day]: message`."""
        where = " ".join(
            p
            for p in (
                self.dataset,
                f"row {self.row}" if self.row is not None else "",
                f"({self.usubjid})" if self.usubjid else "",
                self.variable or "",
            )
            if p
        )
        return f"{self.severity.upper()} {where} [{self.check}]: {self.message}"


def _blank(value: Value) -> bool:
    return value is None or (isinstance(value, str) and value.strip() == "")


def _is_number(value: Value) -> bool:
    return (
        isinstance(value, int | float)
        and not isinstance(value, bool)
        and not (isinstance(value, float) and not math.isfinite(value))
    )


class _Checker:
    """Collects the findings of one package."""

    def __init__(self, meta: Metadata) -> None:
        self.meta = meta
        self.findings: list[Finding] = []

    def add(
        self,
        check: str,
        dataset: str,
        message: str,
        *,
        variable: str | None = None,
        usubjid: Any = None,
        row: int | None = None,
        severity: Severity = "error",
    ) -> None:
        subject = usubjid if isinstance(usubjid, str) and usubjid else None
        self.findings.append(Finding(check, severity, dataset, variable, subject, row, message))

    def structure(self, name: str, spec: DomainSpec, columns: Iterable[str]) -> None:
        present = set(columns)
        for v in spec.variables:
            if v.name in present:
                continue
            if v.core == "Req":
                self.add("required_variable", name, "Req variable missing", variable=v.name)
            elif v.core == "Exp":
                self.add(
                    "expected_variable",
                    name,
                    "Exp variable missing",
                    variable=v.name,
                    severity="warning",
                )
        for column in sorted(present - set(spec.names)):
            self.add("unknown_variable", name, "not a variable of this domain", variable=column)

    def values(self, name: str, spec: DomainSpec, rows: list[dict[str, Value]]) -> None:
        domain = spec.parent or name
        for i, row in enumerate(rows, start=1):
            who = row.get("USUBJID")
            marker = row.get("RDOMAIN") if spec.parent else row.get("DOMAIN")
            if marker != domain:
                self.add(
                    "domain_value",
                    name,
                    f"{marker!r} is not {domain!r}",
                    variable="RDOMAIN" if spec.parent else "DOMAIN",
                    usubjid=who,
                    row=i,
                )
            for v in spec.variables:
                if v.name not in row:
                    continue
                value = row[v.name]
                if _blank(value):
                    if v.core == "Req":
                        self.add(
                            "required_value",
                            name,
                            "Req variable is null",
                            variable=v.name,
                            usubjid=who,
                            row=i,
                        )
                    continue
                self._value(name, v.name, value, i, who, spec)

    def _value(
        self, name: str, variable: str, value: Value, i: int, who: Any, spec: DomainSpec
    ) -> None:
        v = spec.variable(variable)
        assert v is not None
        if v.type == "Num":
            if not _is_number(value):
                self.add(
                    "type",
                    name,
                    f"{value!r} is not a number",
                    variable=variable,
                    usubjid=who,
                    row=i,
                )
            return
        if not isinstance(value, str):
            self.add("type", name, f"{value!r} is not text", variable=variable, usubjid=who, row=i)
            return
        if len(value) > v.max_length:
            self.add(
                "length",
                name,
                f"{len(value)} characters; at most {v.max_length}",
                variable=variable,
                usubjid=who,
                row=i,
            )
        if v.is_date and not is_iso8601(value):
            self.add(
                "iso8601",
                name,
                f"{value!r} is not an ISO 8601 date/time",
                variable=variable,
                usubjid=who,
                row=i,
            )
        codelist = self.meta.codelists.get(v.codelist) if v.codelist else None
        if codelist is not None and codelist.external is None and value not in codelist.values:
            closed = not codelist.extensible
            self.add(
                "codelist",
                name,
                f"{value!r} is not in codelist {codelist.id}"
                + ("" if closed else " (extensible: not in the subset this service ships)"),
                variable=variable,
                usubjid=who,
                row=i,
                severity="error" if closed else "warning",
            )

    def sequences(self, name: str, spec: DomainSpec, rows: list[dict[str, Value]]) -> None:
        seq = spec.seq
        if seq is None:
            return
        seen: Counter[tuple[Value, Value]] = Counter(
            (row.get("USUBJID"), row.get(seq)) for row in rows if not _blank(row.get(seq))
        )
        for i, row in enumerate(rows, start=1):
            key = (row.get("USUBJID"), row.get(seq))
            if not _blank(row.get(seq)) and seen[key] > 1:
                self.add(
                    "seq_unique",
                    name,
                    f"{seq} {row.get(seq)} appears {seen[key]} times for this subject",
                    variable=seq,
                    usubjid=row.get("USUBJID"),
                    row=i,
                )

    def timing(
        self,
        name: str,
        spec: DomainSpec,
        rows: list[dict[str, Value]],
        reference: Mapping[Any, Value],
    ) -> None:
        days = [v for v in spec.variables if v.is_study_day]
        start = next(
            (n for n in (f"{name}STDTC", f"{name}DTC") if n in spec.names and not spec.parent),
            None,
        )
        for i, row in enumerate(rows, start=1):
            who = row.get("USUBJID")
            if who not in reference:
                continue  # no DM record to count days from (subject_in_dm reports it)
            rf = reference.get(who)
            rfstdtc = rf if isinstance(rf, str) else None
            for v in days:
                if v.name not in row or v.dtc_partner not in row:
                    continue
                dy, dtc = row[v.name], row[v.dtc_partner]
                if dy == 0:
                    self.add(
                        "study_day_zero",
                        name,
                        "study day 0 does not exist",
                        variable=v.name,
                        usubjid=who,
                        row=i,
                    )
                want = sdtm_study_day(dtc if isinstance(dtc, str) else None, rfstdtc)
                if dy != want and not (dy == 0 and want is None):
                    self.add(
                        "study_day",
                        name,
                        f"{dy!r}; {v.dtc_partner} {dtc!r} and RFSTDTC {rfstdtc!r} give {want!r}",
                        variable=v.name,
                        usubjid=who,
                        row=i,
                    )
            if start is None or "EPOCH" not in spec.names:
                continue
            day, ref = complete_day(_text(row.get(start))), complete_day(rfstdtc)
            if day is not None and ref is not None and day >= ref and _blank(row.get("EPOCH")):
                self.add(
                    "epoch_set",
                    name,
                    f"no EPOCH for a record of {row.get(start)} (on or after RFSTDTC)",
                    variable="EPOCH",
                    usubjid=who,
                    row=i,
                )


def _text(value: Value) -> str | None:
    return value if isinstance(value, str) else None


def check(datasets: Mapping[str, Dataset], meta: Metadata) -> list[Finding]:
    """Every finding on a package of datasets (an empty list: conformant to these checks)."""
    checker = _Checker(meta)
    dm = datasets.get("DM")
    dm_rows = [dict(r) for r in dm.rows] if dm else []
    subjects = Counter(r.get("USUBJID") for r in dm_rows)
    reference = {r.get("USUBJID"): r.get("RFSTDTC") for r in dm_rows}
    for name, ds in datasets.items():
        spec = meta.domains.get(name, ds.spec)
        rows = [dict(r) for r in ds.rows]
        checker.structure(name, spec, ds.spec.names)
        checker.values(name, spec, rows)
        checker.sequences(name, spec, rows)
        checker.timing(name, spec, rows, reference)
        for i, row in enumerate(rows, start=1):
            who = row.get("USUBJID")
            if not _blank(who) and name != "DM" and subjects[who] == 0:
                checker.add(
                    "subject_in_dm",
                    name,
                    "USUBJID not in DM",
                    variable="USUBJID",
                    usubjid=who,
                    row=i,
                )
        if spec.parent:
            _supplemental(checker, name, rows, datasets.get(spec.parent))
    for i, row in enumerate(dm_rows, start=1):
        who = row.get("USUBJID")
        if not _blank(who) and subjects[who] > 1:
            checker.add(
                "dm_one_record",
                "DM",
                f"{subjects[who]} DM records",
                variable="USUBJID",
                usubjid=who,
                row=i,
            )
    return checker.findings


def _supplemental(
    checker: _Checker, name: str, rows: list[dict[str, Value]], parent: Dataset | None
) -> None:
    """Each SUPP-- record names one existing parent record, once per QNAM."""
    index: dict[tuple[Value, str, str], int] = defaultdict(int)
    if parent is not None:
        for prow in parent.rows:
            for variable, value in prow.items():
                if variable.endswith("SEQ") or variable.endswith("GRPID"):
                    index[(prow.get("USUBJID"), variable, str(value))] += 1
    seen: Counter[tuple[Value, Value, Value, Value]] = Counter(
        (r.get("USUBJID"), r.get("IDVAR"), r.get("IDVARVAL"), r.get("QNAM")) for r in rows
    )
    for i, row in enumerate(rows, start=1):
        who, idvar, idval = row.get("USUBJID"), row.get("IDVAR"), row.get("IDVARVAL")
        key = (who, idvar, idval, row.get("QNAM"))
        if seen[key] > 1:
            checker.add(
                "supp_unique",
                name,
                f"{seen[key]} values of {row.get('QNAM')} for one parent record",
                variable="QNAM",
                usubjid=who,
                row=i,
            )
        if _blank(idvar):
            continue  # a subject-level qualifier (DM): its parent is the DM record
        if index[(who, str(idvar), str(idval))] == 0:
            checker.add(
                "supp_parent",
                name,
                f"no parent record with {idvar} = {idval!r}",
                variable="IDVARVAL",
                usubjid=who,
                row=i,
            )
