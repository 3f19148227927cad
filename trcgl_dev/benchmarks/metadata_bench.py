"""``python -m jobs.benchmark metadata``: reading and parsing the real PadChest CSV (160,861 rows, shipped in
torchxrayvision), what every first PadChest-Synth render does on the driver before any work.

Two pairs, each timed ``--repeats`` times in alternating order (baseline first, then ours first):

- read: ``pd.read_csv(path, dtype=str, keep_default_na=False)`` (baseline) vs
  :func:`trcgl.data.synth.source.read_full_csv` (pyarrow's CSV reader; the same frame);
- parse: ``ast.literal_eval`` (baseline) vs :func:`trcgl.data.padchest.literal_list` over every distinct stripped
  Labels and Localizations text (each text once, as the cleaning's cache does).

Then :func:`trcgl.data.synth.source.select_subset` for the tiny preset once, as it runs now (reading, cleaning and the
stratified draw), for scale. No Ray.

Printed: seconds of each run, the mean per method, and ours / baseline (below 1.0: ours is faster).
"""

from __future__ import annotations

import ast
import logging
import time
from collections.abc import Callable
from dataclasses import dataclass, field

log = logging.getLogger(__name__)

PAIRS = ("read", "parse")


@dataclass
class MetadataBenchResult:
    """Seconds of each timed run.

    Attributes:
        rows: rows of the CSV.
        texts: distinct Labels and Localizations texts parsed.
        seconds: (pair, "baseline" or "ours") -> seconds of each run.
        select_seconds: one subset selection for the tiny preset, reading and cleaning included.
    """

    rows: int
    texts: int
    seconds: dict[tuple[str, str], list[float]] = field(default_factory=dict)
    select_seconds: float = float("nan")

    def mean(self, pair: str, method: str) -> float:
        values = self.seconds.get((pair, method), [])
        return sum(values) / len(values) if values else float("nan")

    def lines(self) -> list[str]:
        out = [f"metadata  PadChest CSV: {self.rows} rows, {self.texts} distinct list texts"]
        for pair in PAIRS:
            for method in ("baseline", "ours"):
                runs = " ".join(f"{s:.2f}" for s in self.seconds.get((pair, method), []))
                out.append(f"metadata  {pair} {method}: {runs} s (mean {self.mean(pair, method):.2f} s)")
            out.append(f"metadata  {pair} ours/baseline: {self.mean(pair, 'ours') / self.mean(pair, 'baseline'):.2f}")
        out.append(f"metadata  select_subset (tiny preset, read and cleaning included): {self.select_seconds:.2f} s")
        return out


def _timed(fn: Callable[[], object]) -> float:
    t0 = time.perf_counter()
    fn()
    return time.perf_counter() - t0


def _parse_all(texts: list[str], parse: Callable[[str], object]) -> None:
    for text in texts:
        try:
            parse(text)
        except (ValueError, SyntaxError):
            pass


def run(repeats: int = 2) -> MetadataBenchResult:
    """Times both pairs and one subset selection (see the module docstring)."""
    import pandas as pd

    from trcgl.config import load_config
    from trcgl.data.padchest import default_metadata_path, literal_list
    from trcgl.data.synth.source import read_full_csv, select_subset

    path = default_metadata_path()
    frame = read_full_csv()
    texts = sorted(set(frame["Labels"].str.strip()) | set(frame["Localizations"].str.strip()))
    methods = {
        "read": {
            "baseline": lambda: pd.read_csv(path, dtype=str, keep_default_na=False),
            "ours": read_full_csv,
        },
        "parse": {
            "baseline": lambda: _parse_all(texts, ast.literal_eval),
            "ours": lambda: _parse_all(texts, literal_list),
        },
    }
    result = MetadataBenchResult(rows=len(frame), texts=len(texts))
    for i in range(repeats):
        order = ("baseline", "ours") if i % 2 == 0 else ("ours", "baseline")
        for pair in PAIRS:
            for method in order:
                result.seconds.setdefault((pair, method), []).append(_timed(methods[pair][method]))
    cfg = load_config("tiny")
    result.select_seconds = _timed(lambda: select_subset(cfg, read_full_csv()))
    return result
