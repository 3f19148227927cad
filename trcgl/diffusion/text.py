"""Text side of the diffusion model: an offline word-level tokenizer and a small text encoder, or pretrained ones.

Nothing here knows about the UNet or the scheduler. The tokenizer is built from a word list
(:func:`trcgl.diffusion.prompts.prompt_vocabulary`) with the ``tokenizers`` library, so no vocabulary file is ever
downloaded; it splits text exactly as the prompt module does (:data:`~trcgl.diffusion.prompts.WORD_PATTERN`, lower
case) and wraps every prompt as ``<bos> words <eos>``, padded with ``<pad>``; unknown words become ``<unk>``.
"""

from __future__ import annotations

import logging
import os
import shutil
import tempfile
from collections.abc import Iterator, Sequence
from contextlib import contextmanager

from tokenizers import Regex, Tokenizer, models, normalizers, pre_tokenizers, processors
from transformers import (
    AutoModel,
    AutoTokenizer,
    CLIPTextConfig,
    CLIPTextModel,
    PreTrainedModel,
    PreTrainedTokenizerBase,
    PreTrainedTokenizerFast,
)

from trcgl.config import DiffusionConfig, StorageConfig
from trcgl.diffusion.prompts import WORD_PATTERN
from trcgl.storage import filesystem_for

log = logging.getLogger(__name__)

PAD, UNK, BOS, EOS = "<pad>", "<unk>", "<bos>", "<eos>"
SPECIAL_TOKENS = (PAD, UNK, BOS, EOS)  # ids 0..3


def build_tokenizer(vocabulary: Sequence[str], max_length: int) -> PreTrainedTokenizerFast:
    """A word-level tokenizer over ``vocabulary``, built offline.

    Args:
        vocabulary: words (as :func:`~trcgl.diffusion.prompts.prompt_vocabulary` returns them); order does not
            matter, ids follow the sorted order after the four special tokens.
        max_length: padded / truncated length in tokens, ``<bos>`` and ``<eos>`` included.

    Returns:
        A ``transformers`` fast tokenizer (save / load it with ``save_pretrained`` / ``AutoTokenizer``).
    """
    words = sorted({w.lower() for w in vocabulary} - set(SPECIAL_TOKENS))
    vocab = {tok: i for i, tok in enumerate([*SPECIAL_TOKENS, *words])}
    tok = Tokenizer(models.WordLevel(vocab=vocab, unk_token=UNK))
    tok.normalizer = normalizers.Sequence([normalizers.NFKC(), normalizers.Lowercase()])
    tok.pre_tokenizer = pre_tokenizers.Sequence(
        [pre_tokenizers.WhitespaceSplit(), pre_tokenizers.Split(Regex(WORD_PATTERN), behavior="isolated")]
    )
    tok.post_processor = processors.TemplateProcessing(
        single=f"{BOS} $A {EOS}", special_tokens=[(BOS, vocab[BOS]), (EOS, vocab[EOS])]
    )
    return PreTrainedTokenizerFast(
        tokenizer_object=tok,
        bos_token=BOS,
        eos_token=EOS,
        pad_token=PAD,
        unk_token=UNK,
        model_max_length=max_length,
        padding_side="right",
    )


def build_text_encoder(cfg: DiffusionConfig, tokenizer: PreTrainedTokenizerBase) -> CLIPTextModel:
    """A small randomly initialised CLIP text transformer (causal), trained jointly with the UNet.

    Args:
        cfg: ``text_hidden``, ``text_layers``, ``text_heads``, ``max_prompt_tokens``.
        tokenizer: gives the vocabulary size and the special-token ids.

    Returns:
        ``CLIPTextModel``; ``last_hidden_state`` is (B, L, cfg.text_hidden).
    """
    config = CLIPTextConfig(
        vocab_size=len(tokenizer),
        hidden_size=cfg.text_hidden,
        intermediate_size=4 * cfg.text_hidden,
        num_hidden_layers=cfg.text_layers,
        num_attention_heads=cfg.text_heads,
        max_position_embeddings=cfg.max_prompt_tokens,
        pad_token_id=tokenizer.pad_token_id,
        bos_token_id=tokenizer.bos_token_id,
        eos_token_id=tokenizer.eos_token_id,
    )
    return CLIPTextModel(config)


def load_text_components(folder: str, subfolder: str = "") -> tuple[PreTrainedModel, PreTrainedTokenizerBase]:
    """Loads a pretrained ``transformers`` text encoder and its tokenizer from a LOCAL folder (never a hub).

    Args:
        folder: a model folder with the encoder (``config.json`` + weights) and the tokenizer files, or a pipeline
            folder with ``text_encoder/`` and ``tokenizer/`` (then pass ``subfolder="text_encoder"``).
        subfolder: where the encoder lies inside ``folder``; the tokenizer is looked for in ``tokenizer/`` beside it
            when ``subfolder`` is given, else in ``folder`` itself.

    Raises:
        ValueError: for an encoder-decoder model (only encoders whose output has ``last_hidden_state`` fit).
    """
    enc_dir = os.path.join(folder, subfolder) if subfolder else folder
    tok_dir = os.path.join(folder, "tokenizer") if subfolder else folder
    encoder = AutoModel.from_pretrained(enc_dir, local_files_only=True)
    if getattr(encoder.config, "is_encoder_decoder", False):
        raise ValueError(f"text encoder at {enc_dir!r} is an encoder-decoder model; give an encoder-only model")
    tokenizer = AutoTokenizer.from_pretrained(tok_dir, local_files_only=True)
    log.info("loaded text encoder %s from %s", type(encoder).__name__, enc_dir)
    return encoder, tokenizer


def hidden_size(encoder: PreTrainedModel) -> int:
    """Width of the encoder's ``last_hidden_state`` (what the UNet cross-attends to)."""
    config = encoder.config
    for key in ("hidden_size", "d_model", "dim"):
        if isinstance(getattr(config, key, None), int):
            return int(getattr(config, key))
    raise ValueError(f"cannot tell the hidden size of text encoder {type(encoder).__name__}")


@contextmanager
def local_folder(uri: str, storage: StorageConfig | None = None) -> Iterator[str]:
    """A local path for ``uri``: the path itself, or an s3:// folder copied into a temporary directory.

    The temporary copy is removed on exit; load everything you need inside the ``with``.
    """
    if "://" not in uri or uri.startswith("file://"):
        yield uri.removeprefix("file://")
        return
    import pyarrow.fs as pafs

    fs, path = filesystem_for(uri, storage or StorageConfig())
    tmp = tempfile.mkdtemp(prefix="trcgl-diffusion-")
    try:
        log.info("copying %s to %s", uri, tmp)
        pafs.copy_files(path, tmp, source_filesystem=fs, destination_filesystem=pafs.LocalFileSystem())
        yield tmp
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
