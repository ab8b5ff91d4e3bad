"""Deterministic synthetic corpora for the data-prep benchmark.

Two JSONL corpora, both seeded and cached under bench/.cache/ (reused when the parameters match):

* chat:  {"messages": [...]} with an optional system message and 1-4 user/assistant turns;
* plain: {"text": ...} documents.

Lengths in words are lognormal (document, turn and sentence lengths). Words are drawn with a Zipf law
from a fixed, seeded list: ~500 common English words at the top ranks (~63% of word occurrences), then
20,000 made-up words built from syllables (a few with accents), so the BPE tokenizer meets many words it
has to split into several pieces, and more distinct words than its word cache holds. Sentences get capitals and
punctuation; numbers, paragraphs, bullet lists and occasional inline code appear as well.

    python bench/corpus.py                    # default sizes (20 MB chat, 50 MB plain)
    python bench/corpus.py --scale 0.5 --scale 2
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np

BENCH = Path(__file__).resolve().parent
CACHE = BENCH / ".cache"
GENERATOR_VERSION = 2
# Distinct made-up words after the common ones: more than the Rust BPE word cache holds (10k entries), like a
# real long tail. (Measured here: a 4k-word list encodes only ~5-10% faster than this 20k one.)
MADE_UP_WORDS = 20000

COMMON = """
    the of and to a in is it you that he was for on are with as I his they be at one have this from or had by
    not word but what some we can out other were all there when up use your how said an each she which do their
    time if will way about many then them write would like so these her long make thing see him two has look
    more day could go come did number sound no most people my over know water than call first who may down side
    been now find any new work part take get place made live where after back little only round man year came
    show every good me give our under name very through just form sentence great think say help low line differ
    turn cause much mean before move right boy old too same tell does set three want air well also play small
    end put home read hand port large spell add even land here must big high such follow act why ask men change
    went light kind off need house picture try us again animal point mother world near build self earth father
    head stand own page should country found answer school grow study still learn plant cover food sun four
    between state keep eye never last let thought city tree cross farm hard start might story saw far sea draw
    left late run while press close night real life few north open seem together next white children begin got
    walk example ease paper group always music those both mark often letter until mile river car feet care
    second book carry took science eat room friend began idea fish mountain stop once base hear horse cut sure
    watch color face wood main enough plain girl usual young ready above ever red list though feel talk bird
    soon body dog family direct pose leave song measure door product black short numeral class wind question
    happen complete ship area half rock order fire south problem piece told knew pass since top whole king space
    heard best hour better true during hundred five remember step early hold west ground interest reach fast
    verb sing listen six table travel less morning ten simple several vowel toward war lay against pattern slow
    center love person money serve appear road map rain rule govern pull cold notice voice unit power town fine
    certain fly fall lead cry dark machine note wait plan figure star box noun field rest correct able pound
    done beauty drive stood contain front teach week final gave green quick develop ocean warm free minute
    strong special mind behind clear tail produce fact street inch multiply nothing course stay wheel full force
    blue object decide surface deep moon island foot system busy test record boat common gold possible plane
    stead dry wonder laugh thousand ago ran check game shape equate miss brought heat snow tire bring yes
    distant fill east paint language among
