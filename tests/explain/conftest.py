"""Shared models for the explain tests: the bundled default, and a small one trained here."""

from __future__ import annotations

import numpy as np
import numpy.typing as npt
import pytest

from explain.bootstrap import generate, to_matrix
from explain.model import Model, load_model
from explain.registry import Registry
from explain.train import DataSource, Trained, TrainParams, train


@pytest.fixture(scope="session")
def bootstrap_data() -> tuple[npt.NDArray[np.float32], npt.NDArray[np.uint8]]:
    return to_matrix(generate(4000, seed=7))


@pytest.fixture(scope="session")
def small_trained(
    bootstrap_data: tuple[npt.NDArray[np.float32], npt.NDArray[np.uint8]],
) -> Trained:
    x, y = bootstrap_data
    return train(x, y, TrainParams(max_depth=3, n_estimators=40), DataSource("bootstrap", "t"))


@pytest.fixture(scope="session")
def small_model(small_trained: Trained) -> Model:
    return load_model(small_trained.raw, small_trained.model_id)


@pytest.fixture(scope="session")
def bundled_model() -> Model:
    return Registry("/nonexistent-registry").load()
