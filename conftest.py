"""Wires the lac pytest plugin (options, model fixtures, verdict table, report) into every test run;
pytester for the tests that run pytest on a project of their own."""
pytest_plugins = ["lac_core.suite.plugin", "pytester"]
