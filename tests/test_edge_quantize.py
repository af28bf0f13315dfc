"""The int8 edge's agreement rule (alignedvq/edge_quantize.py): a token agrees only if every
stage's index does, and the threshold refuses below 99 % unless forced."""

from __future__ import annotations

import numpy as np
import pytest

from alignedvq.edge_export import EdgeExportError
from alignedvq.edge_quantize import AgreementBelowThreshold, agreement, check_agreement


def _indices(differing: int, tokens: int = 200, stages: int = 2) -> tuple[np.ndarray, np.ndarray]:
    reference = np.arange(tokens * stages).reshape(1, tokens, stages)
    other = reference.copy()
    other[0, :differing, 1] += 1  # only the last stage differs: the whole token counts
    return reference, other


def test_a_token_agrees_only_if_every_stage_does():
    r = agreement(*_indices(3))
    assert (r["tokens"], r["differing_tokens"], r["images"]) == (200, 3, 1)
    assert r["token_agreement"] == pytest.approx(197 / 200)


def test_the_threshold_passes_at_99_percent_and_refuses_below():
    assert check_agreement(agreement(*_indices(2)))["passed"]              # 99.0 %
    with pytest.raises(AgreementBelowThreshold, match=r"98\.50% of 200 tokens.*99% threshold"):
        check_agreement(agreement(*_indices(3)))
    assert issubclass(AgreementBelowThreshold, EdgeExportError)  # export-edge's exit code 2


def test_forcing_records_that_it_was_forced():
    r = check_agreement(agreement(*_indices(50)), allow_below_threshold=True)
    assert r["forced"] and not r["passed"] and r["token_agreement"] == 0.75
    assert not check_agreement(agreement(*_indices(0)), allow_below_threshold=True)["forced"]
