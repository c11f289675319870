"""Every stage's schedule against nanochat 8c89661's formulas, values computed by hand."""

import pytest

from nanochat_jax import schedules





def test_lr_multiplier_schedule_hand_computed():
    f = schedules.lr_multiplier_schedule
    # N=100, warmdown 0.2 -> last 20 steps; constant through step 80 (80 <= 100 - 20).
    assert f(0, 100) == 1.0 and f(50, 100) == 1.0 and f(80, 100) == 1.0
    assert f(81, 100) == pytest.approx(19 / 20)
    assert f(90, 100) == pytest.approx(0.5)
    assert f(99, 100) == pytest.approx(0.05)
    assert f(100, 100) == pytest.approx(0.0)
    # final_lr_frac blends: progress 0.5 -> 0.5 + 0.5 * 0.1.
    assert f(90, 100, final_lr_frac=0.1) == pytest.approx(0.55)
    assert f(100, 100, final_lr_frac=0.1) == pytest.approx(0.1)
    # Warmup over round(0.1 * 100) = 10 steps: (it + 1) / 10.
    assert f(0, 100, warmup_ratio=0.1) == pytest.approx(0.1)
    assert f(4, 100, warmup_ratio=0.1) == pytest.approx(0.5)
    assert f(9, 100, warmup_ratio=0.1) == pytest.approx(1.0)
    assert f(10, 100, warmup_ratio=0.1) == 1.0
    # Python's round (half to even): round(0.1 * 25) = 2 warmdown steps.
    assert f(23, 25, warmdown_ratio=0.1) == 1.0
    assert f(24, 25, warmdown_ratio=0.1) == pytest.approx(0.5)
    # d20's horizon: 21,400 steps, warmdown over the last 4,280.
    assert f(17120, 21400) == 1.0
    assert f(17121, 21400) == pytest.approx(4279 / 4280)


def test_muon_momentum_schedule_hand_computed():
    f = schedules.muon_momentum_schedule
    assert f(0) == pytest.approx(0.85)
    assert f(150) == pytest.approx(0.90)
    assert f(300) == pytest.approx(0.95)
    assert f(1000) == pytest.approx(0.95)


def test_mid_lr_is_flat_for_80_percent_then_linear_to_zero():
    f = schedules.mid_lr_multiplier
    assert f(0.0) == 1.0 and f(0.5) == 1.0 and f(0.7999) == 1.0
    assert f(0.8) == pytest.approx(1.0)
    assert f(0.9) == pytest.approx(0.5)
    assert f(0.95) == pytest.approx(0.25)
    assert f(1.0) == pytest.approx(0.0)
    # The stage schedule ramps Muon momentum by step, independent of progress.
    assert schedules.mid_schedule(150, 0.9) == pytest.approx((0.5, 0.90))


def test_sft_and_rl_decay_from_init_lr_frac_with_flat_momentum():
    sft = schedules.decay_schedule(num_steps=651, init_lr_frac=0.02)
    assert sft(0, 0.0) == pytest.approx((0.02, 0.95))
    assert sft(325, 0.5) == pytest.approx((0.02 * (1 - 325 / 651), 0.95))
    assert sft(650, 1.0)[0] == pytest.approx(0.02 / 651)
    rl = schedules.decay_schedule(num_steps=467, init_lr_frac=0.05)
    assert rl(100, 0.0)[0] == pytest.approx(0.05 * 367 / 467)


def test_base_schedule_combines_lr_and_momentum():
    f = schedules.base_schedule(100, 0.0, 0.2, 0.0)
    assert f(90, 0.0) == pytest.approx((0.5, 0.85 + 0.1 * 90 / 300))