""".split()

ONSETS = "b c d f g h j k l m n p r s t v w b c d f g h l m n p r s t bl br ch cl cr dr fl fr gr pl pr sh sl sp st th tr".split()
VOWELS = "a e i o u a e i o u a e i o ai ea ee oa ou io é ü".split()
CODAS = [""] * 4 + "n r s t l m nd rk st nt ng ck x".split()
SUFFIXES = [""] * 8 + "ing ed er ly tion ness ity ous ize al".split()


def word_list(seed: int = 1234, made_up: int = MADE_UP_WORDS) -> list[str]:
    """Common words first (the frequent ranks), then `made_up` distinct syllable words; fixed by `seed`."""
    rng = np.random.default_rng(seed)
    seen, words = set(COMMON), list(dict.fromkeys(COMMON))
    while len(words) < len(COMMON) + made_up:
        syllables = int(rng.choice([1, 2, 3], p=[0.45, 0.4, 0.15]))
        w = (
            "".join(
                ONSETS[rng.integers(len(ONSETS))] + VOWELS[rng.integers(len(VOWELS))] + CODAS[rng.integers(len(CODAS))]
                for _ in range(syllables)
            )
            + SUFFIXES[rng.integers(len(SUFFIXES))]
        )
        if w not in seen:
            seen.add(w)
            words.append(w)
    return words


@dataclass(frozen=True)
class ChatParams:
    target_mb: float = 20.0
    seed: int = 0
    system_prob: float = 0.5
    max_turns: int = 4
    user_median_words: float = 40.0
    user_sigma: float = 1.0
    assistant_median_words: float = 160.0
    assistant_sigma: float = 0.9
    max_turn_words: int = 1500


@dataclass(frozen=True)
class PlainParams:
    target_mb: float = 50.0
    seed: int = 1
    doc_median_words: float = 400.0
    doc_sigma: float = 1.1
    max_doc_words: int = 30000


class TextGen:
    """Zipf-distributed words assembled into sentences and paragraphs."""

    SYSTEM_PROMPTS = (
        "You are a helpful assistant.",
        "You are a concise assistant. Answer in plain English and keep explanations short.",
        "You are an expert tutor. Explain each step of your reasoning before giving the final answer.",
        "You are a careful assistant that writes well structured answers with lists where useful.",
    )

    def __init__(self, seed: int, zipf_s: float = 1.05):
        self.rng = np.random.default_rng(seed)
        self.words = np.array(word_list(), dtype=object)
        ranks = np.arange(1, len(self.words) + 1, dtype=np.float64)
        p = 1.0 / (ranks + 2.7) ** zipf_s
        self.cdf = np.cumsum(p / p.sum())

    def lognormal_int(self, median: float, sigma: float, cap: int, low: int = 1) -> int:
        return int(min(cap, max(low, round(self.rng.lognormal(np.log(median), sigma)))))

    def sentence(self, words: list[str]) -> str:
        rng = self.rng
        if len(words) > 8 and rng.random() < 0.3:  # a clause
            k = int(rng.integers(3, len(words) - 3))
            words[k] += ","
        if rng.random() < 0.12:
            words[int(rng.integers(len(words)))] = str(int(rng.lognormal(4, 2)))
        if rng.random() < 0.05:
            i = int(rng.integers(len(words)))
            words[i] = f"`{words[i]}_{words[(i + 1) % len(words)]}()`"
        words[0] = words[0][:1].upper() + words[0][1:]
        return " ".join(words) + (". " if rng.random() < 0.85 else "? " if rng.random() < 0.6 else "! ")

    def text(self, n_words: int, lists: bool = False) -> str:
        rng = self.rng
        idx = np.searchsorted(self.cdf, rng.random(n_words))
        pool = self.words[np.minimum(idx, len(self.words) - 1)].tolist()
        out, pos, para = [], 0, 0
        while pos < n_words:
            n = min(n_words - pos, max(3, int(rng.lognormal(np.log(14), 0.5))))
            chunk = pool[pos : pos + n]
            pos += n
            if lists and rng.random() < 0.08:
                out.append("\n- " + " ".join(chunk))
                continue
            out.append(self.sentence(chunk))
            para += 1
            if para >= 4 and rng.random() < 0.3:
                out.append("\n\n")
                para = 0
        return "".join(out).strip()


def _cache_path(kind: str, params) -> Path:
    key = json.dumps(
        {"kind": kind, "v": GENERATOR_VERSION, "made_up_words": MADE_UP_WORDS, **asdict(params)}, sort_keys=True
    )
    digest = hashlib.sha256(key.encode()).hexdigest()[:10]
    return CACHE / f"{kind}_{params.target_mb:g}mb_{digest}.jsonl"


def _write(kind: str, params, records) -> dict:
    """Write records until the file reaches target_mb; cache metadata next to it."""
    path = _cache_path(kind, params)
    meta_path = path.with_suffix(".meta.json")
    if path.exists() and meta_path.exists():
        return json.loads(meta_path.read_text())
    CACHE.mkdir(parents=True, exist_ok=True)
    target = int(params.target_mb * 1e6)
    tmp = path.with_suffix(".tmp")
    rows = size = 0
    with tmp.open("w", encoding="utf-8") as f:
        for record in records:
            line = json.dumps(record, ensure_ascii=False) + "\n"
            f.write(line)
            rows += 1
            size += len(line.encode("utf-8"))
            if size >= target:
                break
    os.replace(tmp, path)
    meta = {
        "kind": kind,
        "path": str(path),
        "rows": rows,
        "bytes": size,
        "mb": round(size / 1e6, 3),
        "generator_version": GENERATOR_VERSION,
        "made_up_words": MADE_UP_WORDS,
        "params": asdict(params),
    }
    meta_path.write_text(json.dumps(meta, indent=1))
    return meta


def chat_records(p: ChatParams):
    g = TextGen(p.seed)
    while True:
        messages = []
        if g.rng.random() < p.system_prob:
            messages.append({"role": "system", "content": TextGen.SYSTEM_PROMPTS[int(g.rng.integers(4))]})
        for _ in range(int(g.rng.integers(1, p.max_turns + 1))):
            messages.append(
                {
                    "role": "user",
                    "content": g.text(g.lognormal_int(p.user_median_words, p.user_sigma, p.max_turn_words, 2)),
                }
            )
            messages.append(
                {
                    "role": "assistant",
                    "content": g.text(
                        g.lognormal_int(p.assistant_median_words, p.assistant_sigma, p.max_turn_words, 2), lists=True
                    ),
                }
            )
        yield {"messages": messages}


def plain_records(p: PlainParams):
    g = TextGen(p.seed)
    while True:
        yield {"text": g.text(g.lognormal_int(p.doc_median_words, p.doc_sigma, p.max_doc_words, 5), lists=True)}


def chat_corpus(target_mb: float = 20.0, seed: int = 0) -> dict:
    """Metadata (path, rows, bytes, params) of the cached chat corpus, generating it if needed."""
    params = ChatParams(target_mb=target_mb, seed=seed)
    return _write("chat", params, chat_records(params))


def plain_corpus(target_mb: float = 50.0, seed: int = 1) -> dict:
    params = PlainParams(target_mb=target_mb, seed=seed)
    return _write("plain", params, plain_records(params))


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--chat-mb", type=float, default=20.0)
    ap.add_argument("--plain-mb", type=float, default=50.0)
    ap.add_argument("--scale", type=float, action="append", help="size multiplier(s); default 1")
    args = ap.parse_args()
    for scale in args.scale or [1.0]:
        for meta in (chat_corpus(args.chat_mb * scale), plain_corpus(args.plain_mb * scale)):
            print(f"{meta['kind']:5s} {meta['mb']:8.2f} MB {meta['rows']:8d} rows  {meta['path']}")


if __name__ == "__main__":
    main()
