"""Regenerate trce_ray/assets/clip_tokenizer/{vocab.json,merges.txt} from CLIP's BPE file, offline.

CLIP's byte-level BPE ships as `bpe_simple_vocab_16e6.txt.gz` inside the open-clip-torch wheel (MIT, OpenAI).
Run once when the vendored files need rebuilding:

    pip download --no-deps -d /tmp/oc open-clip-torch
    python tools/build_clip_tokenizer.py /tmp/oc/open_clip_torch-*.whl

The construction follows CLIP's own SimpleTokenizer: 256 byte-unicode characters, the same with `</w>`, the
first 48,894 merges joined, then <|startoftext|> and <|endoftext|> (49,408 entries).
"""

import gzip
import json
import sys
import zipfile
from pathlib import Path

OUT = Path(__file__).resolve().parents[1] / "trce_ray" / "assets" / "clip_tokenizer"
N_MERGES = 49152 - 256 - 2


def bytes_to_unicode() -> dict[int, str]:
    """CLIP/GPT-2's reversible byte -> printable-unicode table."""
    bs = (
        list(range(ord("!"), ord("~") + 1)) + list(range(ord("¡"), ord("¬") + 1)) + list(range(ord("®"), ord("ÿ") + 1))
    )
    cs = bs[:]
    n = 0
    for b in range(256):
        if b not in bs:
            bs.append(b)
            cs.append(256 + n)
            n += 1
    return dict(zip(bs, [chr(c) for c in cs]))


def read_bpe(source: Path) -> list[str]:
    if source.suffix == ".whl":
        with zipfile.ZipFile(source) as whl:
            raw = whl.read("open_clip/bpe_simple_vocab_16e6.txt.gz")
    else:
        raw = source.read_bytes()
    return gzip.decompress(raw).decode("utf-8").split("\n")[1 : N_MERGES + 1]


def main(source: str) -> None:
    merges = read_bpe(Path(source))
    vocab = list(bytes_to_unicode().values())
    vocab = vocab + [v + "</w>" for v in vocab]
    vocab += ["".join(m.split()) for m in merges]
    vocab += ["<|startoftext|>", "<|endoftext|>"]
    assert len(vocab) == 49408, len(vocab)
    OUT.mkdir(parents=True, exist_ok=True)
    (OUT / "vocab.json").write_text(json.dumps({tok: i for i, tok in enumerate(vocab)}, ensure_ascii=False))
    (OUT / "merges.txt").write_text("#version: 0.2\n" + "\n".join(merges) + "\n")
    print(f"wrote {OUT} ({len(vocab)} tokens, {len(merges)} merges)")


if __name__ == "__main__":
    main(sys.argv[1])
