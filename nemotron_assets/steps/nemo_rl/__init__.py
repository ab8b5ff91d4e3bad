"""NeMo-RL: rl/nemo_rl/dpo, rlvr and rlhf, run in the nemo-rl container."""
