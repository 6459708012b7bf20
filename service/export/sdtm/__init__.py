"""CDISC SDTM (SDTMIG 3.4) tabulation of NCT06088771: datasets, Dataset-JSON, XPT, define.xml, checks."""
