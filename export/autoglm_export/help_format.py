"""``--help`` without a ``<bool>`` type next to flags.

typer 0.29 prints a type column for every option, flags included (``--force <bool>``, even
``--help <bool>``); a flag takes no value, so the column only misleads. Imported by cli.py.
"""

from __future__ import annotations

from typer.core import TyperOption

_display_type_rich = TyperOption.display_type_rich


def _no_type_for_flags(self: TyperOption, ctx):
    return None if self.is_flag else _display_type_rich(self, ctx)


TyperOption.display_type_rich = _no_type_for_flags
