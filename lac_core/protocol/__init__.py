"""The protocol: what the paper computes. Templates and prompts, grids and persona markers, the
prompt pass that experiments continue, the sweep's plans, the four experiments and steering. It
says which prompts, conditions, positions and substitutions; the engine says how they run. May
import: lac_core.engine, lac_core.verdicts (the result records it fills), errors, paths.

    templates   which chat template renders the prompts, checked by rendering it
    prompts     the 2x2 prompt sets, probe positions, layer choices
    grids       grid files, validated and hashed
    markers     persona-marker matching
    passes      the prompt pass, greedy continuations, the XY target and teacher-forced scoring
    plans       how the sweep runs: the fast plan and the naive oracle
    sweep       experiment 1 and its every-run invariance checks
    experiments experiments 2-4 (markers, host injection) and the checks before them
    steering    dose-response and persona swap at the marker site
    work        the work each experiment plans, for its time-left estimate
"""
