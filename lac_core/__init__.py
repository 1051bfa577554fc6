"""lac: the persona x task claims of "As X, Do Y" as a pytest suite."""

DEFAULT_TOKEN_BUDGET = 16384  # tokens per forward call (about 1 GB of activations, 2B model, fp32)
