"""Megatron-Bridge: sft, peft and pretrain/megatron_bridge, convert/hf_to_megatron and megatron_to_hf."""
