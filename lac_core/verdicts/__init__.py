"""Verdicts: result records, their summaries and metrics, the claims (declared once, in
claims.py), their thresholds and rules, per-cell checks, intervals and FRAGILE marks, expected
verdicts and baselines, and the paper's own data. Plain Python and numpy, no torch. May import:
errors, paths, yamlfile.
"""
