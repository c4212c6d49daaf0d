"""The model zoo: trained models shipped with deqshield, each with a card of how it was trained
and evaluated (RobustBench's ``load_model`` habit)::

    from deqshield import zoo
    zoo.names()                          # ['mnist-linf-0.1-cerdeq', ...]
    model, card = zoo.load("mnist-linf-0.3-deq")   # eval mode, weights' sha256 checked
    zoo.card("mnist-linf-0.3-deq").worst_case_accuracy

On the command line ``zoo:NAME`` stands for a run directory (``deqshield evaluate
zoo:NAME --out DIR``); ``deqshield zoo add RUN --name NAME`` packages a finished run (with its
evaluation, certification or randomized-smoothing certificate), ``zoo list`` and ``zoo show
NAME`` read the cards. The zoo folder is the package's ``zoo/models/`` unless the
environment variable ``DEQSHIELD_ZOO`` names another (see :mod:`deqshield.zoo.store`).
"""

from deqshield.zoo.cards import Card
from deqshield.zoo.slices import test_slice
from deqshield.zoo.store import card, config, load, names, root

__all__ = ["Card", "card", "config", "load", "names", "root", "test_slice"]
