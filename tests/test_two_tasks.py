"""A two-task supervised example: BLIP keeps task A, plain fine-tuning forgets it."""

from __future__ import annotations

from blip_rl.demo import main, run_two_tasks


def test_blip_keeps_task_a_far_better_than_finetuning():
    ft = run_two_tasks(use_blip=False, seed=0, epochs=30)
    bl = run_two_tasks(use_blip=True, seed=0, epochs=30)
    # Both learned A to begin with.
    assert ft.loss_a_after_a < 0.3 and bl.loss_a_after_a < 0.3
    # Fine-tuning forgets A clearly; BLIP stays far closer to its end-of-A loss.
    assert ft.forgetting > 0.5
    assert bl.forgetting < 0.1 * ft.forgetting
    # B was still learned somewhat with BLIP (better than chance, ln 4 = 1.39).
    assert bl.loss_b_after_b < 1.2
    assert bl.mean_bits > 0 and ft.mean_bits == 0


def test_demo_cli_prints_both_rows(capsys):
    assert main(["--seed", "1"]) == 0
    out = capsys.readouterr().out
    assert "fine-tune" in out and "BLIP" in out and "Forgetting of A" in out
