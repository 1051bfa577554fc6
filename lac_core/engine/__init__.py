"""The engine: forward passes under a token budget, with hooks, KV caches, attention and shared
prefixes. It knows torch and transformers' model API, and no word of the paper: prompts are token
ids, substitutions are (layer, position, vector). May import: lac_core.errors only.

    forward    Engine: prefill, decode, capture, generate; Cost and Work
    hooks      the only code that hooks or swaps a model's modules; every substitution read back
    crosscheck capture and substitution against paths sharing no code with hooks (checks only)
    kvcache    KV caches kept between calls (spare room, row chunks, prefixes read in place)
    attention  eager attention without copying grouped keys/values
    prefixes   which leading tokens a batch computes once
    memory     freed memory handed back between phases
    types      the model the engine takes (a Protocol) and the records it passes between calls
"""

# tokens per forward call, cached ones included: on Qwen2.5-0.5B fp32 16384 held ~0.8 GB of KV
# copies and activations per call. 8192 keeps its long-grid sweep under 3.5 GB peak RSS, and a
# greedy decode step pays a full read of the weights per row chunk: on SmolLM2 the 75 marker rows
# took 57 s at 4096 (4 chunks) and 48 s at 8192 (2 chunks), with the sweep as fast either way.
# Since the marker rows read their prompt in place, they count 81 positions each, not 184: one
# chunk at 8192 (two at 4096)
DEFAULT_TOKEN_BUDGET = 8192
