"""A model slot's states and the transitions allowed between them (see application/slot.py)."""

from __future__ import annotations

import enum


class ModelState(enum.Enum):
    EMPTY = "empty"  # no model, nothing running
    LOADING = "loading"  # planning, spawning or waiting for the engine to be healthy
    READY = "ready"  # serving generations
    STOPPING = "stopping"  # the engine is being stopped (unload, replacement, cancelled load)
    FAILED = "failed"  # the engine died or could not be started; last_error says why


S = ModelState
TRANSITIONS: dict[ModelState, frozenset[ModelState]] = {
    S.EMPTY: frozenset({S.LOADING}),
    # LOADING -> LOADING: a later load (or a restore) takes over before anything was spawned
    S.LOADING: frozenset({S.LOADING, S.READY, S.STOPPING, S.FAILED, S.EMPTY}),
    S.READY: frozenset({S.STOPPING, S.FAILED}),
    S.STOPPING: frozenset({S.EMPTY, S.LOADING, S.FAILED}),
    S.FAILED: frozenset({S.LOADING, S.EMPTY}),
}


class IllegalTransition(RuntimeError):
    """A bug: the slot tried a transition the table does not allow."""


def check_transition(current: ModelState, target: ModelState) -> None:
    if target not in TRANSITIONS[current]:
        raise IllegalTransition(f"a model slot cannot go from {current.value} to {target.value}")
