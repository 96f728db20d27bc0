"""Slice sampling for segmentation training: lung slices favoured, `schedule.sample_boost` favours a label."""

from __future__ import annotations

import numpy as np
import pytest

from medseg.errors import ConfigError
from medseg.train.config import TrainConfig
from medseg.train.segmentation import _sample_boost
from medseg.train.segmentation_data import CachedCase, SliceSampler


def _case() -> CachedCase:
    """10 slices: 0-3 empty, 4-7 lobe 1 only, 8-9 lobe 1 plus a small patch of lobe 4."""
    label = np.zeros((10, 20, 20), np.uint8)
    label[4:, :10] = 1
    label[8:, 15:17, 15:17] = 4
    return CachedCase("c", np.zeros(label.shape, np.int16), label)


def test_boost_multiplies_a_labels_area_in_the_slice_weights() -> None:
    case = _case()
    plain, boosted = case.slice_weights(), case.slice_weights({4: 5.0})
    area = 0.5 + 4 / 400
    assert plain[8] == pytest.approx(area + 0.1 * np.mean([0] * 4 + [0.5] * 4 + [area] * 2))
    assert boosted[8] - boosted[4] == pytest.approx(5 * 4 / 400)      # lobe 4 counted five times
    assert plain[0] > 0 and boosted[0] > 0                            # empty slices can still be drawn


def test_sampler_draws_boosted_slices_more_often() -> None:
    def share_of_lobe4_slices(boost: dict[int, float] | None) -> float:
        sampler = SliceSampler([_case()], 1, (32, 32), seed=0, boost=boost)
        return float(np.mean([sampler.draw()[1] >= 8 for _ in range(4000)]))

    assert share_of_lobe4_slices({4: 200.0}) > share_of_lobe4_slices(None) + 0.2


def test_sample_boost_names_must_be_labels() -> None:
    labels = {0: "background", 4: "right_middle_lobe"}
    config = TrainConfig.model_validate({"data": {"manifest": "m.yaml"}, "preprocessing": {"modality": "ct"},
                                         "schedule": {"sample_boost": {"right_middle_lobe": 3}}})
    assert _sample_boost(config, labels) == {4: 3.0}
    config.schedule.sample_boost = {"RML": 3.0}
    with pytest.raises(ConfigError, match="RML"):
        _sample_boost(config, labels)
    config.schedule.sample_boost = {"right_middle_lobe": -1.0}
    with pytest.raises(ConfigError, match="> 0"):
        _sample_boost(config, labels)
