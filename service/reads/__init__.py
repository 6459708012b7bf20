"""Read use cases of the study API: studies and subjects, timelines, eligibility, per-subject and
cohort outcomes, the deviation log, paging cursors. Reads never write derived data (cohort
reports are cached per study). May import `service.studies` (through the registry),
`service.notifications` and everything below.
"""
