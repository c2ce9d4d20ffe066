"""The error every data-generation problem raises (bad options, missing espeak-ng or voice, unwritable output)."""


class DataError(ValueError):
    """Synthetic data cannot be generated as asked; the message names the problem and what to do."""
