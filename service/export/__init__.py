"""Exports of study data in standards other systems read (CDISC SDTM)."""
