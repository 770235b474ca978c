"""Prometheus metrics, one registry per app (so tests can run several apps in one process)."""

from __future__ import annotations

from collections.abc import Callable

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, generate_latest


class Metrics:
    def __init__(self, queue_depth: Callable[[], float], running: Callable[[], float]):
        r = self.registry = CollectorRegistry()
        self.requests = Counter("ragtune_requests_total", "HTTP requests",
                                ["route", "method", "status"], registry=r)
        self.latency = Histogram("ragtune_request_seconds", "HTTP request latency",
                                 ["route", "method"], registry=r,
                                 buckets=(.005, .01, .025, .05, .1, .25, .5, 1, 2.5, 5, 10, 30, 60))
        self.ttft = Histogram("ragtune_time_to_first_token_seconds", "time to first token",
                              ["adapter"], registry=r,
                              buckets=(.01, .025, .05, .1, .25, .5, 1, 2.5, 5, 10))
        self.tokens = Counter("ragtune_tokens_generated_total", "completion tokens",
                              ["adapter", "collection"], registry=r)
        self.prompt_tokens = Counter("ragtune_prompt_tokens_total", "prompt tokens",
                                     ["adapter", "collection"], registry=r)
        self.citations = Counter("ragtune_citations_total",
                                 "sources cited (marker/attributed) and invalid markers removed",
                                 ["adapter", "collection", "kind"], registry=r)
        self.json = Counter("ragtune_json_responses_total", "JSON-mode answers by validity",
                            ["adapter", "collection", "valid"], registry=r)
        self.refusals = Counter("ragtune_relevance_floor_total",
                                "answers refused by the relevance floor", ["collection"], registry=r)
        Gauge("ragtune_queue_depth", "requests waiting for generation",
              registry=r).set_function(queue_depth)
        Gauge("ragtune_running_requests", "requests being decoded", registry=r).set_function(running)

    def render(self) -> bytes:
        return generate_latest(self.registry)
