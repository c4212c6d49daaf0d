"""deqshield: adversarial robustness of deep equilibrium models."""

__version__ = "0.1.0"
