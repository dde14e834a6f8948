"""Every Prometheus object the service exports, in one place.

Naming: specops_<what>_<unit>, counters end in _total; labels are low-cardinality
(speculator, endpoint, status, position < 16); nothing per request.
"""
from __future__ import annotations

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram

LATENCY_BUCKETS = (0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 120)
TTFT_BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5)
JUMP_BUCKETS = (1.0, 1.25, 1.5, 1.75, 2, 2.5, 3, 4, 5, 6, 8, 12, 17)
MAX_POSITION_LABEL = 16  # k_draft <= 16, so positions 0..15
BATCH_BUCKETS = (1, 2, 3, 4, 6, 8, 12, 16, 24, 32, 48, 64)
ROWS_BUCKETS = (1, 2, 4, 8, 12, 16, 24, 32, 48, 64, 96, 128, 192, 256)
PROMPT_BUCKETS = (0, 8, 16, 32, 64, 128, 256, 512, 1024, 2048)


class Metrics:
    def __init__(self, registry: CollectorRegistry | None = None):
        r = self.registry = registry or CollectorRegistry()
        spec = ["speculator"]
        self.latency = Histogram("specops_latency_seconds", "End-to-end generation latency.", spec,
                                 buckets=LATENCY_BUCKETS, registry=r)
        self.avg_jump = Histogram("specops_avg_jump", "Per-request tokens per jump (tokens committed per "
                                  "target pass while decoding).", spec, buckets=JUMP_BUCKETS, registry=r)
        self.ttft = Histogram("specops_time_to_first_token_seconds", "Time to first token.", spec,
                              buckets=TTFT_BUCKETS, registry=r)
        self.queue_wait = Histogram("specops_queue_wait_seconds", "Time a request waited for the engine.",
                                    buckets=LATENCY_BUCKETS, registry=r)
        self.generated_tokens = Counter("specops_generated_tokens_total", "Tokens generated.", spec, registry=r)
        self.prompt_tokens = Counter("specops_prompt_tokens_total", "Prompt tokens processed.", spec, registry=r)
        self.target_passes = Counter("specops_target_passes_total", "Target forward passes while decoding.",
                                     spec, registry=r)
        self.spec_drafts = Counter("specops_spec_drafts_total", "Rounds with at least one proposed token.",
                                   spec, registry=r)
        self.spec_draft_tokens = Counter("specops_spec_draft_tokens_total", "Proposed tokens.", spec, registry=r)
        self.spec_accepted_tokens = Counter("specops_spec_accepted_tokens_total", "Accepted proposed tokens.",
                                            spec, registry=r)
        self.spec_accepted_per_pos = Counter("specops_spec_accepted_tokens_per_pos_total",
                                             "Rounds whose proposal was accepted at this position.",
                                             ["speculator", "position"], registry=r)
        self.requests = Counter("specops_requests_total", "Requests by endpoint and HTTP status.",
                                ["endpoint", "status"], registry=r)
        self.queue_depth = Gauge("specops_queue_depth", "Requests waiting for the engine.", registry=r)
        self.in_flight = Gauge("specops_requests_in_flight", "Requests being generated.", registry=r)
        self.model_ready = Gauge("specops_model_ready", "1 when a generation can be served.", registry=r)
        self.batch_size = Histogram("specops_batch_size", "Sequences per decoding pass of the target.",
                                    buckets=BATCH_BUCKETS, registry=r)
        self.batch_rows = Histogram("specops_batch_rows", "Decoding rows per pass of the target (each sequence's "
                                    "pending token and proposals; padded passes: sequences x the round's width).",
                                    buckets=ROWS_BUCKETS, registry=r)
        self.pass_prompt_tokens = Histogram("specops_pass_prompt_tokens", "Prompt tokens per pass of the target "
                                            "(chunks of joining prompts, read beside the decoding rows).",
                                            buckets=PROMPT_BUCKETS, registry=r)
        self.generations = Counter("specops_generations_total", "Finished generations by finish reason "
                                   "(stop, length, cancelled, timeout).", ["speculator", "finish_reason"],
                                   registry=r)

    def record_generation(self, stats) -> None:
        """Turn an engine GenerationStats into metric updates."""
        s = stats.speculator
        self.latency.labels(s).observe(stats.total_s)
        self.ttft.labels(s).observe(stats.ttft_s)
        self.avg_jump.labels(s).observe(stats.tokens_per_jump)
        self.generated_tokens.labels(s).inc(stats.generated_tokens)
        self.prompt_tokens.labels(s).inc(stats.prompt_tokens)
        self.target_passes.labels(s).inc(stats.target_passes)
        self.spec_drafts.labels(s).inc(sum(stats.proposals_by.values()))
        self.spec_draft_tokens.labels(s).inc(stats.proposed)
        self.spec_accepted_tokens.labels(s).inc(stats.accepted)
        for pos, count in enumerate(stats.accepted_per_position[:MAX_POSITION_LABEL]):
            self.spec_accepted_per_pos.labels(s, str(pos)).inc(count)
