"""Make a config-only model folder that vLLM can serve with ``--load-format dummy``.

vLLM needs ``config.json`` (the architecture: this decides memory and speed) and a tokenizer. No hub is
reachable, so the tokenizer is synthetic: a word-level vocabulary of the model's exact size (``w0`` ...
``wN``) built with the ``tokenizers`` library. Prompts are sent as token-id lists, so its words never
matter; only its size (the embedding and logits shapes) does. Its chat template is the bare message text,
so ``/v1/chat/completions`` prompts written as those words are exactly as many tokens as the words.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

from .errors import InputError
from .hardware import ModelShape

CHAT_TEMPLATE = "{% for m in messages %}{{ m['content'] }}{% endfor %}"


def prepare_model_dir(shape: ModelShape, dest: str | Path) -> Path:
    """Copy ``config.json`` and write a synthetic fast tokenizer of ``shape.vocab_size`` words."""
    try:
        from tokenizers import Tokenizer, models, pre_tokenizers  # type: ignore[import-not-found,unused-ignore]
    except ImportError:
        raise InputError("the vllm backend needs the 'tokenizers' package to give a config-only model a "
                         "synthetic tokenizer: pip install tokenizers (vLLM installs it)") from None

    out = Path(dest)
    out.mkdir(parents=True, exist_ok=True)
    shutil.copy(Path(shape.path) / "config.json", out / "config.json")
    vocab = {f"w{i}": i for i in range(shape.vocab_size)}
    tok = Tokenizer(models.WordLevel(vocab=vocab, unk_token="w0"))
    tok.pre_tokenizer = pre_tokenizers.WhitespaceSplit()
    tok.save(str(out / "tokenizer.json"))
    (out / "tokenizer_config.json").write_text(json.dumps({
        "tokenizer_class": "PreTrainedTokenizerFast", "unk_token": "w0", "bos_token": "w1", "eos_token": "w2",
        "model_max_length": shape.max_position_embeddings, "chat_template": CHAT_TEMPLATE,
    }, indent=1))
    return out
