"""Engine and service settings: one typed source for environment variables, CLI flags and
defaults (SPECOPS_* variables; `specops --help` lists the same fields as flags)."""
from __future__ import annotations

from pathlib import Path
from typing import Literal

from pydantic import Field
from pydantic_settings import BaseSettings, SettingsConfigDict

from .prepare import DEFAULT as DEFAULT_MODEL

EMBEDDED_MODELS = Path(__file__).resolve().parents[1] / "models"
# The committed small pair in the production formats (Phi-3's and TinyLlama's): the fast fixture
# of the tests, servable with SPECOPS_TARGET_MODEL=models/target SPECOPS_DRAFT_MODEL=models/draft.
EMBEDDED_TARGET, EMBEDDED_DRAFT = EMBEDDED_MODELS / "target", EMBEDDED_MODELS / "draft"


class Settings(BaseSettings):
    model_config = SettingsConfigDict(env_prefix="SPECOPS_", extra="ignore")

    # -- models -----------------------------------------------------------------------------
    target_model: str = Field(DEFAULT_MODEL, description="target: a model `specops prepare` made (by name), "
                              "a local folder, or a hub repo id (owner/name)")
    target_subfolder: str = Field("", description="folder inside the target hub repo")
    target_tokenizer: str = Field("", description="tokenizer source if not the target folder")
    draft_model: str = Field("none",
                             description="draft: a local folder, a hub repo id, or 'none'")
    draft_subfolder: str = Field("", description="folder inside the draft hub repo")
    draft_tokenizer: str = Field("", description="tokenizer source if not the draft folder")
    model_cache_dir: str = Field(str(Path.home() / ".cache" / "specops"),
                                 description="where hub downloads are kept")
    verify_checksums: bool = Field(True, description="check manifest.sha256 where a folder has one")

    # -- runtime ----------------------------------------------------------------------------
    intra_op_threads: int = Field(2, ge=1, le=64, description="onnxruntime threads for the target")
    draft_intra_op_threads: int = Field(2, ge=1, le=64, description="onnxruntime threads for the draft")
    allow_spinning: bool = Field(False, description="let idle onnxruntime threads spin (breaks CPU autoscaling)")
    max_batch: int = Field(4, ge=1, le=64, description="sequences the service decodes together (continuous "
                           "batching: every round verifies all of them in one target pass); 1 = one request at "
                           "a time; the memory plan may lower it")
    context_length: int = Field(0, ge=0, description="context cap in tokens; 0 = the model's own")
    prefill_chunk: int = Field(512, ge=16, le=8192, description="prompt tokens per pass while nothing else "
                               "decodes (a prompt alone reads at full speed)")
    prefill_stall: float = Field(2.5, ge=1.0, le=100.0, description="beside running streams, a joining prompt "
                                 "reads as many tokens a pass as keep the pass within this many plain decoding "
                                 "passes (ragged passes: specops' attention operator)")
    prefill_min_chunk: int = Field(32, ge=1, le=8192, description="beside running streams, a joining prompt "
                                   "reads at least this many tokens a pass whatever the stall allows: fewer make "
                                   "it pay a pass's fixed cost per few tokens (at 3500 positions, 16 tokens a pass "
                                   "cost 1.4x a 512-token chunk's CPU time per token, 32 tokens 1.1x)")
    kernel: Literal["auto", "tiled", "stock"] = Field(
        "auto", description="the target's int4/int8 matmul kernel: tiled = specops' own (specops/kernels/qmatmul.c, "
        "built on first use with the machine's C compiler; needs AVX-512), whose pass over k tokens costs "
        "far less than k passes; stock = onnxruntime's MLAS; auto = tiled where it builds and runs, else stock "
        "(the reason is in /health)")
    kernel_build: Literal["auto", "avx512", "portable"] = Field(
        "auto", description="which build of the tiled kernel: avx512 (every precision), portable (fp32 only, in plain "
        "C for CPUs with AVX2 and FMA but no AVX-512: ragged, batch-invariant passes there too); auto = avx512 where "
        "the CPU has AVX-512 F and BW, else portable where it has AVX2 and FMA, else stock (the reason is in /health); "
        "portable can be forced on an AVX-512 CPU (to test or measure it)")
    kernel_precision: Literal["auto", "fp32", "int8x3", "bf16", "int8"] = Field(
        "auto", description="the tiled kernel's activations, most faithful first: fp32 (the model's own numerics), "
        "int8x3 (three int8 levels, about fp32's precision; needs AVX-512 VNNI), bf16 (needs AVX-512 BF16), int8 "
        "(onnxruntime's accuracy level 4, needs AVX-512 VNNI); auto = fp32 or int8x3, the ones that give the model's own "
        "answers: the more faithful unless the other's plain decoding step is over 10% faster, timed at load "
        "(/health says which); bf16 and int8 only when named")
    kernel_cache_dir: str = Field("", description="where the tiled kernel's library and the tiled copies of the "
                                  "weights are kept (a model's tiles: about its weights' size); empty = "
                                  "<model_cache_dir>/kernels")
    cost_cache: bool = Field(False, description="keep the start-up pass-cost curve per model file, CPU and settings "
                             "(in the kernel cache folder) and, on a restart, check it with a few passes instead "
                             "of timing the sweep again (specops/cost_cache.py); off by default: a curve timed on "
                             "a busy machine keeps its shape until it drifts 2x (the Deployment turns it on, its "
                             "prep Job times the curve)")
    consistent_passes: Literal["auto", "on", "off"] = Field(
        "auto", description="run one-token target passes as two-row passes, so that plain steps and verify "
        "passes compute alike and speculative greedy output equals target-only output bit for bit; auto: "
        "where the model's one-token pass differs (SmolLM2 int8: plain steps cost 7-14% more); moot on ragged passes "
        "(specops' attention operator computes a row alike in any pass)")

    # -- speculation ------------------------------------------------------------------------
    speculator: Literal["none", "ngram", "draft", "hybrid", "auto"] = Field(
        "auto", description="default speculator for requests that name none")
    k_draft: int = Field(4, ge=0, le=16, description="default upper bound on proposals per round")
    ngram_min: int = Field(1, ge=1, le=8, description="shortest suffix the n-gram lookup matches")
    ngram_max: int = Field(4, ge=1, le=16, description="longest suffix the n-gram lookup matches")

    # -- service (HTTP server, admission, model sync) ---------------------------------------
    host: str = Field("0.0.0.0", description="address the HTTP server binds")
    port: int = Field(8888, ge=1, le=65535, description="port the HTTP server listens on")
    queue_size: int = Field(16, ge=1, le=4096,
                            description="requests that may wait behind the running one; beyond it: 429")
    queue_timeout_s: float = Field(60.0, gt=0, le=3600,
                                   description="longest a request waits for the engine before a 503")
    request_timeout_s: float = Field(300.0, gt=0, le=86400,
                                     description="longest one generation runs; it then ends early")
    drain_grace_s: float = Field(25.0, ge=0, le=3600,
                                 description="after SIGTERM, time for queued and running requests to finish")
    api_key: str = Field("", repr=False,
                         description="bearer key required on every endpoint but health and metrics; '' = open")
    max_new_tokens_limit: int = Field(2048, ge=1, le=65536, description="largest max_new_tokens a request may ask")
    default_max_new_tokens: int = Field(128, ge=1, le=65536,
                                        description="max_new_tokens for requests that give none")
    served_model_name: str = Field("specops", min_length=1, description="model id shown by /v1/models")
    warmup_tokens: int = Field(8, ge=0, le=256, description="tokens of the warm-up generation; 0 = no warm-up")
    sync_retries: int = Field(2, ge=0, le=10, description="extra attempts at a failed hub download")
    sync_retry_delay_s: float = Field(5.0, ge=0, le=600, description="pause before a download is retried")
    log_level: Literal["debug", "info", "warning", "error"] = Field("info", description="service log level")
    stream_interval_s: float = Field(0.02, ge=0, le=1, description="a stream sends committed text at most this "
                                     "often (the first chunk at once); 0 = one event per round")

    # -- memory budget (specops.budget: checked at start, shown in /health) -------------------
    memory_limit_bytes: int = Field(0, ge=0, description="memory the process may use; 0 = the limit of its own cgroup "
                                    "(v1 or v2, the smallest from /proc/self/cgroup's path up)")
    memory_auto_context_cap: bool = Field(
        True, description="lower the context cap until the plan fits the memory limit, instead of refusing")
    memory_min_context: int = Field(256, ge=16, le=131072,
                                    description="smallest context cap worth serving; a plan below it is refused")
    memory_overhead_bytes: int = Field(288 * 2**20, ge=0,
                                       description="Python, onnxruntime, tokenizers and the server beyond "
                                                   "weights, caches and scratch (measured in a cgroup under load: "
                                                   "283 MiB with the small pair, about 250 with Phi-3 tiled)")
    memory_page_cache_bytes: int = Field(
        128 * 2**20, ge=0, description="file pages in use besides the weights (shared libraries: onnxruntime, "
        "numpy, Python; tokenizers), charged to the cgroup like the rest (scripts/pod_rehearsal.py measures it)")
    memory_reclaim_margin: float = Field(
        0.05, ge=0.0, le=0.5, description="share of the limit the plan keeps free: near the limit the kernel "
        "reclaims file pages, mapped weights among them, which every pass then reads back (thrash)")

    # -- request limits (refused with 413 before any work) -------------------------------------
    max_body_bytes: int = Field(1 << 20, ge=1024, le=1 << 30,
                                description="largest request body in bytes; beyond it: 413 body_too_large")
