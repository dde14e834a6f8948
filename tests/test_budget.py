"""The memory plan: DESIGN.md section 3's figures for Phi-3-mini int4 + TinyLlama, the 4Gi
verdicts, the context cap it solves for, and the embedded pair (the cgroup reader: test_cgroup.py)."""
from __future__ import annotations

import json
from dataclasses import replace

import pytest

from specops.budget import (PREPACKED_MARKER, BudgetError, ModelFigures, choose_plan, cpu_isa,
                            figures_from_spec, kv_bytes_per_token, kv_cache_bytes, largest_context_cap,
                            plan_for, plan_memory)
from specops.config import Settings
from specops.runtime.model_folder import read_model_folder

KiB, MiB, GiB, GB = 1 << 10, 1 << 20, 1 << 30, 10**9
LIMIT = 4 * GiB  # the seed's pod

# Shapes from DESIGN.md section 1; weights from section 3. Prepacked Phi-3 maps its 2.7 GB
# (no heap copy); an un-prepacked one holds both at load (load_extra).
PHI3 = ModelFigures("target", num_layers=32, kv_heads=32, head_dim=96, context_length=4096, vocab_size=32064,
                    num_heads=32, hidden_size=3072, intermediate_size=8192, weight_bytes=int(2.7 * GB))
PHI3_UNPACKED = replace(PHI3, load_extra_bytes=PHI3.weight_bytes)


def tinyllama(weight_gb: float) -> ModelFigures:
    # Optimum export: concat cache (past and present both alive in a pass), unfused attention.
    return ModelFigures("draft", num_layers=22, kv_heads=4, head_dim=64, context_length=2048, vocab_size=32000,
                        num_heads=32, hidden_size=2048, intermediate_size=5632, weight_bytes=int(weight_gb * GB),
                        kv_copies=2, attn_copies=2)


FP32, INT8, INT4 = tinyllama(4.4), tinyllama(1.1), tinyllama(0.7)
KNOBS = dict(prefill_chunk=128, overhead_bytes=256 * MiB)


def test_kv_per_token_matches_design():
    assert kv_bytes_per_token(PHI3) == 768 * KiB
    assert kv_bytes_per_token(INT4) == 44 * KiB
    assert kv_cache_bytes(PHI3, 4096) == 3 * GiB
    assert kv_cache_bytes(PHI3, 2048) == 1.5 * GiB
    assert kv_cache_bytes(INT4, 4096) == 2048 * 44 * KiB * 2  # capped at its own 2048 positions, 2 copies


def test_unpacked_phi3_peaks_at_twice_its_weights_while_loading():
    plan = plan_memory(PHI3_UNPACKED, None, limit_bytes=LIMIT, context_cap=512, **KNOBS)
    assert plan.load_peak_bytes == 2 * PHI3.weight_bytes + KNOBS["overhead_bytes"]  # 5.4 GB + runtime
    assert not plan.fits


def test_phi3_alone_cannot_hold_a_full_4096_cache_in_4gi():
    plan = plan_memory(PHI3, None, limit_bytes=LIMIT, context_cap=4096, **KNOBS)
    assert not plan.fits and plan.items["target KV cache"] == 3 * GiB


def test_fp32_tinyllama_with_phi3_is_refused_with_the_numbers():
    with pytest.raises(BudgetError) as err:
        choose_plan(PHI3, FP32, limit_bytes=LIMIT, requested_context=4096, **KNOBS)
    msg = str(err.value)
    assert "no context cap fits" in msg and "draft weights" in msg and "4096.0 MiB" in msg
    assert f"{FP32.weight_bytes / MiB:.0f} MiB" in msg  # says how big the draft is


def test_int4_tinyllama_with_phi3_fits_with_a_capped_context():
    plan = choose_plan(PHI3, INT4, limit_bytes=LIMIT, requested_context=4096, **KNOBS)
    assert plan.fits and plan.lowered and plan.requested_context == 4096
    assert 512 <= plan.context_cap < 2048 and plan.context_cap % 128 == 0
    assert plan.need_bytes <= LIMIT
    # The largest such cap: one step more does not fit.
    bigger = plan_memory(PHI3, INT4, limit_bytes=LIMIT, context_cap=plan.context_cap + 128, **KNOBS)
    assert not bigger.fits


def test_int8_draft_leaves_too_little_context():
    with pytest.raises(BudgetError, match="largest cap that fits is 128 tokens"):
        choose_plan(PHI3, INT8, limit_bytes=LIMIT, requested_context=4096, min_context=256, **KNOBS)


