"""The offline demo (``deqshield demo``): train, attack, certify and report on the digits."""
