"""lac: the persona x task claims of "As X, Do Y" as a pytest suite."""

# tokens per forward call, cached ones included: on Qwen2.5-0.5B fp32 16384 held ~0.8 GB of KV
# copies and activations per call. 8192 keeps its long-grid sweep under 3.5 GB peak RSS, and a
# greedy decode step pays a full read of the weights per row chunk: on SmolLM2 the 75 marker rows
# took 57 s at 4096 (4 chunks) and 48 s at 8192 (2 chunks), with the sweep as fast either way.
# Since the marker rows read their prompt in place, they count 81 positions each, not 184: one
# chunk at 8192 (two at 4096)
DEFAULT_TOKEN_BUDGET = 8192
