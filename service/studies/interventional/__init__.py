"""The interventional study kind (NCT06088771): membership from ResearchSubject, eligibility
rules, deviation rules and their sync into the deviation log, per-subject outcomes and cohort
statistics. Imports no other study kind.
"""
