"""define.xml (Define-XML 2.1) describing an SDTM export: datasets, variables, codelists, methods."""

from __future__ import annotations

import xml.etree.ElementTree as ET

from service.export.sdtm.formats import column_length, define_type, item_oid, mdv_oid
from service.export.sdtm.metadata import Codelist, Metadata, StudyDesign
from service.export.sdtm.model import Package

ODM = "http://www.cdisc.org/ns/odm/v1.3"
DEF = "http://www.cdisc.org/ns/def/v2.1"
XLINK = "http://www.w3.org/1999/xlink"
XML = "http://www.w3.org/XML/1998/namespace"
ET.register_namespace("", ODM)
ET.register_namespace("def", DEF)
ET.register_namespace("xlink", XLINK)

_STUDY_DAY = "MT.STUDYDAY"
_METHODS = {
    _STUDY_DAY: (
        "Study day",
        "Date part of --DTC minus date part of DM.RFSTDTC, plus 1 when on or after it (there is "
        "no day 0); null when either is not a complete date.",
    ),
    "MT.SEQ": (
        "Sequence number",
        "1, 2, ... per USUBJID in order of start date/time (undated last), topic, source record.",
    ),
    "MT.EPOCH": (
        "Epoch",
        "SCREENING from the earlier of enrollment and Day 1 minus the protocol's screening window; "
        "TREATMENT from RFSTDTC to the study surgery; FOLLOW-UP after it. Null before screening, "
        "or when a partial date spans two epochs.",
    ),
    "MT.RFSTDTC": (
        "Reference start",
        "Day 1 as the service computes it for the protocol (the first study-drug day).",
    ),
    "MT.AGE": ("Age", "Completed years at enrollment (else at Day 1), from the birth date."),
}


def _q(ns: str, tag: str) -> str:
    return f"{{{ns}}}{tag}"


def _description(parent: ET.Element, text: str) -> None:
    desc = ET.SubElement(parent, _q(ODM, "Description"))
    translated = ET.SubElement(desc, _q(ODM, "TranslatedText"))
    translated.set(_q(XML, "lang"), "en")
    translated.text = text


def _method(name: str) -> str | None:
    """The MethodDef a derived variable refers to, if one describes it."""
    if name.endswith("DY") and name != "VISITNUM":
        return _STUDY_DAY
    if name.endswith("SEQ"):
        return "MT.SEQ"
    return {"EPOCH": "MT.EPOCH", "RFSTDTC": "MT.RFSTDTC", "AGE": "MT.AGE"}.get(name)


def _codelist(mdv: ET.Element, cl: Codelist, design: StudyDesign, ct: str) -> None:
    node = ET.SubElement(
        mdv, _q(ODM, "CodeList"), {"OID": f"CL.{cl.id}", "Name": cl.name, "DataType": "text"}
    )
    if cl.external is not None:
        dictionary, version = cl.external
        ET.SubElement(
            node, _q(ODM, "ExternalCodeList"), {"Dictionary": dictionary, "Version": version}
        )
        return
    if cl.sponsor:
        _description(node, f"NCI CTCAE v{design.ctcae_version} grade (the number alone)")
    else:
        node.set(_q(DEF, "StandardOID"), "STD.CT")
    for term in cl.terms:
        attrs = {"CodedValue": term.value}
        if term.extended:
            attrs[_q(DEF, "ExtendedValue")] = "Yes"
        item = ET.SubElement(node, _q(ODM, "EnumeratedItem"), attrs)
        if term.nci:
            ET.SubElement(item, _q(ODM, "Alias"), {"Context": "nci:ExtCodeID", "Name": term.nci})
    if cl.nci:
        ET.SubElement(node, _q(ODM, "Alias"), {"Context": "nci:ExtCodeID", "Name": cl.nci})


