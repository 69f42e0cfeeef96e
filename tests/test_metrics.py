import numpy as np
import pytest
from sklearn.metrics import roc_auc_score

from lista_cli.metrics import roc_auc


@pytest.mark.parametrize("size", [2, 17, 1001])
def test_roc_auc_matches_sklearn_with_ties(rng, size):
    for _ in range(5):
        labels = rng.random(size) < 0.3
        labels[0], labels[-1] = True, False
        scores = np.round(rng.random(size), 1)  # many ties
        assert roc_auc(labels, scores) == pytest.approx(roc_auc_score(labels, scores), abs=1e-9)


def test_roc_auc_one_class_is_nan():
    assert np.isnan(roc_auc(np.zeros(4, bool), np.arange(4.0)))
