"""Build the small CLIP BPE tokenizer of the shapes-world model.

Every world word is one token, and tokenization equals real CLIP's for world words: we keep
only those merges of the full CLIP merge list (open_clip's bpe_simple_vocab_16e6) that BPE
applies when encoding the world words, in their original rank order. BPE applies, at each
step, the lowest-ranked merge present; the merges it applies for a word are all in the kept
subset and keep their relative order, so the result is identical to full CLIP.

Usage: python make_tokenizer.py OUT_DIR [--captions captions.jsonl ...]
Writes OUT_DIR/vocab.json, merges.txt, special_tokens_map.json, tokenizer_config.json.
"""
import argparse
import json
import os
import sys

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, os.path.join(HERE, "..", "..", "tests", "fixtures"))
import clip_vocab  # noqa: E402

WORLD_WORDS = (
    "a an big small red orange yellow green blue purple circle square triangle diamond "
    "on the left right top bottom center of above below"
).split()


def bpe_merges_used(word, ranks):
    """CLIP's BPE on one lower-case word; returns (tokens, merges applied)."""
    parts = list(word[:-1]) + [word[-1] + "</w>"]
    used = []
    while len(parts) > 1:
        pairs = {(parts[i], parts[i + 1]) for i in range(len(parts) - 1)}
        best = min(pairs, key=lambda p: ranks.get(p, float("inf")))
        if best not in ranks:
            break
        used.append(best)
        out, i = [], 0
        while i < len(parts):
            if i < len(parts) - 1 and (parts[i], parts[i + 1]) == best:
                out.append(parts[i] + parts[i + 1])
                i += 2
            else:
                out.append(parts[i])
                i += 1
        parts = out
    return parts, used


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("out")
    ap.add_argument("--captions", nargs="*", default=[], help="captions.jsonl files whose words must be single tokens too")
    a = ap.parse_args()
    words = set(WORLD_WORDS)
    for path in a.captions:
        with open(path) as f:
            for line in f:
                words.update(json.loads(line)["caption"].lower().split())
    lines = clip_vocab.load_bpe_lines()
    full = [tuple(m.split()) for m in lines[1 : 1 + clip_vocab.FULL_MERGES]]
    ranks = {m: i for i, m in enumerate(full)}
    needed = set()
    for w in sorted(words):
        toks, used = bpe_merges_used(w, ranks)
        if len(toks) != 1:
            raise SystemExit(f"world word {w!r} is not a single CLIP token: {toks}")
        needed.update(used)
    kept = [m for m in full if m in needed]
    sub_lines = [lines[0]] + [" ".join(m) for m in kept]
    n = clip_vocab.write(a.out, sub_lines, len(kept))
    with open(os.path.join(a.out, "special_tokens_map.json"), "w") as f:
        json.dump({"bos_token": "<|startoftext|>", "eos_token": "<|endoftext|>", "pad_token": "<|endoftext|>", "unk_token": "<|endoftext|>"}, f, indent=2)
    with open(os.path.join(a.out, "tokenizer_config.json"), "w") as f:
        json.dump({"tokenizer_class": "CLIPTokenizer", "model_max_length": 77, "do_lower_case": True,
                   "bos_token": "<|startoftext|>", "eos_token": "<|endoftext|>", "pad_token": "<|endoftext|>",
                   "unk_token": "<|endoftext|>", "errors": "replace", "clean_up_tokenization_spaces": False}, f, indent=2)
    # check against transformers' CLIPTokenizer: every word is one token and ids are stable
    from transformers import CLIPTokenizer
    tok = CLIPTokenizer.from_pretrained(a.out)
    vocab = json.load(open(os.path.join(a.out, "vocab.json")))
    for w in sorted(words):
        ids = tok(w).input_ids
        assert len(ids) == 3 and ids[1] == vocab[w + "</w>"], (w, ids)
    print(f"{len(words)} world words, {len(kept)} merges kept, vocab size {n} -> {a.out}")
    print("example:", tok("a big red circle left of a small blue square").input_ids)


if __name__ == "__main__":
    main()
