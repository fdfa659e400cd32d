"""The network. Importing this package does not import torch.

config     GPTConfig, presets, families (llama, gpt2): torch-free, the daemon validates with it
build      the network of a config, whatever its family
llama      the llama family (Hugging Face Llama / Qwen3 names and math): the default
gpt        the gpt2 family (the GPT-2 recipe of 2019)
causal     what both families share: cached causal attention, the layer loop, the loss
generate   KV cache, token-by-token generation and sampling, for both families
export/    safetensors for transformers, GGUF for llama.cpp, the model card
"""
