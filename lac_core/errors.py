"""Errors that name the problem and the fix, so no bad input becomes a silent wrong number."""


class LacError(RuntimeError):
    """Base class: every message says what went wrong and what to do about it."""


class UnknownModelError(LacError):
    pass


class MissingWeightsError(LacError):
    pass


class HubAccessError(LacError):
    """The hub refused a model (401, 403, gated): the fix is a login or a token, not a name."""


class ChecksumError(LacError):
    pass


class NoChatTemplateError(LacError):
    pass


class TokenizationError(LacError):
    pass


class NonFiniteResidualError(LacError):
    pass


class GridError(LacError):
    pass


class FixtureError(LacError):
    pass


class InvarianceError(LacError):
    """A cell computed alone differs from the same cell in a batch, or an identity substitution
    moved the output: the numbers cannot be trusted."""


class InterventionError(LacError):
    """A substitution did not land where it was meant to: read back, the layer's input differs
    from the vector written."""


class CrossCheckError(LacError):
    """A capture or a substitution disagrees with a path that shares no code with lac's hooks
    (the model's own `output_hidden_states`, or a write by a separate hook on the layer below):
    every number of the experiment would rest on residuals lac did not read or write where it
    says. `check`, `layer` and `position` name where."""

    def __init__(self, message: str, check: str = "", layer: int | None = None,
                 position: int | None = None):
        super().__init__(message)
        self.check, self.layer, self.position = check, layer, position


class UsageError(LacError):
    """A bad option or setting, caught before any work."""
