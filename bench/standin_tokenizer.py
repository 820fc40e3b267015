"""A stand-in for umt5-xxl's tokenizer files when a ComfyUI-WanVideoWrapper copy lacks them.

The wrapper's `configs/T5_tokenizer/` holds `tokenizer_config.json` and `special_tokens_map.json` in git, but
`spiece.model` and `tokenizer.json` are over 4 MB and missing from some mirrors; transformers 5 then builds a
304-token vocabulary from the config alone. This writes a `tokenizer.json` (a `tokenizers` Unigram model) with
umt5's vocabulary size and special ids (0 `<pad>`, 1 `</s>`, 2 `<s>`, 3 `<unk>`, 256000-256299 `<extra_id_299..0>`,
256300 in all; the encoder's embedding has 256384 rows): every id the stand-in produces indexes the embedding, and
a prompt costs a realistic number of tokens (one per character or word piece), which is all that memory and time
depend on. It does not tokenize like the real SentencePiece model.
"""

from __future__ import annotations

from pathlib import Path

VOCAB = 256_300
EXTRA_IDS = 300


def missing(folder: Path) -> bool:
    return not (folder / "tokenizer.json").exists() and not (folder / "spiece.model").exists()


def write(folder: Path) -> Path:
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, processors

    pieces: list[tuple[str, float]] = [("<pad>", 0.0), ("</s>", 0.0), ("<s>", 0.0), ("<unk>", 0.0)]
    seen = {p for p, _ in pieces}

    def add(piece: str, score: float) -> None:
        if piece not in seen and len(pieces) < VOCAB - EXTRA_IDS:
            seen.add(piece)
            pieces.append((piece, score))

    chars = [chr(c) for c in range(33, 127)] + [chr(c) for c in range(0x4E00, 0x9FA6)] + \
            [chr(c) for c in range(0x3000, 0x3040)] + [chr(c) for c in range(0xFF00, 0xFF60)]
    add("▁", -2.0)
    for c in chars:
        add(c, -8.0)
        add("▁" + c, -7.0)
    for i in range(VOCAB):  # filler pieces: never produced by ordinary text
        add(f"<standin_{i}>", -30.0)
    pieces += [(f"<extra_id_{i}>", 0.0) for i in reversed(range(EXTRA_IDS))]
    assert len(pieces) == VOCAB, len(pieces)
    tokenizer = Tokenizer(models.Unigram(pieces, unk_id=3, byte_fallback=False))
    tokenizer.pre_tokenizer = pre_tokenizers.Metaspace(replacement="▁", prepend_scheme="always")
    tokenizer.decoder = decoders.Metaspace(replacement="▁", prepend_scheme="always")
    tokenizer.post_processor = processors.TemplateProcessing(single="$A </s>", pair="$A </s> $B </s>",
                                                             special_tokens=[("</s>", 1)])
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / "tokenizer.json"
    tokenizer.save(str(path))
    return path
