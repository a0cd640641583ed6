"""User-facing errors.

Anything a user can get wrong (an unknown model, a density outside (0, 1], a corrupt checkpoint, data of the
wrong shape) raises :class:`NetsiftError`. The CLI prints its message as one line and exits non-zero; the
Python API lets it propagate like any other exception.
"""


class NetsiftError(Exception):
    """An error caused by the user's input, reported as a single line without a traceback."""


def check_density(density: float, name: str = "density") -> float:
    """Return ``density`` as a float if it lies in (0, 1], else raise :class:`NetsiftError`."""
    try:
        value = float(density)
    except (TypeError, ValueError):
        raise NetsiftError(f"{name} must be a number in (0, 1], got {density!r}") from None
    if not (0.0 < value <= 1.0):
        raise NetsiftError(f"{name} must be in (0, 1], got {density!r}")
    return value


def choose(value: str, options, what: str) -> str:
    """Return ``value`` if it is one of ``options``, else raise a one-line error listing the choices."""
    options = list(options)
    if value not in options:
        raise NetsiftError(f"unknown {what} {value!r}; choose from: {', '.join(options)}")
    return value
