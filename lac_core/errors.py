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


class UsageError(LacError):
    """A bad option or setting, caught before any work."""
