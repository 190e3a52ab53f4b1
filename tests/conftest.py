"""Test configuration: float64 on, so the float64 references and finite differences work.

The library always passes dtypes explicitly (initialisers default to float32),
so enabling x64 here changes no float32 result.
"""

import jax

jax.config.update("jax_enable_x64", True)
