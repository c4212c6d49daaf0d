"""``deqshield smooth RUN``: randomized-smoothing certificates of a trained run's model on the
first test examples (see :mod:`deqshield.smoothing.report` for what is written).

Resumable and shardable (:mod:`deqshield.smoothing.records`): every finished image is kept in a
partial-record file at once, ``resume`` certifies only the images those files lack, and under
``torchrun`` each process certifies its share of the images (:mod:`deqshield.sharding`); the
records, and so ``smoothing.json``, equal those of one uninterrupted process."""

from __future__ import annotations

import time
from typing import Any, Optional

from deqshield.io.runs import RunPath, load_run, output_dir
from deqshield.io.weights import weights_digest
from deqshield.settings import settings_dict
from deqshield.sharding import current_shard
from deqshield.smoothing.records import smoothing_records
from deqshield.smoothing.report import certify_samples, summarize, write_report
from deqshield.smoothing.sampling import Smoothing


def smooth_run(run_dir: RunPath, settings: Smoothing, *, out: Optional[RunPath] = None,
               limit: Optional[int] = None, seed: int = 0,
               data_dir: Optional[str] = None, progress: bool = False,
               resume: bool = False) -> dict[str, Any]:
    """Certify the run's model (best checkpoint, eval mode) on the first ``limit`` test
    examples; write ``smoothing.json`` and ``smoothing.png`` into ``out`` (default: the run
    directory; required for ``zoo:NAME``) and return the JSON content; ``progress`` shows a
    progress bar over the images; ``resume`` keeps the records of an interrupted run with the
    same settings, seed, model and images found in ``out``."""
    folder = output_dir(run_dir, out)
    loaded = load_run(run_dir, data_dir=data_dir)
    count = len(loaded.test) if limit is None else min(limit, len(loaded.test))
    context = {"run": str(run_dir), "checkpoint": str(loaded.checkpoint.path),
               "weights_sha256": weights_digest(loaded.model),
               "model": loaded.config.model.name, "data": f"{loaded.test.name}[:{count}]"}
    # the job's identity by content (weights, images, settings), not by where files lie, so a
    # certification resumes from another checkout or machine
    header = {"run": context["run"], "weights_sha256": context["weights_sha256"],
              "data": context["data"], "settings": settings_dict(settings), "seed": seed}
    partial = smoothing_records(folder)
    done = {int(r["index"]): r for r in partial.load(header)} if resume else {}
    shard = current_shard()
    mine = [index for index in range(count)
            if index % shard.world_size == shard.rank and index not in done]
    started = time.perf_counter()
    with partial.log(shard.rank, header, resume) as log:
        fresh = certify_samples(loaded.model, loaded.test.images[:count],
                                loaded.test.labels[:count], settings, seed,
                                progress and shard.is_main, indices=mine, on_record=log.append)
    by_index = {**done, **{r["index"]: r for r in shard.gather(fresh)}}
    records = [by_index[index] for index in range(count)]
    results = summarize(records, settings, seed, **context,
                        seconds=time.perf_counter() - started, resumed=len(done))
    if shard.is_main:
        write_report(results, folder,
                     f"{loaded.config.model.name}, sigma = {settings.sigma:g}"
                     + (", serialized" if settings.serialized else ""))
        partial.remove()
    return results
