#!/usr/bin/env python3
"""Generate tokenizer parity fixtures for lizard's tests (tests/fixtures/tokenizer/*.jsonl).

Each output line is {"text": ..., "ids": [...], "ids_bos": [...], "decoded": ..., "decoded_skip": ...}:
  ids          = Tokenizer.encode(text, add_special_tokens=False).ids
  ids_bos      = Tokenizer.encode(text, add_special_tokens=True).ids   (post-processor applied)
  decoded      = Tokenizer.decode(ids, skip_special_tokens=False)
  decoded_skip = Tokenizer.decode(ids, skip_special_tokens=True)
computed with the Hugging Face `tokenizers` library (pip install tokenizers gguf).

Tokenizers:
  llama2, llama3, qwen3: /work/shared/data/tokenizers/<name>/tokenizer.json as is.
  synth_a, synth_b: small BPEs trained here on the texts (saved as synth_*.json beside the
    fixtures) with the rarer components; see synthetic_tokenizers().
  smollm2: there is no tokenizer.json next to the GGUF, so one is built from the GGUF metadata
    (tokenizer.ggml.tokens / merges / token_type) with SmolLM2's real pre-tokenizer config:
      model         BPE(vocab = tokens, merges = merges split on their one space)
      pre_tokenizer Sequence[Digits(individual_digits=True),
                             ByteLevel(add_prefix_space=False, use_regex=True)]
      decoder       ByteLevel; post_processor ByteLevel (SmolLM2 adds no BOS)
      added_tokens  every token of type 3 (control) as a special token, normalized=False.

The texts are generated deterministically (fixed seed), so re-running gives identical files.
Usage: scripts/make_tokenizer_fixtures.py [--tokenizers DIR] [--gguf FILE] [--out DIR]
       scripts/make_tokenizer_fixtures.py --nfc-table src/tokenizer/unicode_nfc_table.h
  (the second form writes the NFC tables lizard's Qwen normalizer uses, from Python's unicodedata)
"""
import argparse
import json
import os
import random
import sys

from tokenizers import Tokenizer

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(HERE)

SPECIALS = [
    "<s>", "</s>", "<unk>", "<|im_start|>", "<|im_end|>", "<|endoftext|>", "<|begin_of_text|>",
    "<|end_of_text|>", "<|eot_id|>", "<|start_header_id|>", "<|end_header_id|>", "<think>",
    "</think>", "<tool_call>", "<|fim_prefix|>", "<repo_name>", "<file_sep>", "[INST]", "[/INST]",
]

WORDS = [
    # Latin scripts, with contractions and case games
    "Hello", "world", "the", "quick", "brown", "fox", "jumps", "über", "naïve", "café", "façade",
    "I'm", "you're", "they've", "we'll", "she'd", "it's", "don't", "YOU'LL", "It'S", "WE'VE",
    "Straße", "déjà-vu", "Ærøskøbing", "ſ's", "K-sign", "supercalifragilisticexpialidocious",
    # other scripts
    "Привет", "мир", "Ελληνικά", "你好", "世界", "こんにちは", "カタカナ", "안녕하세요", "한국어",
    "مرحبا", "بالعالم", "שלום", "नमस्ते", "दुनिया", "สวัสดี", "ภาษาไทย", "ሰላም", "Ողջույն",
    "გამარჯობა", "வணக்கம்", "ਪੰਜਾਬੀ", "ຍິນດີ", "Tiếng", "Việt", "中文字符测试", "漢字",
    # emoji, ZWJ sequences, flags, skin tones, variation selectors
    "😀", "👋🌍", "👨‍👩‍👧‍👦", "🏳️‍🌈", "🇺🇸🇫🇷", "👍🏽", "❤️", "🧑‍💻", "🤖", "✨✨", "☃",
    # code and symbols
    "def", "foo(x):", "return", "x**2", "{\"key\": [1, 2, 3]}", "std::vector<int>", "a->b",
    "i++;", "#include", "<div class=\"x\">", "</div>", "SELECT * FROM t;", "=>", "!==", "&&",
    "http://example.com/a?b=c&d=e", "user@example.org", "C:\\Windows\\path", "$HOME", "~/.bashrc",
    # numbers
    "0", "7", "42", "123", "1234", "12345", "1234567", "3.14159", "1,000,000", "$99.99", "-17",
    "1e-9", "0x1F", "2024-01-31", "12:34:56", "½", "x²", "Ⅻ", "١٢٣", "１２３", "٣.١٤",
    # punctuation runs
    "...", "!!!", "???", "?!", "---", "===", "***", "(((", ")))", "«»", "“quoted”", "‘single’",
    "—", "…", "::", ";;", "''", "'s", "'ll", "''s",
]
SPACES = [" ", " ", " ", " ", "  ", "   ", "\t", "\n", "\n\n", "\r\n", " \n", "\n ", "\t\t",
          "\u00a0", "\u3000", "\u2003", "\u0085", "\u200b", "      "]

