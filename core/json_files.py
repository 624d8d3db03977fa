"""The one JSON encoder of every file the project writes: always valid JSON (a NaN or inf, such as a score that
could not be computed, is written as null), numpy scalars and arrays as plain numbers and lists."""
import json
import math

import numpy as np


def plain(value):
    """``value`` with numpy types made plain and non-finite floats made None, in nested dicts, lists and tuples."""
    if isinstance(value, dict):
        return {key: plain(item) for key, item in value.items()}
    if isinstance(value, (list, tuple)):
        return [plain(item) for item in value]
    if isinstance(value, np.ndarray):
        return plain(value.tolist())
    if isinstance(value, np.generic):
        value = value.item()
    if isinstance(value, float) and not math.isfinite(value):
        return None
    return value


def json_text(value, **options):
    """The JSON text of ``value`` (``json.dumps`` options), never holding NaN or Infinity."""
    return json.dumps(plain(value), allow_nan=False, **options)
