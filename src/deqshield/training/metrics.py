"""Per-epoch metrics: JSON lines, a printed summary, and TensorBoard scalars when the optional
``tensorboard`` package is installed (it is not a dependency)."""

from __future__ import annotations

import importlib.util
import json
from pathlib import Path
from typing import Any, Optional

from tqdm.auto import tqdm


class MetricsLog:
    """Appends one JSON object per epoch to ``path`` (None: no files, summary only)."""

    def __init__(self, path: Optional[Path]):
        self.path = path
        self.writer: Any = None
        if path is not None and importlib.util.find_spec("tensorboard") is not None:
            from torch.utils.tensorboard import SummaryWriter

            self.writer = SummaryWriter(str(path.parent / "tensorboard"))

    def write(self, record: dict[str, Any], echo: bool) -> None:
        """Log ``record`` (must hold ``epoch`` and ``step``); print a summary if ``echo``."""
        if self.path is not None:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            with open(self.path, "a") as handle:
                handle.write(json.dumps(record) + "\n")
        if self.writer is not None:
            for key, value in record.items():
                if isinstance(value, float):
                    self.writer.add_scalar(key, value, record["step"])
        if echo:
            tqdm.write("epoch {epoch}: ".format(**record) + "  ".join(
                f"{key} {value:.4g}" for key, value in record.items()
                if isinstance(value, float)))

    def close(self) -> None:
        if self.writer is not None:
            self.writer.close()
