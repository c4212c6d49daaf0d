"""``deqshield smooth RUN``: randomized-smoothing certificates of a trained run's model on the
first test examples (see :mod:`deqshield.smoothing.report` for what is written)."""

from __future__ import annotations

import time
from typing import Any, Optional

from deqshield.io.runs import RunPath, load_run, output_dir
from deqshield.smoothing.report import certify_samples, summarize, write_report
from deqshield.smoothing.sampling import Smoothing


def smooth_run(run_dir: RunPath, settings: Smoothing, *, out: Optional[RunPath] = None,
               limit: Optional[int] = None, seed: int = 0,
               data_dir: Optional[str] = None, progress: bool = False) -> dict[str, Any]:
    """Certify the run's model (best checkpoint, eval mode) on the first ``limit`` test
    examples; write ``smoothing.json`` and ``smoothing.png`` into ``out`` (default: the run
    directory; required for ``zoo:NAME``) and return the JSON content; ``progress`` shows a
    progress bar over the images."""
    folder = output_dir(run_dir, out)
    loaded = load_run(run_dir, data_dir=data_dir)
    count = len(loaded.test) if limit is None else min(limit, len(loaded.test))
    started = time.perf_counter()
    records = certify_samples(loaded.model, loaded.test.images[:count],
                              loaded.test.labels[:count], settings, seed, progress)
    results = summarize(records, settings, seed, run=str(run_dir),
                        checkpoint=str(loaded.checkpoint.path), model=loaded.config.model.name,
                        data=f"{loaded.test.name}[:{count}]",
                        seconds=time.perf_counter() - started)
    write_report(results, folder,
                 f"{loaded.config.model.name}, sigma = {settings.sigma:g}"
                 + (", serialized" if settings.serialized else ""))
    return results