def define_xml(package: Package, meta: Metadata) -> bytes:
    """The define.xml of one export (UTF-8, with its XML declaration)."""
    study = package.study_id
    design = package.design
    root = ET.Element(
        _q(ODM, "ODM"),
        {
            "FileType": "Snapshot",
            "FileOID": f"DEF.{study}.SDTM",
            "CreationDateTime": package.created,
            "ODMVersion": "1.3.2",
            "Originator": "trialbridge",
            "SourceSystem": "trialbridge",
            _q(DEF, "Context"): "Other",
        },
    )
    study_node = ET.SubElement(root, _q(ODM, "Study"), {"OID": study})
    gv = ET.SubElement(study_node, _q(ODM, "GlobalVariables"))
    ET.SubElement(gv, _q(ODM, "StudyName")).text = study
    ET.SubElement(gv, _q(ODM, "StudyDescription")).text = f"{study} SDTM tabulation"
    ET.SubElement(gv, _q(ODM, "ProtocolName")).text = study
    mdv = ET.SubElement(
        study_node,
        _q(ODM, "MetaDataVersion"),
        {
            "OID": mdv_oid(study),
            "Name": f"{study} SDTMIG {meta.version}",
            _q(DEF, "DefineVersion"): "2.1.0",
        },
    )
    standards = ET.SubElement(mdv, _q(DEF, "Standards"))
    ET.SubElement(
        standards,
        _q(DEF, "Standard"),
        {
            "OID": "STD.SDTMIG",
            "Name": meta.standard,
            "Type": "IG",
            "Version": meta.version,
            "Status": "Final",
        },
    )
    ET.SubElement(
        standards,
        _q(DEF, "Standard"),
        {
            "OID": "STD.CT",
            "Name": "CDISC/NCI",
            "Type": "CT",
            "PublishingSet": "SDTM",
            "Version": meta.ct_version,
            "Status": "Final",
        },
    )
    used: dict[str, None] = {}
    for name, ds in package.datasets.items():
        spec = ds.spec
        group = ET.SubElement(
            mdv,
            _q(ODM, "ItemGroupDef"),
            {
                "OID": f"IG.{name}",
                "Name": name,
                "Repeating": "No" if name == "DM" else "Yes",
                "IsReferenceData": "No",
                "SASDatasetName": name,
                "Domain": spec.parent or name,
                "Purpose": "Tabulation",
                _q(DEF, "Structure"): spec.structure,
                _q(DEF, "StandardOID"): "STD.SDTMIG",
                _q(DEF, "ArchiveLocationID"): f"LF.{name}",
            },
        )
        _description(group, spec.label)
        for order, v in enumerate(spec.variables, start=1):
            attrs = {
                "ItemOID": item_oid(name, v.name),
                "OrderNumber": str(order),
                "Mandatory": "Yes" if v.core == "Req" else "No",
                "Role": v.role,
            }
            if v.name in spec.keys:
                attrs["KeySequence"] = str(spec.keys.index(v.name) + 1)
            method = _method(v.name) if v.origin == "Derived" else None
            if method is not None:
                attrs["MethodOID"] = method
            ET.SubElement(group, _q(ODM, "ItemRef"), attrs)
        ET.SubElement(group, _q(DEF, "Class"), {"Name": spec.klass})
        leaf = ET.SubElement(
            group, _q(DEF, "leaf"), {"ID": f"LF.{name}", _q(XLINK, "href"): f"{name.lower()}.xpt"}
        )
        ET.SubElement(leaf, _q(DEF, "title")).text = f"{name.lower()}.xpt"
    for name, ds in package.datasets.items():
        for v in ds.spec.variables:
            attrs = {
                "OID": item_oid(name, v.name),
                "Name": v.name,
                "DataType": define_type(v),
                "SASFieldName": v.name,
            }
            length = column_length(ds, v)
            if length is not None and define_type(v) == "text":
                attrs["Length"] = str(length)
            item = ET.SubElement(mdv, _q(ODM, "ItemDef"), attrs)
            _description(item, v.label)
            if v.codelist:
                ET.SubElement(item, _q(ODM, "CodeListRef"), {"CodeListOID": f"CL.{v.codelist}"})
                used[v.codelist] = None
            origin = {"Type": v.origin}
            if v.origin == "Collected":
                origin["Source"] = "Investigator"
            ET.SubElement(item, _q(DEF, "Origin"), origin)
    for codelist in used:
        _codelist(mdv, meta.codelists[codelist], design, meta.ct_version)
    for oid, (title, text) in _METHODS.items():
        node = ET.SubElement(
            mdv, _q(ODM, "MethodDef"), {"OID": oid, "Name": title, "Type": "Computation"}
        )
        _description(node, text)
    ET.indent(root)
    body: bytes = ET.tostring(root, encoding="UTF-8", xml_declaration=True)
    return body
