"""The model's parts: loading network weights, the tokenizer and text encoder, and the noise schedulers."""
