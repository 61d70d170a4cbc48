"""Chat and instruction data: JSONL readers (conversations.py), packed rows with a loss mask (packed.py),
and `prepare --chat` (prepare_chat.py). A temporary home: these move to tui_llm/engine/data/."""
