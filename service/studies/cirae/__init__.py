"""The retrospective cirAE cohort kind: membership by ICB exposure, cohort building (groups,
resolution, covariates), Charlson index, matching, Cox models and the analysis. Imports no other
study kind.
"""
