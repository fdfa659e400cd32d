"""The GPT network. `model.config` is torch-free (the daemon validates model configs
with it); `model.gpt` holds the network and imports torch."""
