"""Data preparation with HF tokenizers and pyarrow: sft_packing, pretrain_prep, rl_prep and blend, with the
tokenizer and chat-template handling that every tokenizing step shares."""