FIXED = [
    "", " ", "  ", "   ", "\n", "\n\n", "\t", " \t ", "\r\n", "a", "A", "Hello world",
    "Hello, world!", " Hello world", "Hello world ", "  leading spaces", "trailing spaces   ",
    "I'm sure you'll see it's fine, they're here and we've won; I'd go.",
    "I'M SURE YOU'LL SEE IT'S FINE, THEY'RE HERE AND WE'VE WON; I'D GO.",
    "don't can't won't shouldn't y'all 'tis o'clock rock'n'roll",
    "a\n\nb", "a \n b", "a\t\tb", "line1\nline2\r\nline3\rline4", "a" + " " * 20 + "b",
    "x" + "\n" * 7 + "y", "   \n\t  \n", "end with newline\n", "\n\nstart with newlines",
    "1", "12", "123", "1234", "12345", "123456", "1234567", "12345678", "123456789",
    "1234567890", "12345678901234567890", "3.141592653589793", "1,000,000.00", "-0.5e10",
    "Version 2.0.1-beta+build.123", "Phone: +1 (555) 123-4567", "abc123def456", "a1b2c3",
    "١٢٣٤٥", "１２３４５", "x² + y³ = z⁴", "Ⅻ o'clock", "½ + ¼ = ¾",
    "你好，世界！这是一个测试。", "こんにちは、世界。今日はいい天気ですね。", "안녕하세요 세계",
    "Привет, мир! Как дела?", "مرحبا بالعالم", "שלום עולם", "नमस्ते दुनिया", "สวัสดีชาวโลก",
    "Γειά σου Κόσμε", "Ελληνικά ΚΕΦΑΛΑΙΑ", "Tiếng Việt có dấu", "Ærøskøbing Straße naïve café",
    "😀😃😄😁", "👨‍👩‍👧‍👦 family", "🏳️‍🌈🏴‍☠️", "🇺🇸🇬🇧🇯🇵", "👍🏻👍🏼👍🏽👍🏾👍🏿", "🧑🏽‍💻 coder",
    "e\u0301", "cafe\u0301", "\u212b ngstrom", "A\u030a", "\u1100\u1161\u11a8", "\uac00\u11a8",
    "o\u0308\u0304", "\u0071\u0307\u0323", "ﬁ ligature", "\u00c5\u212b\u0041\u030a",
    "nbsp\u00a0here", "nel\u0085here", "x\u0085y", "a\u0085\u0085 b", "ideographic\u3000space",
    "ctl\u0004\u0006\u0013\u0014\u0016\u001d end", "plane4 \U00040000 \U00080001 x",
    "zero\u200bwidth", "soft\u00adhyphen", "bom\ufeffmark", "nul\u0000char", "tab\tand\u000bvt",
    "ſ's ſtreet", "It\u2019s curly", "KELVIN \u212a's",
    "!!!???...", "Wait... what?!", "----====****", "((()))[[[]]]{{{}}}", "a--b", "...'s",
    "def foo(x):\n    return x**2\n", "int main() {\n\treturn 0;\n}\n",
    "for (int i = 0; i < n; ++i) { sum += a[i]; }", "    indented four\n        eight",
    "<html><body><p class=\"x\">Hi</p></body></html>", "{\"a\": [1, 2, {\"b\": null}]}",
    "https://huggingface.co/HuggingFaceTB/SmolLM2-135M-Instruct?x=1&y=2#frag",
    "SELECT name, COUNT(*) FROM users WHERE age >= 18 GROUP BY name;",
    "a" * 300, "ab" * 150, "\u4e00" * 100, "😀" * 50, "Supercalifragilisticexpialidocious" * 4,
    "<|im_start|>user\nHello!<|im_end|>\n<|im_start|>assistant\n",
    "<|begin_of_text|><|start_header_id|>user<|end_header_id|>\n\nHi<|eot_id|>",
    "<s>[INST] What is 2+2? [/INST] 4</s>", "Hello <s> world</s>x", "<s><s></s>", "<unk>",
    "<think>\nLet me think.\n</think>\n\nAnswer", "text<|endoftext|>more text", "<|im_start",
    "<|im_start|", "<|im_start|><|im_end|>", " <|im_end|> ", "<repo_name>lizard<file_sep>x.py",
    "<|eot_id|><|eot_id|>", "hello world", "say hello, hello_x helloworld xhello", "a <mask> b",
    "x  \t<mask>\n  y<mask>", "rstrip!   z", "new york and new  york", "\tworld\t", " lstrip  lstrip",
 "<<s>>", "<</s>", "<|fim_prefix|>def f():<|fim_suffix|>",
]


