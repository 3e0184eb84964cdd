"""The methods SPD is compared with, each a composition of SPD's parts (see docs/methods.md).

Importing this package registers them: dense, sparse-ft, sparse-kd, sparse-progressive, theseus.
"""
from baselines import dense, sparse, theseus  # noqa: F401  (imported for their @register_method)
