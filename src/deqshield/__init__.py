"""deqshield: adversarial robustness of deep equilibrium models.

What a user imports is listed in :mod:`deqshield.api`; ``docs/guide.md`` has the module map.
"""

__version__ = "0.1.0"
