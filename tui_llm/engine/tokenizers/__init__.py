"""Tokenizer-side helpers beyond plain encoding: a model's chat template (chat_template.py)."""
