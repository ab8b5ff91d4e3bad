"""Functions the shipped lm-eval task files call (`!function utils.<name>`)."""


def reply_pairs(dataset):
    """Chat records -> one document per assistant reply, with the user message it answers."""

    def split(batch):
        pairs = {"prompt": [], "reply": []}
        for messages in batch["messages"]:
            for previous, message in zip(messages, messages[1:], strict=False):
                if message["role"] == "assistant" and previous["role"] == "user":
                    pairs["prompt"].append(previous["content"])
                    pairs["reply"].append(message["content"])
        return pairs

    return dataset.map(split, batched=True, remove_columns=dataset.column_names)


def nll_per_byte(doc, results):
    """Negative log-likelihood of the reply and its UTF-8 size: comparable across tokenizers."""
    loglikelihood, _ = results[0]
    return {"nll_per_byte": (-loglikelihood, len(doc["reply"].encode()))}


def byte_weighted(items):
    return sum(nll for nll, _ in items) / sum(size for _, size in items)
