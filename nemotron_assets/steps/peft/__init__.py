"""Hugging Face PEFT: convert/merge_lora."""
