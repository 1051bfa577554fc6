"""Wires the lac pytest plugin (options, model fixtures, verdict table, report) into every test run."""
pytest_plugins = ["lac_core.suite.plugin"]