def test_unpacked_target_is_refused_and_told_to_prepack():
    with pytest.raises(BudgetError, match="prepack the target"):
        choose_plan(PHI3_UNPACKED, INT4, limit_bytes=LIMIT, requested_context=4096, **KNOBS)


def test_no_auto_cap_refuses_instead_of_lowering():
    with pytest.raises(BudgetError, match="SPECOPS_MEMORY_AUTO_CONTEXT_CAP"):
        choose_plan(PHI3, INT4, limit_bytes=LIMIT, requested_context=4096, auto_cap=False, **KNOBS)


def test_a_plan_that_fits_is_kept_as_asked():
    plan = choose_plan(PHI3, INT4, limit_bytes=8 * GiB, requested_context=2048, **KNOBS)
    assert plan.fits and not plan.lowered and plan.context_cap == 2048


def test_smaller_chunks_leave_room_for_more_context():
    caps = [largest_context_cap(PHI3, INT4, limit_bytes=LIMIT, prefill_chunk=c, overhead_bytes=256 * MiB)
            for c in (512, 256, 128)]
    assert caps == sorted(caps) and caps[0] < caps[-1]


def test_plan_reports_for_health_and_log():
    plan = choose_plan(PHI3, INT4, limit_bytes=LIMIT, requested_context=4096, **KNOBS)
    body = json.loads(json.dumps(plan.to_dict()))
    assert body["fits"] and body["limit_mib"] == 4096.0 and body["context_cap"] == plan.context_cap
    assert set(body["items_mib"]) == {"target weights", "draft weights", "target KV cache", "draft KV cache",
                                      "prefill scratch", "runtime overhead"}
    assert f"context cap {plan.context_cap} (lowered from 4096)" in plan.summary()
    assert "= steady state" in str(plan)


# -- plan_for on real folders --------------------------------------------------------------------
@pytest.fixture(scope="module")
def specs(target_folder, draft_folder):
    return read_model_folder(target_folder, verify=False), read_model_folder(draft_folder, verify=False)


def fake_cgroup(tmp_path, limit: str):
    """A cgroup v2 tree where this process sits in /pod/ctr and the pod's cgroup sets `limit`."""
    (tmp_path / "proc/self").mkdir(parents=True)
    (tmp_path / "proc/self/cgroup").write_text("0::/pod/ctr\n")
    (tmp_path / "proc/self/mountinfo").write_text("30 23 0:26 / /sys/fs/cgroup rw - cgroup2 cgroup2 rw\n")
    (tmp_path / "sys/fs/cgroup/pod/ctr").mkdir(parents=True)
    (tmp_path / "sys/fs/cgroup/pod/memory.max").write_text(limit)
    (tmp_path / "sys/fs/cgroup/pod/ctr/memory.max").write_text("max\n")
    return dict(proc_self=tmp_path / "proc/self", fs_root=tmp_path)


def test_the_embedded_pair_fits_easily(specs, tmp_path):
    plan = plan_for(Settings(), *specs, **fake_cgroup(tmp_path, f"{LIMIT}\n"))
    assert plan.limit_bytes == LIMIT and plan.fits and not plan.lowered
    assert f"memory limit from the cgroup {tmp_path / 'sys/fs/cgroup/pod'}" in plan.notes
    assert plan.context_cap == specs[0].context_length
    assert plan.need_bytes < LIMIT / 4


def test_plan_for_takes_the_setting_over_the_cgroup_and_lowers_the_cap(specs, tmp_path):
    where = fake_cgroup(tmp_path, "max\n")
    need = plan_for(Settings(), *specs, **where)
    assert need.limit_bytes is None and need.fits and need.notes  # nothing to enforce, and it says so
    # A limit that leaves room for only part of the context: the cap comes down to fit.
    small = need.need_bytes - need.items["target KV cache"] // 2
    bare = dict(memory_page_cache_bytes=0, memory_reclaim_margin=0.0)  # the arithmetic alone
    plan = plan_for(Settings(memory_limit_bytes=small, **bare), *specs, **where)
    assert plan.lowered and plan.context_cap < specs[0].context_length and plan.need_bytes <= small
    with pytest.raises(BudgetError):
        plan_for(Settings(memory_limit_bytes=small, memory_auto_context_cap=False, **bare), *specs, **where)


