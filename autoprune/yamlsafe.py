"""Reading YAML that a user hands us: safe types only, and a bound on aliases (a 'billion laughs' document
expands to gigabytes once anything walks or prints it)."""

from __future__ import annotations

from typing import Any

import yaml

__all__ = ["load", "MAX_ALIASES"]

MAX_ALIASES = 20  # k aliases can expand to about e^(k/e) nodes at most: 20 keeps that near 1,500


class _BoundedLoader(yaml.SafeLoader):
    def __init__(self, stream: Any) -> None:
        super().__init__(stream)
        self._aliases = 0

    def compose_node(self, parent: Any, index: Any) -> Any:
        if self.check_event(yaml.events.AliasEvent):
            self._aliases += 1
            if self._aliases > MAX_ALIASES:
                raise yaml.composer.ComposerError(None, None, f"more than {MAX_ALIASES} aliases (refused)",
                                                  self.peek_event().start_mark)
        return super().compose_node(parent, index)


def load(text: str) -> Any:
    """``yaml.safe_load`` with at most ``MAX_ALIASES`` alias uses; raises ``yaml.YAMLError`` otherwise."""
    loader = _BoundedLoader(text)
    try:
        return loader.get_single_data()
    finally:
        loader.dispose()
