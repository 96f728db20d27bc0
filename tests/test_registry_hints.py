"""Type hints of registered builders: checked argument by argument; one that cannot be resolved is reported."""

from __future__ import annotations

import logging
import typing
from collections.abc import Iterator

import pytest

from medseg.errors import ConfigError
from medseg.models import registry
from medseg.models.registry import create_model, register_model

if typing.TYPE_CHECKING:
    from torch import nn


@pytest.fixture()
def registered() -> Iterator[list[str]]:
    names: list[str] = []
    yield names
    for name in names:
        registry._REGISTRY.pop(name, None)


def test_an_unresolvable_return_hint_keeps_the_arguments_checked(registered: list[str]) -> None:
    import torch

    @register_model("test_hint_return")
    def builder(*, width: int = 2) -> nn.Module:       # `nn` exists only for type checkers
        return torch.nn.Linear(width, 1)

    registered.append("test_hint_return")
    assert create_model("test_hint_return", width="3").in_features == 3            # lax: "3" -> 3
    with pytest.raises(ConfigError, match=r"argument 'width'.*valid integer"):
        create_model("test_hint_return", width="wide")


def test_an_unresolvable_argument_hint_is_reported_and_only_that_argument_is_unchecked(
        registered: list[str], caplog: pytest.LogCaptureFixture) -> None:
    import torch

    @register_model("test_hint_argument")
    def builder(*, width: int = 2, mode: UndefinedMode = "a") -> nn.Module:  # noqa: F821
        return torch.nn.Linear(width, 1)

    registered.append("test_hint_argument")
    with caplog.at_level(logging.WARNING, logger="medseg.models.registry"):
        assert create_model("test_hint_argument", mode=object()).in_features == 2
    assert "argument 'mode'" in caplog.text and "UndefinedMode" in caplog.text
    with pytest.raises(ConfigError, match=r"argument 'width'"):
        create_model("test_hint_argument", width=[1])