def test_a_limit_keeps_page_cache_and_a_reclaim_margin_free(specs, tmp_path):
    """With a limit, the plan holds the page cache in use and a share of the limit as items: a limit
    that fits the arithmetic exactly lowers the cap, and the refusal names the thrash it avoids."""
    where = fake_cgroup(tmp_path, "max\n")
    exact = plan_for(Settings(memory_page_cache_bytes=0, memory_reclaim_margin=0.0), *specs, **where).need_bytes
    settings = Settings(memory_limit_bytes=exact, memory_page_cache_bytes=64 * MiB, memory_reclaim_margin=0.05)
    plan = plan_for(settings, *specs, **where)
    assert plan.items["page cache in use"] == 64 * MiB and plan.items["reclaim margin"] == int(exact * 0.05)
    assert plan.lowered and plan.need_bytes <= exact
    with pytest.raises(BudgetError, match="thrash"):
        plan_for(settings.model_copy(update={"memory_auto_context_cap": False}), *specs, **where)


def test_the_seed_pair_in_4gi_with_the_reserves():
    """Phi-3 int4 + TinyLlama int4 in 4Gi: 128 MiB of page cache and a 5% margin leave no useful
    context (the rehearsal's 36 MiB of headroom thrashed); without the draft a longer one fits."""
    reserves = (("page cache in use", 128 * MiB), ("reclaim margin", int(LIMIT * 0.05)))
    bare = choose_plan(PHI3, INT4, limit_bytes=LIMIT, requested_context=4096, **KNOBS)
    with pytest.raises(BudgetError, match="thrash"):
        choose_plan(PHI3, INT4, limit_bytes=LIMIT, requested_context=4096, min_context=bare.context_cap,
                    reserves=reserves, **KNOBS)
    alone = choose_plan(PHI3, None, limit_bytes=LIMIT, requested_context=4096, reserves=reserves, **KNOBS)
    assert alone.context_cap > bare.context_cap


def test_a_prepack_marker_counts_mapped_weights_only_when_it_matches_this_machine(specs, tmp_path):
    from importlib import metadata

    spec = specs[0]
    folder = tmp_path / "t"
    folder.mkdir()
    for path in spec.folder.iterdir():
        (folder / path.name).symlink_to(path)
    moved = replace(spec, folder=folder, model_file=folder / spec.model_file.name)
    plain, _ = figures_from_spec(moved, "target")
    assert plain.load_extra_bytes == plain.weight_bytes > 0  # heap repack beside the mapped originals

    marker = {"onnxruntime": metadata.version("onnxruntime"), "cpu_isa": cpu_isa(), "resident_weight_bytes": 1234}
    (folder / PREPACKED_MARKER).write_text(json.dumps(marker))
    packed, note = figures_from_spec(moved, "target")
    assert (packed.weight_bytes, packed.load_extra_bytes, note) == (1234, 0, None)

    (folder / PREPACKED_MARKER).write_text(json.dumps({**marker, "onnxruntime": "0.0.1"}))
    stale, note = figures_from_spec(moved, "target")
    assert stale.load_extra_bytes == 1234 and "prepack again" in note


def test_a_batch_that_cannot_fit_is_lowered_with_the_reason():
    """Phi-3 int4 in 4Gi at a 512-token cap: 384 MiB of KV per sequence; 8 do not fit, 2 do."""
    plan = choose_plan(PHI3, None, limit_bytes=LIMIT, requested_context=512, batch=8, **KNOBS)
    assert plan.fits and plan.context_cap == 512 and plan.requested_batch == 8
    assert 1 < plan.max_batch < 8
    assert not plan_memory(PHI3, None, limit_bytes=LIMIT, context_cap=512, batch=plan.max_batch + 1, **KNOBS).fits
    assert any(f"max_batch lowered from 8 to {plan.max_batch}" in n for n in plan.notes)
    assert plan.items[f"target KV cache x {plan.max_batch}"] == plan.max_batch * kv_cache_bytes(PHI3, 512)
    assert plan.to_dict()["max_batch"] == plan.max_batch


def test_a_batch_that_fits_is_kept_and_one_sequence_that_does_not_lowers_the_cap():
    plan = choose_plan(replace(PHI3, weight_bytes=GB), None, limit_bytes=LIMIT, requested_context=512, batch=4, **KNOBS)
    assert plan.max_batch == 4 and not plan.lowered
    single = choose_plan(PHI3, None, limit_bytes=LIMIT, requested_context=4096, batch=4, **KNOBS)
    assert single.max_batch == 1 and single.lowered and single.context_cap < 4096
    assert any("no batch fits" in n for n in single.notes)
