"""Statistics and figures with no clinical knowledge: Kaplan-Meier, confidence intervals, plots.
Pure functions over numbers; may import `service.infra` only.
"""