def make_texts():
    rng = random.Random(1234)
    texts = list(FIXED)
    pieces = WORDS + SPECIALS
    for _ in range(260):
        n = rng.randint(1, 24)
        out = []
        for _ in range(n):
            r = rng.random()
            if r < 0.62:
                out.append(rng.choice(WORDS))
            elif r < 0.9:
                out.append(rng.choice(SPACES))
            elif r < 0.95:
                out.append(rng.choice(SPECIALS))
            else:
                out.append(str(rng.randint(0, 10 ** rng.randint(1, 15))))
        if rng.random() < 0.3:
            out = [p for p in out if p in pieces or rng.random() < 0.5]
        texts.append("".join(out))
    # random code points from many blocks (no surrogates)
    blocks = [(0x20, 0x7e), (0xa0, 0x24f), (0x300, 0x36f), (0x370, 0x3ff), (0x400, 0x4ff),
              (0x590, 0x6ff), (0x900, 0x97f), (0xe00, 0xe7f), (0x1100, 0x11ff), (0x2000, 0x206f),
              (0x2100, 0x22ff), (0x3000, 0x30ff), (0x4e00, 0x9fff), (0xac00, 0xd7a3),
              (0xff00, 0xffef), (0x1f300, 0x1faff), (0x10000, 0x1007f), (0x1d400, 0x1d7ff)]
    for _ in range(60):
        n = rng.randint(1, 40)
        s = []
        for _ in range(n):
            lo, hi = rng.choice(blocks)
            s.append(chr(rng.randint(lo, hi)))
        texts.append("".join(s))
    # adversarial mixes: odd whitespace (NEL, U+180E, ZW*), combining marks of every age (NFC
    # tables), contractions with case-folding letters, digits of many kinds, any code point
    odd_ws = [0x85, 0xA0, 0x1680, 0x180E, 0x2000, 0x2007, 0x200A, 0x200B, 0x200C, 0x200D, 0x2028,
              0x2029, 0x202F, 0x205F, 0x3000, 0xFEFF, 0x9, 0xA, 0xB, 0xC, 0xD, 0x1C, 0x1F, 0x20, 0x20]

    def odd_char():
        r = rng.random()
        if r < 0.25:
            return chr(rng.choice(odd_ws))
        if r < 0.45:
            return chr(rng.randint(0x20, 0x7E))
        if r < 0.55:
            return chr(rng.randint(0x300, 0x36F))
        if r < 0.6:
            return rng.choice(["'s", "'S", "'ll", "'LL", "'\u017f", "'\u212a", " '", "''"])
        if r < 0.65:
            return rng.choice(["0", "12", "345", "6789", "\u0663", "\u00b2", "\u216b", "\U0001d7d8"])
        while True:
            c = rng.randint(0x80, 0x10FFFF) if r < 0.8 else rng.randint(0x80, 0x3000)
            if not 0xD800 <= c < 0xE000:
                return chr(c)
    for _ in range(120):
        texts.append("".join(odd_char() for _ in range(rng.randint(1, 30))))
    return texts


