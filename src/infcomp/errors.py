"""Errors and warnings of infcomp.

Every error about a program names the site it concerns and says what was expected.
"""


class ModelError(ValueError):
    """A program, its data or its arguments are not what inference needs."""


class GuideError(ModelError):
    """A guide (proposal program) does not match the model's latent sites."""


class ArtifactError(ValueError):
    """A saved artifact is corrupt, larger than its config allows, or does not fit the
    model it is loaded for."""


class ArtifactWarning(UserWarning):
    """A saved artifact was loaded although it does not fully fit the model (``strict=False``)
    or could not be verified (an old format)."""


class VectorizationError(RuntimeError):
    """A program cannot run with particles as a leading batch dimension."""


class InferenceWarning(UserWarning):
    """An inference result should not be trusted as it is (low ESS, high k-hat, NaN weights)."""


class VectorizationNotice(UserWarning):
    """A program runs particle by particle because it could not be vectorized."""


class SimulationWarning(UserWarning):
    """Training dropped simulations of the model (NaN or infinite values), or skipped a
    step whose loss or gradients were not finite."""
