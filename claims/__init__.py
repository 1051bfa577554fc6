"""The claims of "As X, Do Y" as pytest tests: one module per claim, plus the paper replay."""
