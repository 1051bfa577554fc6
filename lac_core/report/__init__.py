"""The report set: REPORT.md and results.json (document), the beyond-the-paper sections
(findings), figures, where composition breaks (breakdown), and writing a set into a user's
folder as a whole (reportset). No torch. May import: lac_core.verdicts, protocol.grids (which
grids are the paper's), errors, paths.
"""
