"""The overfitting rule of the variant study, shared by the runner (``bench.variants``, which writes the ``overfit``
column) and the reports (``bench.report_variants``, ``bench.report``): torch- and matplotlib-free, so the training
process imports neither for it."""
from __future__ import annotations

import math

OVERFIT_TOL = 0.02     # overfit: final validation loss above the best eval's by more than this fraction


def is_overfit(final, best) -> bool | None:
    """Did the run end more than ``OVERFIT_TOL`` above its best eval? (None when either is unknown; bench.variants
    writes it into variants.csv, ``report_variants.learning_columns`` fills it for older files)"""
    if final is None or best is None or not (math.isfinite(final) and math.isfinite(best)):
        return None
    return bool(final > best * (1 + OVERFIT_TOL))


def overfit_mask(df):
    """The rows of a variants table whose ``overfit`` is True (the column holds True, False or NaN)."""
    return df["overfit"].map(lambda v: v is True or v == True).astype(bool)  # noqa: E712 - numpy bools too
