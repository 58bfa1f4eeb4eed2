"""Export targets, registered by name. Adding a target means adding one module that registers."""

from __future__ import annotations

from typing import Callable

TARGETS: dict[str, Callable] = {}


def register_target(name: str):
    def deco(fn):
        TARGETS[name] = fn
        return fn

    return deco
