"""Corpus preparation: tokenizer training and corpus -> token parts (`orchestrator
tokenizer train`, `orchestrator prepare`). Never imports torch."""