def smollm2_tokenizer(gguf_path):
    import gguf
    r = gguf.GGUFReader(gguf_path)

    def strings(key):
        f = r.fields[key]
        return [bytes(f.parts[i]).decode("utf-8") for i in f.data]

    tokens = strings("tokenizer.ggml.tokens")
    merges = strings("tokenizer.ggml.merges")
    tt = r.fields["tokenizer.ggml.token_type"]
    types = [int(tt.parts[i][0]) for i in tt.data]
    spec = {
        "version": "1.0",
        "truncation": None,
        "padding": None,
        "added_tokens": [
            {"id": i, "content": t, "single_word": False, "lstrip": False, "rstrip": False,
             "normalized": False, "special": True}
            for i, t in enumerate(tokens) if types[i] == 3
        ],
        "normalizer": None,
        "pre_tokenizer": {"type": "Sequence", "pretokenizers": [
            {"type": "Digits", "individual_digits": True},
            {"type": "ByteLevel", "add_prefix_space": False, "trim_offsets": True, "use_regex": True},
        ]},
        "post_processor": {"type": "ByteLevel", "add_prefix_space": True, "trim_offsets": False,
                           "use_regex": True},
        "decoder": {"type": "ByteLevel", "add_prefix_space": True, "trim_offsets": True,
                    "use_regex": True},
        "model": {"type": "BPE", "dropout": None, "unk_token": None,
                  "continuing_subword_prefix": None, "end_of_word_suffix": None, "fuse_unk": False,
                  "byte_fallback": False, "vocab": {t: i for i, t in enumerate(tokens)},
                  "merges": [m.split(" ") for m in merges]},
    }
    return Tokenizer.from_str(json.dumps(spec))


def synthetic_tokenizers(texts):
    """Small byte-level BPEs trained on the texts, dressed with the components the real tokenizers
    don't use (Split behaviours, inverted splits, Digits contiguous, ByteLevel add_prefix_space,
    lstrip/rstrip/single_word/normalized added tokens) so that lizard's versions are checked too."""
    from tokenizers import models, pre_tokenizers, trainers, decoders, normalizers, AddedToken, Regex
    base = Tokenizer(models.BPE())
    base.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=True)
    trainer = trainers.BpeTrainer(vocab_size=700, show_progress=False,
                                  initial_alphabet=pre_tokenizers.ByteLevel.alphabet())
    base.train_from_iterator(texts, trainer=trainer)
    spec = json.loads(base.to_str())
    out = {}
    a = Tokenizer.from_str(json.dumps(spec))
    a.pre_tokenizer = pre_tokenizers.Sequence([
        pre_tokenizers.Split(" ", "merged_with_next"),
        pre_tokenizers.Split(Regex(r"[\p{P}]"), "merged_with_previous"),
        pre_tokenizers.Digits(individual_digits=False),
        pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=False)])
    a.decoder = decoders.ByteLevel()
    a.add_special_tokens([AddedToken("<mask>", lstrip=True, rstrip=True), AddedToken("<|im_end|>")])
    a.add_tokens([AddedToken("hello", single_word=True, normalized=False),
                  AddedToken("world", normalized=True), AddedToken("rstrip!", rstrip=True, normalized=False)])
    out["synth_a"] = a
    b = Tokenizer.from_str(json.dumps(spec))
    b.normalizer = normalizers.Sequence([normalizers.NFC(), normalizers.Replace("\t", "    ")])
    b.pre_tokenizer = pre_tokenizers.Sequence([
        pre_tokenizers.Split(Regex(r"\s+"), "removed", invert=False),
        pre_tokenizers.Split(Regex(r"\p{L}+"), "contiguous", invert=True),
        pre_tokenizers.Split("'", "isolated"),
        pre_tokenizers.ByteLevel(add_prefix_space=True, use_regex=True)])
    b.decoder = decoders.ByteLevel()
    b.add_tokens([AddedToken("new york", normalized=True), AddedToken(" lstrip", lstrip=True, normalized=False)])
    out["synth_b"] = b
    return out


def write(tok, texts, path):
    tmp = path + ".tmp"
    with open(tmp, "w", encoding="utf-8") as f:
        for t in texts:
            ids = tok.encode(t, add_special_tokens=False).ids
            ids_bos = tok.encode(t, add_special_tokens=True).ids
            rec = {"text": t, "ids": ids, "ids_bos": ids_bos,
                   "decoded": tok.decode(ids, skip_special_tokens=False),
                   "decoded_skip": tok.decode(ids, skip_special_tokens=True)}
            f.write(json.dumps(rec, ensure_ascii=False, separators=(",", ":")) + "\n")
    os.replace(tmp, path)
    print(f"{path}: {len(texts)} texts, {os.path.getsize(path)} bytes")


