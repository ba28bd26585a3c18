"""``ragcompress bench ttft`` as a CPU smoke run: every column the issue names, a table, a plot.

Timings are not checked (no thresholds in tests); the structure and the first-token agreement
between the fast path and the full prefill are."""

from __future__ import annotations

import json

import pytest
import torch
from ragcompress_bench.ttft import main

KEYS = {"context_tokens", "full_prefill_ms", "hf_reuse_ms", "hf_static_ms", "ragcompress_ms",
        "ragcompress_paged_ms", "ragcompress_paged_int4_ms", "ragcompress_paged_int8_ms",
        "ragcompress_compressed_ms", "floor_ms", "device",
        "ape_ms", "blend_05_ms", "blend_15_ms", "blend_question_15_ms",
        "blend_question_draft4_15_ms", "blend_question_30_ms",
        "blend_link_15_ms", "blend_link_draft4_15_ms"}  # fmt: skip


def test_bench_ttft_cpu_smoke_writes_rows_table_and_plot(tmp_path, capsys) -> None:
    argv = ["--device", "cpu", "--shape", "tiny", "--dtype", "float32", "--contexts", "96,200",
            "--prefix-tokens", "8", "--passage-tokens", "40", "--question-tokens", "6", "--repeats", "2",
            "--warmup", "1", "--prefill-repeats", "1", "--batches", "1,2", "--qps-context", "96",
            "--new-tokens", "3", "--profile", "--out", str(tmp_path)]  # fmt: skip
    assert main(argv) == 0
    report = json.loads((tmp_path / "ttft_gpu.json").read_text())
    # --profile times GPU kernels: on the CPU it says so and the run's results stand
    assert (
        report["profile"] is None and "--profile: the profile needs a CUDA device" in capsys.readouterr().out
    )
    assert report["command"].endswith(" ".join(argv)) and report["device"] == "cpu"
    assert [r["context_tokens"] for r in report["rows"]] == [96, 200]
    for row in report["rows"]:
        assert set(row) >= KEYS and all(row[k] > 0 for k in KEYS - {"context_tokens", "device"})
        # the blend rows recompute what they say (a share of the chunk tokens), ape recomputes nothing
        assert row["ape_recompute"] == 0.0
        assert row["hf_static_matches_full_prefill"] is True  # the StaticCache anchor (uncompiled on CPU)
        # zero-copy placement (ttft_paged): the copy engine's first token, logits equal up to fp32
        assert row["paged_same_token_as_copy"] is True and row["paged_vs_copy_logits_rel_err"] < 1e-4
        # the placement's host share of the placed request, and of each pool's
        assert all(row[f"{t}_load_host_ms"] > 0 for t in ("paged", "paged_int4", "paged_int8"))
        # the int4 pool: chunks quantized on entry, so close to the copy engine's logits, not equal
        assert 0 < row["paged_int4_vs_copy_logits_rel_err"] < 0.2 and row["paged_int4_insert_ms"] > 0
        # int8: the same pool at one byte a channel, far closer to the copy engine
        assert 0 < row["paged_int8_vs_copy_logits_rel_err"] < row["paged_int4_vs_copy_logits_rel_err"] / 4
        assert 0.0 < row["blend_05_recompute"] < row["blend_15_recompute"] <= 0.16
        # the tiers (ttft_host): kvzip chunks on the device, streamed from the host, from disk
        assert all(row[f"kvzip_{t}_ms"] > 0 for t in ("gpu", "host", "host_serial", "disk"))
        assert row["kvzip_tiers_agree"] is True and 0 < row["kvzip_tokens"] < row["context_tokens"]
        # the disk column's reads and, beside them, the same bytes read and nothing else
        assert row["kvzip_disk_bytes_ms"] > 0 and 0 < row["kvzip_disk_read_ms"] < row["kvzip_disk_ms"]
    # one shared context, then each question its own chunk set (a ragged batch, paged)
    sets = [(q["batch"], q["chunk_sets"]) for q in report["qps"]]
    assert sets == [(1, "one, shared"), (2, "one, shared"), (1, "own, paged"), (2, "own, paged")]
    assert all(q["first_token_ms"] > 0 and q["answer_ms"] > 0 for q in report["qps"])
    # the compute floor: the step's FLOPs at the run's own matmul rate, twice the work at batch 2
    assert report["matmul_tflops"] > 0
    one, two = report["qps"][:2]
    assert two["compute_floor_ms"] == pytest.approx(2 * one["compute_floor_ms"], rel=1e-2)
    assert "| compute floor ms |" in (tmp_path / "ttft_gpu.md").read_text()
    md = (tmp_path / "ttft_gpu.md").read_text()
    assert "| context_tokens |" in md
    # the margin that tells a tie from an error sits next to the agreement columns
    assert "| full prefill top-2 margin |" in md
    assert f"| {report['rows'][0]['full_prefill_top2_margin']} |" in md
    assert "| kvzip_gpu_ms | kvzip_host_ms |" in (tmp_path / "ttft_gpu.md").read_text()
    assert (tmp_path / "ttft_gpu.png").stat().st_size > 0


