"""Reading YAML that a user hands us: safe types only, and a bound on aliases (a 'billion laughs' document
expands to gigabytes once anything walks or prints it); writing YAML a user reads: safe types, in the given key
order, without anchors and aliases (a value written twice is written out twice)."""

from __future__ import annotations

from typing import Any

import yaml

__all__ = ["load", "dump", "MAX_ALIASES"]

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


class _PlainDumper(yaml.SafeDumper):
    def ignore_aliases(self, data: Any) -> bool:
        return True


def dump(data: Any) -> str:
    """``yaml.safe_dump(data, sort_keys=False)`` without ``&id001`` anchors and ``*id001`` aliases."""
    return yaml.dump(data, Dumper=_PlainDumper, sort_keys=False, allow_unicode=True)
