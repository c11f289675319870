"""Learning-rate and Muon-momentum schedules of every stage (nanochat 8c89661).

A stage's schedule is ``f(step, progress) -> (lr multiplier, muon momentum)``,
evaluated on the host and fed to the jitted step as runtime scalars, so it
never recompiles. ``progress`` (0-1) is the fraction of the data consumed;
only midtraining's schedule uses it. ``init_lr_frac`` (SFT, RL) is folded into
the multiplier: nanochat sets ``lr = initial_lr * init_lr_frac * lrm``.
"""

from __future__ import annotations

from typing import Callable

Schedule = Callable[[int, float], tuple[float, float]]
DEFAULT_MUON_MOMENTUM = 0.95  # Muon's constructor default, used where nanochat does not ramp it


def lr_multiplier_schedule(
    step: int, num_iterations: int, warmup_ratio: float = 0.0, warmdown_ratio: float = 0.2, final_lr_frac: float = 0.0
) -> float:
    """base_train's ``get_lr_multiplier``: linear warmup, constant, linear warmdown to ``final_lr_frac``."""
    warmup_iters = round(warmup_ratio * num_iterations)
    warmdown_iters = round(warmdown_ratio * num_iterations)
    if step < warmup_iters:
        return (step + 1) / warmup_iters
    if step <= num_iterations - warmdown_iters:
        return 1.0
    progress = (num_iterations - step) / warmdown_iters
    return progress * 1.0 + (1 - progress) * final_lr_frac


def muon_momentum_schedule(step: int, warmup: int = 300, start: float = 0.85, end: float = 0.95) -> float:
    """``get_muon_momentum``: linear ``start -> end`` over ``warmup`` steps, then flat."""
    frac = min(step / warmup, 1)
    return (1 - frac) * start + frac * end


def mid_lr_multiplier(progress: float) -> float:
    """mid_train's ``get_lr_multiplier``: 1 for the first 80% of the epoch, then linear to 0."""
    return 1.0 if progress < 0.8 else 1 - (progress - 0.8) / 0.2


def linear_decay(step: int, num_steps: int, init_lr_frac: float = 1.0) -> float:
    """chat_sft / chat_rl: ``init_lr_frac * (1 - step / num_steps)``."""
    return init_lr_frac * (1.0 - step / num_steps)


def base_schedule(num_iterations: int, warmup_ratio: float, warmdown_ratio: float, final_lr_frac: float) -> Schedule:
    def schedule(step: int, progress: float) -> tuple[float, float]:
        lrm = lr_multiplier_schedule(step, num_iterations, warmup_ratio, warmdown_ratio, final_lr_frac)
        return lrm, muon_momentum_schedule(step)

    return schedule


def mid_schedule(step: int, progress: float) -> tuple[float, float]:
    return mid_lr_multiplier(progress), muon_momentum_schedule(step)


def decay_schedule(num_steps: int, init_lr_frac: float) -> Schedule:
    """SFT and RL: linear decay from ``init_lr_frac``; Muon momentum stays at its default."""

    def schedule(step: int, progress: float) -> tuple[float, float]:
        return linear_decay(step, num_steps, init_lr_frac), DEFAULT_MUON_MOMENTUM

    return schedule