@pytest.mark.skipif(torch.cuda.is_available(), reason="there is a CUDA device here")
def test_bench_ttft_without_cuda_says_how_to_smoke_run(capsys) -> None:
    assert main(["--device", "cuda"]) == 2
    assert "--device cpu --shape tiny" in capsys.readouterr().err


@pytest.mark.parametrize(
    ("shape", "model_class"),
    [("tiny-qwen2.5", "Qwen2ForCausalLM"), ("tiny-mistral", "MistralForCausalLM"),
     ("tiny-gemma3", "Gemma3ForCausalLM")],
)  # fmt: skip
def test_bench_ttft_family_shapes_smoke(tmp_path, shape, model_class) -> None:
    """The tiny form of each family's shape (qwen2.5-7b, mistral-7b, gemma3-12b): built with
    its family's config class; in fp32 the fast path's first token and logits are the full
    prefill's, and so is the StaticCache anchor's (Gemma 3: window 16, shorter than the
    context, so the fast path's window by position and the anchor's restored sliding layers
    both count)."""
    from ragcompress_bench.ttft_shapes import SHAPES, build_model

    assert {"qwen2.5-7b", "mistral-7b", "gemma3-12b", "llama3-8b"} <= set(SHAPES)
    assert type(build_model(shape, "cpu", torch.float32)).__name__ == model_class
    argv = ["--device", "cpu", "--shape", shape, "--dtype", "float32", "--contexts", "200",
            "--prefix-tokens", "8", "--passage-tokens", "40", "--question-tokens", "6", "--repeats", "2",
            "--warmup", "1", "--prefill-repeats", "1", "--batches", "1", "--qps-context", "96",
            "--new-tokens", "3", "--no-modes", "--out", str(tmp_path)]  # fmt: skip
    assert main(argv) == 0
    (row,) = json.loads((tmp_path / "ttft_gpu.json").read_text())["rows"]
    assert all(
        row[k] > 0 for k in ("ragcompress_ms", "ragcompress_compressed_ms", "floor_ms", "full_prefill_ms")
    )
    assert row["fast_matches_full_prefill"] is True and row["fast_logits_rel_err"] < 1e-4
    assert row["hf_static_matches_full_prefill"] is True
    # the chunks as the cache stores them give the same first token; Gemma 3's local layers
    # skip the chunks out of their window, and writing every layer (the baseline) changes nothing
    first = row["first_tokens"]
    assert row["ragcompress_stored_ms"] > 0 and first["ragcompress_stored"] == first["full_prefill"]
    local = shape == "tiny-gemma3"
    assert ("ragcompress_stored_every_layer_ms" in row) == local
    assert first.get("ragcompress_stored_every_layer", first["full_prefill"]) == first["full_prefill"]
    assert row["full_prefill_top2_margin"] >= 0


def test_step_flops_counts_each_matrix_product_once() -> None:
    """Llama-3-8B at batch 1, 32 tokens over 10K: the projections and MLP (7.0 B weights in
    products, 2 FLOP each) per token, attention over the context and half the question, and the
    output layer for the last token only: ~0.62 TFLOP, and linear in the batch."""
    from ragcompress_bench.ttft_shapes import SHAPES, step_flops
    from transformers import AutoConfig

    model_type, fields = SHAPES["llama3-8b"]
    cfg = AutoConfig.for_model(model_type, **fields)
    linear = 2 * 4096 * (4096 + 2 * 1024) + 2 * 4096 * 4096 + 6 * 4096 * 14336  # per token, per layer
    attention = 4 * 32 * 128 * (10240 + 16.5)  # per token, per layer
    want = 32 * 32 * (linear + attention) + 2 * 4096 * 128256
    assert step_flops(cfg, 1, 32, 10240) == pytest.approx(want)
    assert step_flops(cfg, 32, 32, 10240) == pytest.approx(32 * want)
    # a sliding-window layer attends to its window only
    gem_type, gem = SHAPES["gemma3-12b"]
    g = AutoConfig.for_model(gem_type, **gem)
    w, heads, d = g.sliding_window, g.num_attention_heads, g.head_dim
    full = sum(t == "full_attention" for t in g.layer_types)
    grow = step_flops(g, 1, 32, 4 * w) - step_flops(g, 1, 32, 2 * w)
    assert 0 < full < g.num_hidden_layers and grow == pytest.approx(32 * 4 * heads * d * full * 2 * w)


def test_a_report_written_before_the_static_columns_rename_still_shows_it() -> None:
    """The lead table's committed report names the StaticCache column ``hf_static_compiled_ms``
    (its name until the column stopped implying a compile it may not have had)."""
    from ragcompress_bench.records import RESULTS
    from ragcompress_bench.ttft_report import COLUMNS, markdown

    report = json.loads((RESULTS / "ttft_lead2_h200" / "lead" / "ttft_gpu.json").read_text())
    row = report["rows"][0]
    assert "hf_static_ms" not in row and row["hf_static_compiled_ms"] > 0
    header, _, first = markdown(report).splitlines()[4:7]
    cells = dict(zip(header.strip("| ").split(" | "), first.strip("| ").split(" | "), strict=False))
    assert "hf_static_ms" in COLUMNS and cells["hf_static_ms"] == str(row["hf_static_compiled_ms"])
