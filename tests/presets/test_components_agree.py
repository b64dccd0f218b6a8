"""The manager's option tables (presets.components, no torch) match the engine's components:
every name the presets may use is registered, and every option is a keyword of the engine's
constructor with the same default — so a preset that validates also builds."""
from __future__ import annotations

import inspect

import pytest

from engine.heads import HEADS
from engine.losses import LOSSES
from engine.modes import TRAIN_MODES
from presets import components, schema


def keyword_defaults(factory, skip: int) -> tuple[dict, bool]:
    params = list(inspect.signature(factory).parameters.values())[skip:]
    named = {p.name: p.default for p in params if p.kind is p.POSITIONAL_OR_KEYWORD}
    return named, any(p.kind is p.VAR_KEYWORD for p in params)


def test_names_agree():
    assert sorted(HEADS.names()) == sorted(schema.HEADS) == sorted(components.HEAD_OPTIONS)
    assert sorted(LOSSES.names()) == sorted(schema.LOSSES) == sorted(components.LOSS_OPTIONS)
    assert sorted(TRAIN_MODES.names()) == sorted(schema.TRAIN_MODES) == sorted(components.MODE_OPTIONS)


@pytest.mark.parametrize("name", schema.HEADS)
def test_head_options_are_the_engine_keywords(name):
    engine, swallows = keyword_defaults(HEADS.get(name), 3)  # in_dim, num_classes, class_counts
    for key, default in components.HEAD_OPTIONS[name].items():
        if key in engine:
            assert engine[key] == default, f"{name}.{key}"
        else:  # e.g. CosPlus' `posthoc`, ignored like the reference's extra keys
            assert swallows, f"{name}: the engine does not accept {key!r}"


@pytest.mark.parametrize("name", schema.LOSSES)
def test_loss_options_are_the_engine_keywords(name):
    engine, _ = keyword_defaults(LOSSES.get(name), 1)  # class_counts
    for key, default in components.LOSS_OPTIONS[name].items():
        assert engine.get(key, "missing") == default, f"{name}.{key}"


@pytest.mark.parametrize("name", schema.TRAIN_MODES)
def test_mode_options_are_the_engine_defaults(name):
    assert TRAIN_MODES.get(name).defaults == components.MODE_OPTIONS[name]
