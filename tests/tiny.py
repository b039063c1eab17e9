"""The smallest real training run the CLI tests share: two games, two envs, whole budgets of a
few rollouts, one evaluation episode capped at 160 frames."""

TINY = [
    "--games", "pong,breakout",
    "--num-envs", "2",
    "--num-steps", "32",
    "--num-minibatches", "2",
    "--update-epochs", "1",
    "--eval-episodes", "1",
    "--max-episode-frames", "160",
    "--no-progress",
]  # fmt: skip
