"""lac: the persona x task claims of "As X, Do Y" as a pytest suite."""

# tokens per forward call, cached ones included: on Qwen2.5-0.5B fp32 16384 held ~0.8 GB of KV
# copies and activations per call, 4096 a quarter of that, and ran as fast on 2 CPU cores
DEFAULT_TOKEN_BUDGET = 4096
