"""Library output an operator cannot act on is silenced in the served processes
(log_format.quiet_libraries); an operator's own settings win."""

from __future__ import annotations

import os
import warnings

from log_format import QUIET_LIBRARIES_ENV, quiet_libraries


def test_progress_bars_and_notices_are_off_unless_the_operator_says_otherwise(monkeypatch):
    for name in QUIET_LIBRARIES_ENV:
        monkeypatch.setenv(name, "-")  # so that monkeypatch restores it (or its absence) after
        monkeypatch.delenv(name)
    monkeypatch.setenv("TRANSFORMERS_VERBOSITY", "info")
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        quiet_libraries()
        warnings.warn("`torch_dtype` is deprecated, use dtype", FutureWarning, stacklevel=1)
        warnings.warn("something else", FutureWarning, stacklevel=1)
    assert [str(w.message) for w in caught] == ["something else"]
    assert os.environ["TQDM_DISABLE"] == "1" and os.environ["DIFFUSERS_VERBOSITY"] == "error"
    assert os.environ["TRANSFORMERS_VERBOSITY"] == "info"
