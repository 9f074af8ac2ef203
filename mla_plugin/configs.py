"""Per-GPU tuning tables (configs/tuning/*.yaml): how the op sizes its split-KV grid.

A table matches a GPU when one of its `match` strings occurs in the device name. Keys:
  waves                 CTAs to aim for, in multiples of (SMs x CTAs that fit on one SM)
  max_splits            upper bound on KV splits per request
  min_tokens_per_split  a split shorter than this costs more in combine traffic than it gains
  max_cluster_splits    up to this many splits of a request merge inside a thread block cluster
                        (no combine kernel) where the GPU holds all the clusters at once; 0: never
  ragged_headroom       a plan of 2..max_balanced_splits splits per request balances them over the
                        batch's lengths, each request taking up to this many times the plan's
                        splits (a ragged batch's long requests more, its short ones fewer; merged
                        by the combine kernel, before any cluster merge); 1: never
  min_balanced_splits   the fewest splits per request a plan balances (1: a plan without splits
                        too, adding the combine kernel)
  max_balanced_splits   the most splits per request a plan balances (more, shorter splits gain
                        nothing from it)
Missing keys take DEFAULTS; a GPU no table matches uses DEFAULTS alone.
"""

from __future__ import annotations

import functools
from pathlib import Path

DEFAULTS = {"waves": 1.0, "max_splits": 64, "min_tokens_per_split": 256, "max_cluster_splits": 8,
            "ragged_headroom": 2, "min_balanced_splits": 2, "max_balanced_splits": 8}
_KEYS = set(DEFAULTS) | {"name", "match"}


def tuning_dir() -> Path:
    try:
        from mla_plugin import _paths

        return Path(_paths.configs_dir()) / "tuning"
    except ImportError:
        return Path(__file__).resolve().parent.parent / "configs" / "tuning"


@functools.lru_cache(maxsize=None)
def load_tables() -> tuple[dict, ...]:
    import yaml

    tables = []
    for path in sorted(tuning_dir().glob("*.yaml")):
        data = yaml.safe_load(path.read_text()) or {}
        unknown = set(data) - _KEYS
        if unknown or not data.get("match"):
            raise ValueError(f"{path}: needs `match` and only keys {sorted(_KEYS)}; unknown: {sorted(unknown)}")
        data["source"] = str(path)
        tables.append(data)
    return tuple(tables)


@functools.lru_cache(maxsize=None)
def tuning_for(device_name: str) -> dict:
    """The merged tuning (DEFAULTS overridden by the first matching table) for a GPU name."""
    for table in load_tables():
        if any(m.lower() in device_name.lower() for m in table["match"]):
            return {**DEFAULTS, **{k: table[k] for k in DEFAULTS if k in table}, "source": table["source"]}
    return {**DEFAULTS, "source": "defaults"}
