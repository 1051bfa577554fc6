"""Loading a run's models and computing its experiments, each once per (model, grid), through the
resume cache: what the pytest fixtures ask for, callable without pytest."""
# An experiment that raises is recorded (session.tally.failed) and raised again as ExperimentFailed:
# the first asker is told the cause (`first`), later ones only that it failed, so a run never
# starts a failed experiment twice. A model's grids are checked once it loads (its own chat
# template rendered, no special token in a grid's texts, every prompt within its context) before
# any experiment: a refused grid fails like an experiment.
from __future__ import annotations

import functools
import time

from ..engine.forward import Engine
from ..engine.memory import release_freed
from ..errors import LacError
from ..models import LoadedModel, load
from ..protocol import experiments as exp  # read at call time: a test may replace one
from ..protocol.experiments import special_tokens_in, too_long
from ..protocol.templates import attach, check_model
from ..verdicts import claims as registry
from ..verdicts.kinds import Kind, Shared


class ExperimentFailed(LacError):
    """An experiment (or what it needs) failed in this run; `first` for its first asker."""

    def __init__(self, key: tuple, cause: str, first: bool, original: BaseException | None = None):
        super().__init__(f"{' / '.join(key)} failed: {cause}")
        self.key, self.cause, self.first, self.original = key, cause, first, original


def load_model(session, name: str) -> LoadedModel:
    """The model of identity `name`, loaded, its template checked and its grids vetted."""
    t0, progress = time.perf_counter(), session.progress
    spec = session.checked.models[name]
    progress.start(f"{name} load")
    try:
        loaded = attach(load(spec, session.settings.load_options(),
                             say=lambda msg: progress.say(f"lac: {msg}")), session.checked.template)
        check_model(f"{name}'s chat template ({loaded.template.name})", loaded.tokenizer,
                    loaded.template)  # the model's own is only known now
    except Exception as exc:
        progress.end(f"failed: {type(exc).__name__}")
        session.tally.failed[(name, "load")] = f"{type(exc).__name__}: {exc}"
        raise
    progress.end(f"{spec.dtype} on {loaded.provenance['device']}")
    session.ledger.load_seconds[spec.name] = round(time.perf_counter() - t0, 1)
    session.ledger.provenance[spec.name] = loaded.provenance
    for label, grid in session.grids.items():  # before any experiment: prompts that fit
        try:
            why = special_tokens_in(loaded, grid) or too_long(loaded, grid)
        except LacError as exc:  # a prompt that cannot be rendered for this model
            why = f"grid {grid.key}: {type(exc).__name__}: {exc}"
        if why:
            session.tally.failed[(spec.name, label, "*")] = why
    return loaded


def compute(session, lm, grid: str, kind: str, experiment, **kw):
    """The experiment's result on this model and grid, computed once; raises ExperimentFailed."""
    key, s = (lm.name, grid, kind), session
    if key in s.ledger.results:
        return s.ledger.results[key]
    failed = next((k for k in (key, (*key[:2], "*")) if k in s.tally.failed), None)
    if failed is not None:
        first = failed not in s.tally.reported
        s.tally.reported.add(failed)
        raise ExperimentFailed(key, s.tally.failed[failed], first)
    rkey = s.result_key(*key, kw)
    cached = s.out.resume.get(key, rkey)
    s.tell_notes()
    if cached is not None:
        s.ledger.results[key], s.ledger.from_cache[key] = cached, s.out.resume.used[key]
        s.progress.say(f"lac: {' / '.join(key)}: from the resume cache "
                       f"(run {s.ledger.from_cache[key]})")
        return cached
    kw = {k: v() if isinstance(v, functools.partial) else v for k, v in kw.items()}
    release_freed()  # earlier experiments' garbage would add to this one's peak memory
    eng, t0 = Engine(lm, s.settings.token_budget, progress=s.progress), time.perf_counter()
    s.progress.start(f"{lm.name} / {grid} {kind}")
    try:
        s.ledger.results[key] = experiment(eng, s.grids[grid], **kw)
    except Exception as exc:  # recorded once; what does not need it goes on
        s.tally.failed[key] = f"{type(exc).__name__}: {exc}"
        s.tally.reported.add(key)
        s.progress.end(f"failed: {type(exc).__name__}")
        raise ExperimentFailed(key, s.tally.failed[key], True, exc) from exc
    s.ledger.timings[key] = round(time.perf_counter() - t0, 1)
    s.out.resume.put(key, rkey, s.ledger.results[key], s.ident.run_id)  # kept, then announced
    s.tell_notes()
    s.progress.end(f"{len(s.grids[grid].cells)} cells, {eng.cost.tokens:,} forward tokens")
    return s.ledger.results[key]


def result(session, lm: LoadedModel, grid: str, kind: str):
    """The result of one of the run's experiments ("sweep", "markers", "host", "steering"), with
    the run's settings, and the shared parts they continue ("residuals", "target")."""
    s, t = session.settings, session.thresholds
    part = functools.partial(result, session, lm, grid)
    if kind == Kind.SWEEP:
        return compute(session, lm, grid, kind, exp.sweep, layers=s.layers, probes=s.probes,
                       plan=s.plan, metrics=tuple(registry.METRICS.values()))
    if kind == Shared.RESIDUALS:  # residuals at p_last of the four conditions: experiments 2, 3, 4
        return compute(session, lm, grid, kind, exp.p_last_residuals)
    if kind == Shared.TARGET:  # the clean XY prompts' first greedy tokens: host and steering
        return compute(session, lm, grid, kind, exp.xy_target)
    if kind == Kind.MARKERS:
        return compute(session, lm, grid, kind, exp.markers, residuals=functools.partial(
            part, Shared.RESIDUALS), stems=t.markers.stems)
    if kind == Kind.STEERING:
        return compute(session, lm, grid, kind, exp.steering, marker_result=part(Kind.MARKERS),
                       residuals=functools.partial(part, Shared.RESIDUALS),
                       target=functools.partial(part, Shared.TARGET), pairs=s.swap_pairs)
    if kind == Kind.HOST:
        return compute(session, lm, grid, kind, exp.host_injection,
                       residuals=functools.partial(part, Shared.RESIDUALS),
                       target=functools.partial(part, Shared.TARGET))
    raise ValueError(f"no experiment {kind!r}")
