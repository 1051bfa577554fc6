"""The report set: results.json, REPORT.md, SUMMARY.md and COMPARE.md (document: what a set
holds, OUTPUTS; tables, sections, summary: the text, built from results.json's dict), the
beyond-the-paper sections (findings), figures (figures, modelsfig; one look in style, every PNG
with its SVG), where composition breaks (breakdown), and writing a set into a user's folder as a
whole (reportset). No torch. May import: lac_core.verdicts, protocol.grids (which grids are the
paper's), errors, paths.
"""
