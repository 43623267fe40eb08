"""Reward terms registered by name, chosen per stage from YAML (`stages.<name>.reward`).

A term is a small pure function `(item: RewardInput, ctx: RewardContext) -> float | None` whose docstring states its
range; None means "not applicable to this item" (e.g. no reference reasoning), and the composition then redistributes
that term's weight instead of scoring it 0. The names are declared in `medr3/names.py` (REWARD_TERMS), so the config
checks a composition at load without importing the terms.
"""

from __future__ import annotations

from collections.abc import Callable

from medr3.names import REWARD_TERMS

_TERMS: dict[str, Callable] = {}


def register_reward(name: str):
    """Decorator: make a reward term available to compositions under `name`, which must be declared in
    `medr3.names.REWARD_TERMS` (the config checks compositions against it)."""
    if name not in REWARD_TERMS:
        raise ValueError(f"reward term {name!r} is not declared in medr3/names.py (REWARD_TERMS)")

    def wrap(fn: Callable) -> Callable:
        if name in _TERMS and _TERMS[name] is not fn:
            raise ValueError(f"reward term {name!r} registered twice")
        _TERMS[name] = fn
        return fn

    return wrap


def get_term(name: str) -> Callable:
    registered_terms()
    try:
        return _TERMS[name]
    except KeyError:
        raise KeyError(f"unknown reward term {name!r} (known: {sorted(_TERMS)})") from None


def registered_terms() -> set[str]:
    import medr3.rewards.terms  # noqa: F401  (registers the built-in terms)

    return set(_TERMS)
