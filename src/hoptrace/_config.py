"""The old import path of :mod:`hoptrace.core.settings`: the very same module object.

Settings live in the core, which imports nothing from the package around it. Importing
``hoptrace._config`` gives ``hoptrace.core.settings`` itself, so every name, private ones
included, and every assignment (a test resetting a module global, say) is shared.
"""

from __future__ import annotations

import sys

from .core import settings as _settings
from .core.settings import *  # noqa: F403  (the names, for type checkers)

sys.modules[__name__] = _settings
