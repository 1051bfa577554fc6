"""The pytest face of lac: the plugin (options, hooks), its fixtures, the claim and cell gates,
and pytest-xdist wiring. Thin: every decision is taken in run/ and below.
"""
