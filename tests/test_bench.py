"""``daskgmm bench`` on a tiny case: the table's structure, and that the daskgmm
parameters it reports agree with scikit-learn's (no timing assertions)."""

from __future__ import annotations

import json
from types import SimpleNamespace

import numpy as np
import pytest

from daskgmm._gaussian import EStepParams
from daskgmm.benchmarks import kernel as bench
from daskgmm.benchmarks import limit, phases
from daskgmm.cli import main

TINY = dict(
    shapes=[(3000, 3, 3), (1500, 5, 2)], n_iter=2, chunk_counts=(1, 4), seed=1, gemm_n=128, exp_size=1 << 16
)


@pytest.fixture(scope="module")
def result():
    return bench.run_benchmark(**TINY)


def test_rows_cover_every_case(result):
    cases = [row["case"] for row in result["rows"]]
    assert cases == [
        "full",
        "tied",
        "diag",
        "spherical",
        "float32",
        "1 chunks",
        "4 chunks",
        "full",
        "float32",
    ]
    # a float32 row for every shape, next to its float64 row
    assert [(r["n"], r["d"], r["k"]) for r in result["rows"] if r["dtype"] == "float32"] == TINY["shapes"]
    for row in result["rows"]:
        assert set(key for key, _ in bench.COLUMNS) <= set(row)
    assert [row["chunks"] for row in result["rows"] if row["case"].endswith("chunks")] == [1, 4]
    assert result["gemm_peak_gflops"] > 0
    assert result["machine"]["cores"] >= 1 and result["machine"]["cpu"]
    # the compiled kernel ran (numba is a dependency), and its first call was kept out of the timings
    assert result["machine"]["kernel"].startswith("compiled with numba")
    assert result["kernel_first_call_seconds"] > 0


def test_daskgmm_parameters_equal_sklearn_in_the_table(result):
    compared = [
        row for row in result["rows"] if row["dtype"] == "float64" and row["max_rel_diff"] is not None
    ]
    assert {row["covariance_type"] for row in compared} == {"full", "tied", "diag", "spherical"}
    assert len(compared) == 5  # four types on the first shape, full on the second
    for row in compared:
        assert row["max_rel_diff"] < 1e-6, row
        assert row["speedup"] == pytest.approx(row["sklearn_s"] / row["daskgmm_s"])
    for f32 in [row for row in result["rows"] if row["dtype"] == "float32"]:
        assert f32["max_rel_diff"] < 1e-4  # float32 fit against the float64 fit


def test_flop_rate_is_the_issue_count(result):
    row = result["rows"][0]
    n, d, k = TINY["shapes"][0]
    assert row["gflops"] == pytest.approx(4 * n * k * d * d / row["daskgmm_s"] / 1e9)
    assert row["pct_peak"] == pytest.approx(100 * row["gflops"] / result["gemm_peak_gflops"])
    assert all(r["gflops"] is None for r in result["rows"] if r["covariance_type"] != "full")


def test_chunk_overhead_summary(result):
    oh = result["chunk_overhead"]
    assert set(oh["seconds_by_chunks"]) == {"1", "4"}
    assert oh["per_chunk_seconds"] >= 0
    assert oh["default_overhead_fraction"] == pytest.approx(
        oh["default_chunks"] * oh["per_chunk_seconds"] / result["rows"][0]["daskgmm_s"]
    )


def test_markdown_table_and_report(result):
    table = bench.format_table(result).splitlines()
    assert len(table) == 2 + len(result["rows"])
    assert all(line.count("|") == len(bench.COLUMNS) + 1 for line in table)
    assert "sklearn s/iter" in table[0] and "% peak" in table[0]
    report = bench.format_report(result, "daskgmm bench --full --markdown")
    assert "GEMM peak" in report and "`daskgmm bench --full --markdown`" in report
    assert "float32 is" in report and "per chunk" in report
    assert "per-chunk kernel: compiled with numba" in report and "first call in this process" in report
    # the tiny shapes' dense products are below daskgmm._compiled.SPARSE_MIN_PRODUCT: no block is sparse
    assert [r["sparse_share"] for r in result["rows"] if r["case"] in ("full", "float32")] == [0.0] * 4
    assert (
        "take the sparse moments at the fitted parameters" in report and "float32 3,000×3 K=3: 0%" in report
    )