def write_nfc_table(path):
    # Python's unicodedata gives the tables; every entry is then checked against the `tokenizers`
    # library's own NFD/NFC (its Rust tables are of an older Unicode version) and dropped where
    # it disagrees, so that lizard's NFC equals HF's, not just the newer standard.
    import unicodedata as ud
    from tokenizers import normalizers
    hf_nfd, hf_nfc = normalizers.NFD(), normalizers.NFC()

    def hf_knows_ccc(c, k):
        if k >= 234:
            return True
        s = "a\u0345" + c  # U+0345 has class 240: HF reorders c before it iff it knows c's class
        return hf_nfd.normalize_str(s) == ud.normalize("NFD", s)

    ccc, decomp, comp = [], [], []
    for cp in range(0x110000):
        if 0xD800 <= cp < 0xE000 or 0xAC00 <= cp < 0xD7A4:
            continue  # surrogates; Hangul syllables are algorithmic
        c = chr(cp)
        k = ud.combining(c)
        if k and not hf_knows_ccc(c, k):
            k = 0
        if k:
            if ccc and ccc[-1][1] == cp - 1 and ccc[-1][2] == k:
                ccc[-1][1] = cp
            else:
                ccc.append([cp, cp, k])
        d = ud.decomposition(c)
        if d and not d.startswith("<") and hf_nfd.normalize_str(c) == ud.normalize("NFD", c):
            parts = [int(x, 16) for x in d.split()]
            decomp.append((cp, parts[0], parts[1] if len(parts) > 1 else 0))
            pair = chr(parts[0]) + chr(parts[1]) if len(parts) == 2 else ""
            if pair and ud.normalize("NFC", pair) == c and hf_nfc.normalize_str(pair) == c:
                comp.append((parts[0], parts[1], cp))
    comp.sort()
    import tokenizers
    lines = ["// Generated by scripts/make_tokenizer_fixtures.py --nfc-table from Python's unicodedata",
             f"// (Unicode {ud.unidata_version}), restricted to what HF tokenizers {tokenizers.__version__}'s NFC",
             "// agrees with. Do not edit.", "#pragma once", "#include <cstdint>", "",
             "namespace lizard::nfc {", "",
             "struct CccRange { uint32_t lo, hi; uint8_t ccc; };",
             "struct Decomp { uint32_t cp, a, b; };  // canonical, one level; b = 0 for singletons",
             "struct Comp { uint32_t a, b, c; };     // primary composites, sorted by (a, b)", ""]
    def emit(name, typ, rows):
        lines.append(f"inline constexpr {typ} {name}[] = {{")
        for i in range(0, len(rows), 4):
            lines.append("    " + " ".join("{" + ", ".join(hex(v) if j < len(r) - 1 or typ != 'CccRange' else str(v)
                                                         for j, v in enumerate(r)) + "}," for r in rows[i:i + 4]))
        lines.append("};")
    emit("kCcc", "CccRange", ccc)
    emit("kDecomp", "Decomp", decomp)
    emit("kComp", "Comp", comp)
    lines += ["", "}  // namespace lizard::nfc", ""]
    with open(path + ".tmp", "w") as f:
        f.write("\n".join(lines))
    os.replace(path + ".tmp", path)
    print(f"{path}: {len(ccc)} ccc ranges, {len(decomp)} decompositions, {len(comp)} compositions")


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--nfc-table", metavar="PATH", help="write the NFC tables header and exit")
    ap.add_argument("--tokenizers", default="/work/shared/data/tokenizers")
    ap.add_argument("--gguf", default=os.path.join(ROOT, "models/SmolLM2-135M-Instruct.Q4_1.gguf"))
    ap.add_argument("--out", default=os.path.join(ROOT, "tests/fixtures/tokenizer"))
    a = ap.parse_args()
    if a.nfc_table:
        write_nfc_table(a.nfc_table)
        return
    os.makedirs(a.out, exist_ok=True)
    texts = make_texts()
    for name in ["llama2", "llama3", "qwen3"]:
        tok = Tokenizer.from_file(os.path.join(a.tokenizers, name, "tokenizer.json"))
        write(tok, texts, os.path.join(a.out, name + ".jsonl"))
    for name, tok in synthetic_tokenizers(texts).items():
        tok.save(os.path.join(a.out, name + ".json.tmp"))
        os.replace(os.path.join(a.out, name + ".json.tmp"), os.path.join(a.out, name + ".json"))
        write(tok, texts[:len(FIXED)] + texts[len(FIXED)::3], os.path.join(a.out, name + ".jsonl"))
    if os.path.exists(a.gguf):
        write(smollm2_tokenizer(a.gguf), texts, os.path.join(a.out, "smollm2.jsonl"))
    else:
        print(f"{a.gguf} not found; smollm2.jsonl not written", file=sys.stderr)


if __name__ == "__main__":
    main()
