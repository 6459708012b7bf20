"""SDTM rows from trial events (pure): DM, EX, CM, PR, AE, DS, MH, TU, TR and SUPPDM/SUPPAE.

Every subject is a study subject as the service already knows it (pseudonymous subject id,
enrollment day, Day 1); nothing here decides who is a subject or re-derives Day 1. Mapping
choices, and where the HL7 FHIR-to-CDISC mapping guide has none, are in docs/sdtm.md.
"""

from __future__ import annotations

import datetime as dt
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass
from decimal import Decimal, InvalidOperation
from typing import Any

from fhir_mapping.events.adverse_event import MEDDRA_SYSTEMS
from fhir_mapping.events.model import EventKind, TrialEvent
from fhir_mapping.partial_dates import PartialDate, parse_partial_date
from fhir_mapping.terminology import codings, concept_texts
from service.export.sdtm.dates import Epochs, sdtm_study_day
from service.export.sdtm.metadata import Metadata, StudyDesign
from service.export.sdtm.model import Row, Value
from service.privacy.ages import whole_years
from service.studies.kind import StudyTreatment, TabulationPlan

SNOMED = "http://snomed.info/sct"
_PROCEDURES = (EventKind.BIOPSY, EventKind.LUNG_RESECTION, EventKind.PROCEDURE)
_UNDATED = (dt.date.max, dt.datetime.max.replace(tzinfo=dt.UTC))


@dataclass(frozen=True, slots=True)
class SubjectRecord:
    """A study subject as stored by the service, with all of its events."""

    subject_id: str  # the pseudonymous id the trial API uses: USUBJID
    subject_number: str | None
    status: str
    enrolled_on: dt.date | None
    day1: dt.date | None  # the service's Day 1: RFSTDTC
    events: Sequence[TrialEvent]


@dataclass(frozen=True, slots=True)
class _Record:
    """A row before its --SEQ: ordered by date, then topic, then source."""

    key: tuple[Any, ...]
    row: Row
    event: TrialEvent | None = None


def _sort_date(date: PartialDate | None) -> tuple[dt.date, dt.datetime]:
    return date.sort_key() if date is not None else _UNDATED


def _key(date: PartialDate | None, topic: Value, event: TrialEvent | None) -> tuple[Any, ...]:
    source = (event.source.resource_id, event.source.version_id) if event else ("", 0)
    return (*_sort_date(date), str(topic or ""), *source)


def _text(date: PartialDate | None) -> str | None:
    return date.text if date is not None else None


def _first_text(concept: Any) -> str | None:
    return next(concept_texts(concept), None)


def _coding(concept: Any, accept: Callable[[str], bool]) -> tuple[str | None, str | None]:
    """(code, display) of the first coding whose system `accept`s."""
    for coding in codings(concept):
        system = coding.get("system")
        if isinstance(system, str) and accept(system):
            code, display = coding.get("code"), coding.get("display")
            return (
                code if isinstance(code, str) else None,
                display if isinstance(display, str) else None,
            )
    return None, None


def _is_meddra(system: str) -> bool:
    return system in MEDDRA_SYSTEMS or system.rstrip("/").endswith("MDRAE")


def _number(text: Any) -> float | None:
    """A decimal text as a number (SDTM Num), None when unreadable or not finite."""
    try:
        value = Decimal(str(text))
    except (InvalidOperation, ValueError):
        return None
    return float(value) if value.is_finite() else None


def _code_num(code: str | None) -> int | None:
    return int(code) if code is not None and code.isdigit() else None


def _lookup(table: Mapping[str, Any], key: Any) -> str | None:
    """A map entry by case-insensitive key (FHIR codes are compared as written, less case)."""
    if not isinstance(key, str):
        return None
    wanted = key.strip().lower()
    for k, v in table.items():
        if k.lower() == wanted:
            return str(v)
    return None