def test_max_rel_diff_against_a_closed_form():
    a = SimpleNamespace(weights_=np.array([0.5, 0.5]), means_=np.zeros((2, 2)), covariances_=np.ones((2, 2)))
    b = SimpleNamespace(
        weights_=np.array([0.5, 0.5]), means_=np.full((2, 2), 2.0), covariances_=np.ones((2, 2))
    )
    assert bench.max_rel_diff(a, b) == pytest.approx(1.0)  # |0 - 2| / 2


def test_init_precisions_match_the_covariances():
    _, start = bench.make_data(200, 3, 2, seed=0)
    cov = start["covariances"]
    np.testing.assert_allclose(
        bench.init_kwargs(start, "full")["precisions_init"] @ cov,
        np.broadcast_to(np.eye(3), cov.shape),
        atol=1e-10,
    )
    np.testing.assert_allclose(
        bench.init_kwargs(start, "diag")["precisions_init"], 1 / np.einsum("kii->ki", cov)
    )


def test_cli_bench_writes_json(tmp_path, capsys):
    out = tmp_path / "bench.json"
    rc = main(
        [
            "bench",
            "--shape",
            "2000,2,2",
            "--iters",
            "1",
            "--chunks",
            "none",
            "--no-other-types",
            "--no-float32",
            "--gemm-size",
            "128",
            "--json",
            str(out),
        ]
    )
    assert rc == 0
    printed = capsys.readouterr().out
    assert "| full | 2,000 | 2 | 2 | full | float64 |" in printed
    data = json.loads(out.read_text())
    assert [row["case"] for row in data["rows"]] == ["full"]
    assert data["rows"][0]["max_rel_diff"] < 1e-6


def test_cli_bench_rejects_a_bad_shape(capsys):
    with pytest.raises(SystemExit):
        main(["bench", "--shape", "10,3"])
    assert "expected N,D,K (three integers), got '10,3'" in capsys.readouterr().err


def test_cli_bench_rejects_zero_iterations():
    with pytest.raises(SystemExit, match="--iters must be >= 1, got 0"):
        main(["bench", "--iters", "0"])


def test_limit_is_the_kernel_flops_and_exponentials_at_the_measured_rates(result):
    rates = result["rates"]
    assert set(rates) == {"float64", "float32"}
    assert all(v > 0 for r in rates.values() for v in r.values())
    full = [row for row in result["rows"] if row["covariance_type"] == "full"]
    for row in full:
        n, d, k, r = row["n"], row["d"], row["k"], rates[row["dtype"]]
        flops = 4 * n * k * (d * (d + 1) / 2 + d + 1)
        assert row["limit_s"] == pytest.approx(flops / r["gemm_flops"] + n * k / r["exp_per_s"])
        assert row["pct_limit"] == pytest.approx(100 * row["limit_s"] / row["daskgmm_s"])
        assert row["target"] is None  # the issue's targets are at 500,000x16, K=16 only
    assert all(row["limit_s"] is None for row in result["rows"] if row["covariance_type"] != "full")
    report = bench.format_report(result)
    assert "% limit" in report and "exp" in bench.rates_line(result)


def test_kernel_flops_are_the_two_products_of_the_kernel():
    # 2 flops per multiply-add: G (K x P) @ F (P x N), then F (P x N) @ resp.T (N x K)
    n, d, k = 1000, 5, 3
    rng = np.random.default_rng(0)
    p = EStepParams(np.full(k, 1 / k), rng.standard_normal((k, d)), np.stack([np.eye(d)] * k), "full", "f8")
    assert p.coef.shape == (k, 21)  # 15 products x_i x_j, 5 linear terms, 1 constant
    assert limit.kernel_flops(n, d, k) == 2 * (2 * k * p.coef.shape[1] * n)
    assert limit.limit_seconds(n, d, k, 1e9, 1e6) == pytest.approx(2 * 2 * k * 21 * n / 1e9 + n * k / 1e6)


