"""The tests' float64 references: a thin re-export of `jaxconv.reference` (kept so `import reference as ref` works)."""

from jaxconv.reference import *  # noqa: F401,F403
from jaxconv.reference import pair as _pair  # noqa: F401  (the name tests used before the package split)
