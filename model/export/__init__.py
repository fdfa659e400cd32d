"""A trained model in the formats people run models in (`orchestrator export`).

    spm        a SentencePiece model file read without protobuf (pieces, types, settings)
    tokenizer  Hugging Face tokenizer files (tokenizer.json ...) and GGUF vocabulary lists
    families   per model family: its standard HF architecture (config, tensor names) and
               the HF -> GGUF step (llama.cpp architecture, metadata, tensor changes)
    hf         a transformers folder: config.json, model.safetensors, generation_config.json
    gguf       one .gguf file for llama.cpp, Ollama, LM Studio
    card       README.md naming the source checkpoint; an Ollama Modelfile
    writer     the steps together: a state dict and its config into one export folder

Imports torch, safetensors and gguf (only when writing those formats), sentencepiece
never: the tokenizer files come from the model file itself. transformers, llama.cpp and
`tokenizers` are needed to load an export, never to write one.
"""