def test_target_status_against_the_issue():
    def row(dtype, speedup, n=500_000, case="full"):
        r = dict(
            case=case, n=n, d=16, k=16, covariance_type="full", dtype=dtype, daskgmm_s=0.1, speedup=speedup
        )
        limit.add_limit(r, {dtype: {"gemm_flops": 1e11, "exp_per_s": 1e9}})
        return r

    assert row("float64", 21.0)["target"] == "≥20x met"
    assert row("float64", 19.9)["target"] == "≥20x not met"
    assert row("float32", 39.0, case="float32")["target"] == "≥40x not met"
    assert row("float32", 41.0, case="float32")["target"] == "≥40x met"
    assert row("float64", 30.0, n=400_000)["target"] is None
    assert row("float64", None)["target"] is None


def test_sklearn_keeps_its_faster_blas_setting(result):
    timed = [row for row in result["rows"] if row.get("sklearn_s_by_blas")]
    assert len(timed) == 5
    for row in timed:
        assert set(row["sklearn_s_by_blas"]) == {"1", "default"}
        assert row["sklearn_s"] == min(row["sklearn_s_by_blas"].values())


def test_cli_bench_profile_prints_every_phase(capsys):
    assert main(["bench", "--profile", "--shape", "3000,3,2"]) == 0
    table = capsys.readouterr().out.splitlines()
    assert table[0] == "| phase | 3,000×3 K=2 float64 | 3,000×3 K=2 float32 |"
    assert [line.split(" | ")[0].lstrip("| ") for line in table[2:-2]] == [t for _, t in phases.PHASES]
    assert "numpy kernel, one thread" in table[-2]
    assert "compiled kernel (numba, the default), one thread" in table[-1]


def test_report_names_the_command_that_reproduces_the_run():
    from daskgmm.cli import bench as cli_bench

    args = SimpleNamespace(
        full=False,
        shape=[(500_000, 16, 16)],
        iters=3,
        chunks=(),
        sklearn="auto",
        no_other_types=True,
        no_float32=False,
    )
    assert cli_bench._command(args) == (
        "daskgmm bench --shape 500000,16,16 --chunks none --no-other-types --markdown"
    )


def test_sparse_block_share_counts_blocks_whose_responsibilities_are_mostly_zero():
    # 10 blocks: the first 3 lie halfway between two components (2 of the 4 responsibilities
    # nonzero: over the 25% the sparse moments take), the other 7 in one component each; the
    # expected share comes from scipy's densities and float32's exp cut-off
    from scipy.stats import multivariate_normal

    from daskgmm import _compiled
    from daskgmm._gaussian import compute_precision_cholesky
    from daskgmm.datasets import make_mixture

    if not _compiled.available():
        pytest.skip("numba is not installed")
    k, d, rows = 4, 32, _compiled.BLOCK_ROWS
    n = 10 * rows
    X, _, _, means, cov = make_mixture(n, d, k, seed=5, separation=15.0, ridge=0.5)
    cov[1] = cov[0]
    X[: 3 * rows] = (means[0] + means[1]) / 2
    weights = np.full(k, 1 / k)
    model = SimpleNamespace(
        weights_=weights,
        means_=means,
        precisions_cholesky_=compute_precision_cholesky(cov, "full"),
        covariance_type="full",
    )
    wlp = np.stack(
        [np.log(weights[j]) + multivariate_normal(means[j], cov[j]).logpdf(X) for j in range(k)], axis=1
    )
    nonzero = (wlp - wlp.max(axis=1, keepdims=True)) > -87.0
    per_block = nonzero.reshape(-1, rows, k).sum(axis=(1, 2))
    expected = np.mean(per_block <= _compiled.SPARSE_SHARE * rows * k)
    assert expected == pytest.approx(0.7)
    assert bench.sparse_block_share(X.astype(np.float32), model) == pytest.approx(expected)