class Tabulation:
    """Builds every dataset's rows for one study from its subjects."""

    def __init__(
        self, study_id: str, plan: TabulationPlan, design: StudyDesign, meta: Metadata
    ) -> None:
        self.study_id = study_id
        self.plan = plan
        self.design = design
        self.fhir = meta.fhir

    # -- shared ---------------------------------------------------------------------------------

    def _epochs(self, s: SubjectRecord) -> Epochs:
        starts = [d for d in (s.enrolled_on,) if d is not None]
        if s.day1 is not None:
            starts.append(s.day1 - dt.timedelta(days=self.plan.screening_days))
        return Epochs(
            screening_start=min(starts) if starts else None,
            day1=s.day1,
            treatment_end=self.plan.treatment_end(s.events, s.day1),
        )

    def _head(self, domain: str, s: SubjectRecord) -> Row:
        return {"STUDYID": self.study_id, "DOMAIN": domain, "USUBJID": s.subject_id}

    @staticmethod
    def _numbered(domain: str, records: Iterable[_Record]) -> list[_Record]:
        """The subject's records in order, with --SEQ 1, 2, … (unique per USUBJID)."""
        out = sorted(records, key=lambda r: r.key)
        for seq, record in enumerate(out, start=1):
            record.row[domain + "SEQ"] = seq
        return out

    def _route(self, concept: Any) -> str | None:
        """A FHIR route (SNOMED code, then words in its text or display) as a ROUTE term."""
        routes = self.fhir["route"]
        for coding in codings(concept):
            if coding.get("system") == SNOMED:
                found = routes["snomed"].get(coding.get("code"))
                if found:
                    return str(found)
        for text in concept_texts(concept):
            found = _lookup(routes["text"], text)
            if found:
                return found
        return None

    def _treatment(self, event: TrialEvent) -> StudyTreatment | None:
        if event.kind is not EventKind.DRUG_ADMINISTRATION:
            return None
        return next((t for t in self.plan.treatments if t.valueset in event.concept_ids), None)

    @staticmethod
    def _on_treatment(event: TrialEvent, day1: dt.date | None) -> bool:
        """A study-drug dose on or after Day 1 is study treatment; one before is prior medication."""
        return day1 is not None and (event.date is None or event.date.last >= day1)

    # -- interventions --------------------------------------------------------------------------

    def exposure(self, s: SubjectRecord) -> list[_Record]:
        """EX: each study-drug administration on or after Day 1, dose in mg."""
        epochs, rf = self._epochs(s), _iso(s.day1)
        out = []
        for e in s.events:
            treatment = self._treatment(e)
            if treatment is None or not self._on_treatment(e, s.day1):
                continue
            name, form = self.design.treatments[treatment.id]
            dose = e.values.get("dose") or {}
            mg = _number(dose.get("mg")) if isinstance(dose, dict) else None
            start = _text(e.date)
            end = _text(e.end) or start  # a point-in-time dose: EXENDTC = EXSTDTC (EX assumption)
            route = self._route(e.values.get("route")) or _lookup(
                self.fhir["route"]["protocol"], treatment.route
            )
            row: Row = {
                **self._head("EX", s),
                "EXTRT": name,
                "EXDOSE": mg,
                "EXDOSU": "mg" if mg is not None else None,
                "EXDOSFRM": form,
                "EXROUTE": route,
                "EPOCH": epochs.of(e.date),
                "EXSTDTC": start,
                "EXENDTC": end,
                "EXSTDY": sdtm_study_day(start, rf),
                "EXENDY": sdtm_study_day(end, rf),
            }
            out.append(_Record(_key(e.date, name, e), row, e))
        return self._numbered("EX", out)

    def medications(self, s: SubjectRecord) -> list[_Record]:
        """CM: every other medication record (prior study-drug doses included)."""
        epochs, rf = self._epochs(s), _iso(s.day1)
        out = []
        for e in s.events:
            if e.kind not in (EventKind.DRUG_ADMINISTRATION, EventKind.DRUG_EXPOSURE):
                continue
            if self._treatment(e) is not None and self._on_treatment(e, s.day1):
                continue
            dose = e.values.get("dose")
            mg = _number(dose.get("mg")) if isinstance(dose, dict) else None
            start, end = _text(e.date), _text(e.end)
            name = e.values.get("medication")
            row: Row = {
                **self._head("CM", s),
                "CMTRT": name if isinstance(name, str) else None,
                "CMDOSE": mg,
                "CMDOSU": "mg" if mg is not None else None,
                "CMROUTE": self._route(e.values.get("route")),
                "EPOCH": epochs.of(e.date),
                "CMSTDTC": start,
                "CMENDTC": end,
                "CMSTDY": sdtm_study_day(start, rf),
                "CMENDY": sdtm_study_day(end, rf),
            }
            out.append(_Record(_key(e.date, row["CMTRT"], e), row, e))
        return self._numbered("CM", out)

    def procedures(self, s: SubjectRecord) -> list[_Record]:
        """PR: performed procedures (biopsies, the resection, others); planned ones are not."""
        epochs, rf = self._epochs(s), _iso(s.day1)
        categories = self.fhir["procedure_category"]
        out = []
        for e in s.events:
            if e.kind not in _PROCEDURES or e.values.get("planned"):
                continue
            code = e.values.get("code")
            start, end = _text(e.date), _text(e.end)
            row: Row = {
                **self._head("PR", s),
                "PRTRT": _first_text(code),
                "PRDECOD": _coding(code, lambda sys: sys == SNOMED)[1],
                "PRCAT": categories.get(e.kind.value),
                "EPOCH": epochs.of(e.date),
                "PRSTDTC": start,
                "PRENDTC": end,
                "PRSTDY": sdtm_study_day(start, rf),
                "PRENDY": sdtm_study_day(end, rf),
            }
            out.append(_Record(_key(e.date, row["PRTRT"], e), row, e))
        return self._numbered("PR", out)

    # -- events ---------------------------------------------------------------------------------

    def adverse_events(self, s: SubjectRecord) -> list[_Record]:
        """AE: AdverseEvent resources and Conditions flagged as adverse events (as safety does)."""
        epochs, rf = self._epochs(s), _iso(s.day1)
        out = []
        for e in s.events:
            is_ae = e.kind is EventKind.ADVERSE_EVENT
            if not is_ae and not (
                e.kind is EventKind.CONDITION and e.values.get("is_adverse_event")
            ):
                continue
            term = e.values.get("term") if is_ae else e.values.get("code")
            meddra_code, meddra_term = _coding(term, _is_meddra)
            grade = e.values.get("grade")
            start = _text(e.date)
            end = _text(e.end)
            row: Row = {
                **self._head("AE", s),
                "AETERM": e.values.get("term_text") if is_ae else _first_text(term),
                "AELLT": None,
                "AELLTCD": None,
                "AEDECOD": meddra_term,
                "AEPTCD": _code_num(meddra_code),
                "AEHLT": None,
                "AEHLTCD": None,
                "AEHLGT": None,
                "AEHLGTCD": None,
                "AEBODSYS": None,
                "AEBDSYCD": None,
                "AESOC": None,
                "AESOCCD": None,
                "AESEV": _lookup(self.fhir["ae_severity"], e.values.get("severity")),
                "AESER": _lookup(self.fhir["ae_seriousness"], e.values.get("seriousness")),
                "AEACN": None,
                "AEREL": None,
                "AEOUT": _lookup(self.fhir["ae_outcome"], e.values.get("outcome")),
                "AETOXGR": str(grade) if isinstance(grade, int) else None,
                "EPOCH": epochs.of(e.date),
                "AESTDTC": start,
                "AEENDTC": end,
                "AESTDY": sdtm_study_day(start, rf),
                "AEENDY": sdtm_study_day(end, rf),
            }
            out.append(_Record(_key(e.date, row["AETERM"], e), row, e))
        return self._numbered("AE", out)

    def medical_history(self, s: SubjectRecord) -> list[_Record]:
        """MH: conditions that started before Day 1 (or undated), adverse events excepted."""
        out = []
        for e in s.events:
            if e.kind is not EventKind.CONDITION or e.values.get("is_adverse_event"):
                continue
            if s.day1 is not None and e.date is not None and e.date.first >= s.day1:
                continue
            row: Row = {
                **self._head("MH", s),
                "MHTERM": _first_text(e.values.get("code")),
                "MHSTDTC": _text(e.date),
                "MHENDTC": _text(e.end),
            }
            out.append(_Record(_key(e.date, row["MHTERM"], e), row, e))
        return self._numbered("MH", out)

    def _enrollment(self, s: SubjectRecord) -> TrialEvent | None:
        """The ResearchSubject record the subject's enrollment day came from."""
        found = [
            e
            for e in s.events
            if e.kind is EventKind.ENROLLMENT
            and e.date is not None
            and e.date.day == s.enrolled_on
            and e.values.get("status") == s.status
        ]
        return max(found, key=lambda e: (e.source.resource_id, e.source.version_id), default=None)

    def disposition(self, s: SubjectRecord) -> list[_Record]:
        """DS: the enrollment milestone, death, and a disposition the subject's status names."""
        epochs, rf = self._epochs(s), _iso(s.day1)
        out = []

        def add(term: str, decod: str, cat: str, scat: str | None, when: str | None) -> None:
            date = _partial(when)
            row: Row = {
                **self._head("DS", s),
                "DSTERM": term,
                "DSDECOD": decod,
                "DSCAT": cat,
                "DSSCAT": scat,
                "EPOCH": epochs.of(date),
                "DSSTDTC": when,
                "DSSTDY": sdtm_study_day(when, rf),
            }
            out.append(_Record(_key(date, decod, None), row))

        if s.enrolled_on is not None:
            add("ENROLLED", "ENROLLED", "PROTOCOL MILESTONE", None, s.enrolled_on.isoformat())
        outcome = self.design.disposition.get(s.status)
        if outcome is not None:
            enrollment = self._enrollment(s)
            ended = _text(enrollment.end) if enrollment else None
            add(outcome[0], outcome[1], "DISPOSITION EVENT", "STUDY PARTICIPATION", ended)
        death = _death(s.events)
        if death is not None:
            add("DEATH", "DEATH", "DISPOSITION EVENT", "STUDY PARTICIPATION", _text(death.date))
        return self._numbered("DS", out)

    # -- findings: percent viable tumour (MPR, pCR) ------------------------------------------------

    def tumours(self, s: SubjectRecord) -> tuple[list[_Record], list[_Record]]:
        """TU (one record per resected site) and TR (each percent viable tumour read)."""
        epochs, rf = self._epochs(s), _iso(s.day1)
        reads = [
            (e, pct)
            for e in s.events
            if e.kind is EventKind.VIABLE_TUMOUR
            and (pct := _number(e.values.get("percent"))) is not None
            and e.values.get("site") in self.design.tumour_sites
        ]
        reads.sort(key=lambda p: _key(p[0].date, p[0].values.get("site"), p[0]))
        tu: list[_Record] = []
        tr: list[_Record] = []
        seen: set[str] = set()
        for e, pct in reads:
            link, location = self.design.tumour_sites[str(e.values["site"])]
            when = _text(e.date)
            if link not in seen:
                seen.add(link)
                tu_row: Row = {
                    **self._head("TU", s),
                    "TULNKID": link,
                    "TUTESTCD": "TUMIDENT",
                    "TUTEST": "Tumor Identification",
                    "TUORRES": "LOCATION OF INTEREST",
                    "TUSTRESC": "LOCATION OF INTEREST",
                    "TULOC": location,
                    "TUMETHOD": "MICROSCOPY",
                    "TULOBXFL": None,
                    "TUEVAL": None,
                    "VISITNUM": None,
                    "EPOCH": epochs.of(e.date),
                    "TUDTC": when,
                    "TUDY": sdtm_study_day(when, rf),
                }
                tu.append(_Record(_key(e.date, link, e), tu_row, e))
            text = str(e.values.get("percent"))
            tr_row: Row = {
                **self._head("TR", s),
                "TRLNKID": link,
                "TRTESTCD": "PCTVIAB",
                "TRTEST": "Percent Viable Tumor",
                "TRORRES": text,
                "TRORRESU": "%",
                "TRSTRESC": text,
                "TRSTRESN": pct,
                "TRSTRESU": "%",
                "TRMETHOD": "MICROSCOPY",
                "TRLOBXFL": None,
                "TREVAL": None,
                "VISITNUM": None,
                "EPOCH": epochs.of(e.date),
                "TRDTC": when,
                "TRDY": sdtm_study_day(when, rf),
            }
            tr.append(_Record(_key(e.date, link, e), tr_row, e))
        return self._numbered("TU", tu), self._numbered("TR", tr)

    # -- demographics ---------------------------------------------------------------------------

    def _arm(self, s: SubjectRecord) -> tuple[str, str] | None:
        """The planned arm: the one ResearchSubject.assignedArm names, else the only one."""
        enrollment = self._enrollment(s)
        named = enrollment.values.get("assigned_arm") if enrollment else None
        for code, name in self.design.arms:
            if isinstance(named, str) and named.strip().lower() == name.lower():
                return code, name
        return self.design.arms[0] if len(self.design.arms) == 1 else None

    def demographics(self, s: SubjectRecord, exposure: Sequence[_Record]) -> tuple[Row, list[Row]]:
        """DM (one row) and the subject's SUPPDM rows (each race when there are several)."""
        demo = next((e for e in s.events if e.kind is EventKind.DEMOGRAPHICS), None)
        values = demo.values if demo else {}
        anchor = s.enrolled_on or s.day1
        age = (
            whole_years(demo.date.first, demo.date.last, anchor)
            if demo is not None and demo.date is not None and anchor is not None
            else None
        )
        races = list(
            dict.fromkeys(
                race
                for r in values.get("race") or ()
                if isinstance(r, dict) and (race := _lookup(self.fhir["race"], r.get("code")))
            )
        )
        ethnic = next(
            (
                found
                for r in values.get("ethnicity") or ()
                if isinstance(r, dict) and (found := _lookup(self.fhir["ethnicity"], r.get("code")))
            ),
            None,
        )
        death = _death(s.events)
        starts = [r.row["EXSTDTC"] for r in exposure if r.row.get("EXSTDTC")]
        ends = [r.row["EXENDTC"] for r in exposure if r.row.get("EXENDTC")]
        first_dose = min(exposure, key=lambda r: r.key).row["EXSTDTC"] if starts else None
        last_dose = max(exposure, key=lambda r: _end_key(r)).row["EXENDTC"] if ends else None
        arm = self._arm(s) if s.status in self.design.assigned else None
        treated = bool(exposure)
        reason: str | None
        if arm is None:
            reason = "SCREEN FAILURE" if s.status in self.design.screen_failure else "NOT ASSIGNED"
        else:
            reason = None if treated else "ASSIGNED, NOT TREATED"
        enrollment = self._enrollment(s)
        ended = _text(enrollment.end) if enrollment else None
        row: Row = {
            **self._head("DM", s),
            "SUBJID": s.subject_number or s.subject_id,
            "RFSTDTC": _iso(s.day1),
            "RFENDTC": last_dose,
            "RFXSTDTC": first_dose,
            "RFXENDTC": last_dose,
            "RFICDTC": None,
            "RFPENDTC": _text(death.date) if death is not None and death.date else ended,
            "DTHDTC": _text(death.date) if death is not None else None,
            "DTHFL": "Y" if death is not None else None,
            "SITEID": self.design.site_id,
            "AGE": age,
            "AGEU": "YEARS" if age is not None else None,
            "SEX": _lookup(self.fhir["sex"], values.get("gender")) or "U",
            "RACE": "MULTIPLE" if len(races) > 1 else (races[0] if races else None),
            "ETHNIC": ethnic,
            "ARMCD": arm[0] if arm else None,
            "ARM": arm[1] if arm else None,
            "ACTARMCD": arm[0] if arm and treated else None,
            "ACTARM": arm[1] if arm and treated else None,
            "ARMNRS": reason,
            "ACTARMUD": None,
            "COUNTRY": self.design.country,
        }
        supp: list[Row] = [
            {
                "STUDYID": self.study_id,
                "RDOMAIN": "DM",
                "USUBJID": s.subject_id,
                "IDVAR": None,
                "IDVARVAL": None,
                "QNAM": f"RACE{i}",
                "QLABEL": f"Race {i}",
                "QVAL": race,
                "QORIG": "Collected",
                "QEVAL": None,
            }
            for i, race in enumerate(races, start=1)
            if len(races) > 1
        ]
        return row, supp

    def supp_ae(self, s: SubjectRecord, aes: Sequence[_Record]) -> list[Row]:
        """SUPPAE: where each toxicity grade was read from (the FHIR extension's url)."""
        return [
            {
                "STUDYID": self.study_id,
                "RDOMAIN": "AE",
                "USUBJID": s.subject_id,
                "IDVAR": "AESEQ",
                "IDVARVAL": str(r.row["AESEQ"]),
                "QNAM": "AETOXSRC",
                "QLABEL": "Source of Toxicity Grade",
                "QVAL": str(r.event.values["grade_source"]),
                "QORIG": "Collected",
                "QEVAL": None,
            }
            for r in aes
            if r.event is not None
            and r.row.get("AETOXGR") is not None
            and r.event.values.get("grade_source")
        ]

    # -- the whole study ------------------------------------------------------------------------

    def build(self, subjects: Sequence[SubjectRecord]) -> dict[str, list[Row]]:
        """Every dataset's rows, subjects in USUBJID order, each subject's rows in --SEQ order."""
        out: dict[str, list[Row]] = {
            name: [] for name in ("DM", "EX", "CM", "PR", "AE", "DS", "MH", "TU", "TR")
        }
        out["SUPPDM"], out["SUPPAE"] = [], []
        for s in sorted(subjects, key=lambda s: s.subject_id):
            ex = self.exposure(s)
            dm, supp_dm = self.demographics(s, ex)
            aes = self.adverse_events(s)
            tu, tr = self.tumours(s)
            out["DM"].append(dm)
            out["SUPPDM"].extend(supp_dm)
            for name, records in (
                ("EX", ex),
                ("CM", self.medications(s)),
                ("PR", self.procedures(s)),
                ("AE", aes),
                ("DS", self.disposition(s)),
                ("MH", self.medical_history(s)),
                ("TU", tu),
                ("TR", tr),
            ):
                out[name].extend(r.row for r in records)
            out["SUPPAE"].extend(self.supp_ae(s, aes))
        return out


def _iso(day: dt.date | None) -> str | None:
    return day.isoformat() if day is not None else None


def _partial(text: str | None) -> PartialDate | None:
    return parse_partial_date(text)


def _end_key(record: _Record) -> tuple[Any, ...]:
    """Order EX records by their end date/time (RFXENDTC is the latest)."""
    end = record.row.get("EXENDTC")
    return (*_sort_date(_partial(end if isinstance(end, str) else None)), record.key)


def _death(events: Sequence[TrialEvent]) -> TrialEvent | None:
    """The recorded death: the dated one first (the record of the patient, not a guess)."""
    deaths = [e for e in events if e.kind is EventKind.DEATH]
    return min(deaths, key=lambda e: (e.date is None, _sort_date(e.date)), default=None)
