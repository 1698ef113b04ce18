"""Model components (transformer, tokenizer, text encoder) and the built-in spec tables."""
