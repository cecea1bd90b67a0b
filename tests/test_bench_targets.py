"""`make bench` judges its targets from what wrk measured (bench/__main__.py): the verdicts on
made-up measurements, so that a report's PASS means what the issue's target says."""

from __future__ import annotations

import argparse

from bench.__main__ import Run, overload_target, targets, timed_out
from bench.common import WrkResult


def wrk(rps: float, p50: float = 10.0, p99: float = 20.0, *, codes=None, no_retry_after: int = 0,
        errors: str = "", latency=None) -> WrkResult:
    codes = codes or {}
    return WrkResult(rps=rps, p50_ms=p50, p99_ms=p99, requests=int(rps * 8), non_2xx=sum(codes.values()),
                     errors=errors, by_code=codes, no_retry_after=no_retry_after, latency_by_code=latency or {})


def run_with(results: dict, overload=None) -> Run:
    return Run(argparse.Namespace(seconds=8, rounds=3), {}, results=results, overload=overload or [])


def verdict(lines: list[str], needle: str) -> str:
    [line] = [line for line in lines if needle in line]
    return line.split(":")[0]


def test_the_c32_target_needs_three_times_single_lock_and_a_p99_under_its_p50():
    results = {("mlp", 32, 1): {"platform": [wrk(900, p99=60)] * 3, "single-lock": [wrk(290, p50=180)] * 3,
                                "mlserver": [wrk(640)] * 3, "torchserve": [wrk(950)] * 3}}
    lines = targets(run_with(results))
    assert verdict(lines, "the single-lock server (>= 3x)") == "PASS"  # 3.10x
    assert verdict(lines, "x mlserver") == "PASS"
    assert verdict(lines, "x torchserve") == "behind"
    assert verdict(lines, "p99") == "PASS"
    results[("mlp", 32, 1)]["single-lock"] = [wrk(310, p50=50)] * 3
    lines = targets(run_with(results))
    assert verdict(lines, "the single-lock server (>= 3x)") == "FAIL"  # 2.90x
    assert verdict(lines, "p99") == "FAIL"  # 60 ms is not under 50


def test_the_c1_target_allows_one_millisecond():
    results = {("iris", 1, 1): {"platform": [wrk(900, p50=1.5)], "single-lock": [wrk(1600, p50=0.6)]}}
    assert verdict(targets(run_with(results)), "iris c=1") == "PASS"
    results[("iris", 1, 1)]["platform"] = [wrk(900, p50=1.7)]
    assert verdict(targets(run_with(results)), "iris c=1") == "FAIL"


def test_c256_fails_on_a_timeout_a_503_without_retry_after_or_any_other_error():
    def verdict_with(**c256) -> str:
        results = {("mlp", 32, 1): {"platform": [wrk(1000)]}, ("mlp", 256, 1): {"platform": [wrk(950, **c256)]}}
        return verdict(targets(run_with(results)), "mlp c=256")

    assert verdict_with() == "PASS"
    assert verdict_with(codes={503: 40}) == "PASS"  # backpressure is allowed
    assert verdict_with(codes={503: 40}, no_retry_after=1) == "FAIL"
    assert verdict_with(codes={500: 1}) == "FAIL"
    assert verdict_with(errors="Socket errors: connect 0, read 0, write 0, timeout 3") == "FAIL"
    assert verdict_with(errors="Socket errors: connect 0, read 0, write 0, timeout 0") == "PASS"


def test_overload_passes_only_when_503s_come_fast():
    def shed(p50_503: float = 60.0, p99_503: float = 180.0, **kw) -> WrkResult:
        return wrk(1500, codes={503: 300}, latency={200: (1200, 150.0, 300.0), 503: (300, p50_503, p99_503)}, **kw)

    assert overload_target([shed()] * 3).startswith("PASS")
    assert overload_target([shed(p50_503=80.0)] * 3).startswith("FAIL")  # more than half a served request's p50
    assert overload_target([shed(p99_503=1200.0)] * 3).startswith("FAIL")  # longer than its Retry-After
    assert overload_target([shed(), shed(), shed(p50_503=90.0)]).startswith("PASS")  # medians of the rounds
    assert overload_target([shed(no_retry_after=2)] * 3).startswith("FAIL")
    assert overload_target([shed(errors="Socket errors: connect 0, read 4, write 0, timeout 0")]).startswith("FAIL")
    no_overload = wrk(1500, latency={200: (1500, 150.0, 300.0)})
    assert overload_target([no_overload]).startswith("FAIL")  # nothing was shed: the check did not check
    assert timed_out(wrk(1, errors="Socket errors: connect 0, read 0, write 0, timeout 12"))


def test_the_runtimes_rows_compare_the_medians_of_the_two_runtimes_side_by_side():
    from bench.runtimes import RuntimeRows

    rows = RuntimeRows(raw={"torch1": 300, "torch32": 1800, "onnx1": 450, "onnx32": 3600,
                            "maxdiff1": 1e-7, "maxdiff32": 2e-7})
    rows.results[32] = {"mlp": [wrk(700), wrk(800), wrk(100)], "mlp-onnx": [wrk(900), wrk(1050), wrk(2000)]}
    rows.batch[(32, "mlp")] = 8.0
    assert round(rows.ratio(32), 3) == round(1050 / 700, 3)  # medians, not means: one slow round is not the figure
    table = rows.table()
    assert "| 32 | pytorch | 700.0 |" in table[2] and table[2].endswith("| 8.0 |  |")
    assert "| 32 | onnx | 1050.0 |" in table[3] and table[3].endswith("| 1.50 |")
    assert "ONNX / PyTorch 1.50 and 2.00" in rows.raw_line()


def test_the_kernels_table_gives_medians_over_rounds_and_ratios_to_torch():
    from bench.kernels import medians, table

    rounds = [{"torch": {1: 300.0, 32: 2000.0}, "numpy": {1: 450.0, 32: 1500.0}},
              {"torch": {1: 320.0, 32: 1900.0}, "numpy": {1: 480.0, 32: 1700.0}},
              {"torch": {1: 310.0, 32: 2100.0}, "numpy": {1: 400.0, 32: 1600.0}}]
    med = medians(rounds)
    assert med == {"torch": {1: 310.0, 32: 2000.0}, "numpy": {1: 450.0, 32: 1600.0}}
    lines = table(med)
    assert lines[2] == "| torch | 310 | 2000 | 1.00 | 1.00 |"
    assert lines[3] == "| numpy | 450 | 1600 | 1.45 | 0.80 |"
