"""NeMo AutoModel: sft, peft and pretrain/automodel (recipe config, job backend, CPU compatibility layer)."""
