"""Make a config-only model folder that vLLM can serve with ``--load-format dummy``.

vLLM needs ``config.json`` (the architecture: this decides memory and speed) and a tokenizer. No hub is
reachable, so the tokenizer is synthetic: a word-level vocabulary of the model's exact size (``<unk>``, ``<s>``,
``</s>``, then ``w3`` ... ``wN``) built with the ``tokenizers`` library. Our prompts go out as token-id lists, but
text must round-trip too: ``/v1/chat/completions`` prompts are those words (the chat template is the bare message
text), and ``vllm bench serve`` builds its random prompts by decoding ids to text and re-encoding it.

Two traps, both measured (``results/h200/client_agreement/README.md``):

- The tokenizer lives in its own folder, ``tokenizer/``, passed to vLLM as ``--tokenizer``: beside a
  ``config.json`` of ``model_type`` qwen2, transformers 5 ignores ``tokenizer_class`` and builds its Qwen2 BPE
  over our vocabulary (no merges, byte-level split): ``[974, 1045]`` decoded to ``w974w1045`` and
  ``w974 w1045 w1495`` encoded to ``[1, 1]``.
- The special tokens are not ``w0``/``w1``/``w2``: transformers matches special tokens inside words, so ``w1045``
  encoded as ``w1`` + unknown. With both, ``vllm bench serve``'s "random" prompts for Qwen2-1.5B were runs of
  ids 1 and 0: 92 of 200 prompts shared their first block, and on the H200 49 % of their prompt tokens were prefix-cache
  hits: why it read 18-27 % more throughput than our client on the same server.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

from sloguard_lib.errors import InputError
from sloguard_lib.hardware import ModelShape

CHAT_TEMPLATE = "{% for m in messages %}{{ m['content'] }}{% endfor %}"


SPECIAL = ("<unk>", "<s>", "</s>")  # ids 0, 1, 2; never a substring of a ``w`` word
TOKENIZER_DIR = "tokenizer"


def word(token_id: int) -> str:
    """The synthetic tokenizer's word for one id (ids 0-2 are the special tokens)."""
    return SPECIAL[token_id] if token_id < len(SPECIAL) else f"w{token_id}"


def tokenizer_dir(model_dir: str | Path) -> Path | None:
    """The synthetic tokenizer's folder of a folder that ``prepare_model_dir`` made, else None (the model folder
    carries its own tokenizer, which vLLM finds there)."""
    top, tok = Path(model_dir), Path(model_dir) / TOKENIZER_DIR
    own = (top / "tokenizer.json").exists() or (top / "tokenizer_config.json").exists()
    return tok if (tok / "tokenizer.json").exists() and not own else None


def prepare_model_dir(shape: ModelShape, dest: str | Path) -> Path:
    """Copy ``config.json`` and write a synthetic fast tokenizer of ``shape.vocab_size`` words into
    ``dest/tokenizer/`` (where no ``config.json`` decides its class)."""
    try:
        from tokenizers import Tokenizer, models, pre_tokenizers  # type: ignore[import-not-found,unused-ignore]
    except ImportError:
        raise InputError("the vllm backend needs the 'tokenizers' package to give a config-only model a "
                         "synthetic tokenizer: pip install tokenizers (vLLM installs it)") from None

    out = Path(dest)
    tok_dir = out / TOKENIZER_DIR
    tok_dir.mkdir(parents=True, exist_ok=True)
    shutil.copy(Path(shape.path) / "config.json", out / "config.json")
    for stale in ("tokenizer.json", "tokenizer_config.json"):  # the layout of earlier versions (see above)
        (out / stale).unlink(missing_ok=True)
    vocab = {word(i): i for i in range(shape.vocab_size)}
    tok = Tokenizer(models.WordLevel(vocab=vocab, unk_token=SPECIAL[0]))
    tok.pre_tokenizer = pre_tokenizers.WhitespaceSplit()
    tok.save(str(tok_dir / "tokenizer.json"))
    (tok_dir / "tokenizer_config.json").write_text(json.dumps({
        "tokenizer_class": "PreTrainedTokenizerFast", "unk_token": SPECIAL[0], "bos_token": SPECIAL[1],
        "eos_token": SPECIAL[2], "model_max_length": shape.max_position_embeddings, "chat_template": CHAT_TEMPLATE,
    }, indent=1))
    return out
