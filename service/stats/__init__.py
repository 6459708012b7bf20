"""Statistics and figures: Kaplan-Meier, confidence intervals, and the plots (KM curves, the
swimmer plot of the rows it is given). Pure functions over numbers and rows; no study kind's
logic. May import `service.infra` only.
"""
