"""Use cases of the study API: studies and subjects, timelines, eligibility, per-subject and
cohort outcomes, the deviation log, paging cursors. They never write derived data nor compute a
cohort (cohort outcomes, listings and reports are read from the stored snapshots); the deviation log also records what staff add (acknowledgements,
comments) and webhook subscriptions. Study kinds are reached through `service.studies.registry`
and the shared `service.studies.kind` types, never a kind's package. May import
`service.studies`, `service.notifications` and everything below.
"""
