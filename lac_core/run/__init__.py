"""A run: its settings (the only reader of LAC_* variables), the checks before any work
(preflight), the session that holds a run's state, computes experiments through the resume
cache and writes its end (report set, expectations, regression gate), progress lines and
provenance. Callable without pytest. May import every wing below it (report, protocol, models,
verdicts, engine); never lac_core.suite.
"""
