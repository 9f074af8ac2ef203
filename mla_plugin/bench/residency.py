"""--sm12x-residency: run our kernel with as many CTAs per SM as SM12x holds.

An SM12x GPU has geometry.SM12X_SMEM_PER_SM (100 KiB) of shared memory per SM: one CTA at our
budget (geometry.SMEM_BUDGET_BYTES, 99 KiB; the default kernels use 86-99 KiB), two of at most
49 KiB (the FP8 16-row CTA of the SM12x pair-ring build, csrc/README.md). Hopper has 228 KiB per
SM and fits two of either, so a Hopper run overstates what SM12x can overlap for the larger
CTAs. The kernel side emulates SM12x's residency: when the environment variable
below is "1" at launch, dispatch plans for an SM12x SM's shared memory and, where Hopper would
fit more CTAs than SM12x, reserves extra dynamic shared memory so that it fits no more
(dispatch.residency_smem_bytes). The bench sets it around
our calls only (never TRITON_MLA's: the baseline runs as it would on this GPU), restores it
afterwards, and says in every output that residency, and only residency, was emulated.

The variable is read at launch, so a CUDA graph captured while it is set replays the
emulated launch; the bench sets it around each of our calls, the capture included.
"""

from __future__ import annotations

import contextlib
import functools
import importlib
import os

from mla_plugin import geometry

# mla_plugin.dispatch.SM12X_RESIDENCY_ENV is the name (env_name() reads it); this copy only
# keeps the bench's option working where dispatch cannot be imported.
FALLBACK_ENV = "MLA_PLUGIN_SM12X_RESIDENCY"
FALLBACK_RESERVED_SMEM_PER_CTA = geometry.SMEM_RESERVED_PER_CTA  # where dispatch cannot be imported

STATEMENT = ("SM12x residency emulated for our kernel only (no more of its CTAs per SM than SM12x's 100 KiB "
             "holds, by reserving shared memory; TRITON_MLA runs unchanged). This emulates residency only: not SM12x clocks, "
             "SM count or GDDR7 memory bandwidth.")


def _dispatch():
    try:
        return importlib.import_module("mla_plugin.dispatch")
    except Exception:  # dispatch needs torch and the build helpers; the name must not
        return None


def env_name() -> str:
    """The variable dispatch reads (its SM12X_RESIDENCY_ENV when it defines one)."""
    return getattr(_dispatch(), "SM12X_RESIDENCY_ENV", FALLBACK_ENV)


def dispatch_defines_env() -> bool:
    """Whether this tree's dispatch says it reads the variable (if not, the kernel may ignore it)."""
    return hasattr(_dispatch(), "SM12X_RESIDENCY_ENV")


def reserved_smem_per_cta() -> int:
    return int(getattr(_dispatch(), "SM90_RESERVED_SMEM_PER_CTA", FALLBACK_RESERVED_SMEM_PER_CTA))


@contextlib.contextmanager
def environment(variables: dict[str, str]):
    """Set `variables` in os.environ for the block; restore each to what it was (or absent)."""
    saved = {name: os.environ.get(name) for name in variables}
    os.environ.update(variables)
    try:
        yield
    finally:
        for name, value in saved.items():
            if value is None:
                os.environ.pop(name, None)
            else:
                os.environ[name] = value


def with_environment(run, variables: dict[str, str] | None):
    """run, called with `variables` set (run itself when there are none)."""
    if not variables:
        return run

    @functools.wraps(run)
    def wrapped():
        with environment(variables):
            return run()

    return wrapped


def variables(enabled: bool) -> dict[str, str]:
    """The environment our calls get: the variable at "1" with --sm12x-residency, else at "0",
    so that a value left in the shell never makes a run emulate what its report denies."""
    return {env_name(): "1" if enabled else "0"}


def stray_setting() -> str | None:
    """The variable's value when the shell sets it to something other than off (the bench
    overrides it for our calls: --sm12x-residency decides), else None."""
    value = os.environ.get(env_name())
    return value if value not in (None, "", "0") else None


def ctas_per_sm(smem_per_sm: int, smem_per_cta: int, reserved_per_cta: int | None = None) -> int:
    """How many CTAs of `smem_per_cta` dynamic shared memory fit on one SM (shared memory only),
    each also costing the driver's reserved bytes."""
    reserved = reserved_smem_per_cta() if reserved_per_cta is None else reserved_per_cta
    return max(1, smem_per_sm // (smem_per_cta + reserved))


def requested_smem(smem_per_sm: int | None, smem_per_cta: int, sm_count: int = 1, name: str = "?") -> int | None:
    """The dynamic shared memory dispatch requests per CTA under emulation
    (dispatch.residency_smem_bytes), or None where dispatch cannot say."""
    d = _dispatch()
    if not smem_per_sm or not hasattr(d, "residency_smem_bytes") or not hasattr(d, "DeviceFacts"):
        return None
    try:
        return int(d.residency_smem_bytes(d.DeviceFacts(name, sm_count, smem_per_sm), smem_per_cta))
    except Exception:  # another dispatch's signature: the report just leaves it out
        return None


def describe(smem_per_sm: int | None, smem_per_cta: int = geometry.SMEM_BUDGET_BYTES, sm_count: int = 1,
             name: str = "?") -> dict:
    """What the emulation changes on this GPU, for the report: how many of our largest CTAs
    (the kernel's budget) fit per SM natively and on SM12x, and the shared memory dispatch then
    requests for such a CTA."""
    native = ctas_per_sm(smem_per_sm, smem_per_cta) if smem_per_sm else None
    return {
        "emulated": True,
        "env": env_name(),
        "dispatch_defines_env": dispatch_defines_env(),
        "smem_per_sm": smem_per_sm,
        "smem_per_cta_budget": smem_per_cta,
        "native_ctas_per_sm_at_budget": native,
        "emulated_ctas_per_sm": ctas_per_sm(geometry.SM12X_SMEM_PER_SM, smem_per_cta),
        "smem_requested_at_budget": requested_smem(smem_per_sm, smem_per_cta, sm_count, name),
        "statement": STATEMENT,
    }
