"""The model build's own pieces (needs the `build` extra; skipped where torch is absent, as in
CI, which installs only the test extra)."""
import pytest

torch = pytest.importorskip("torch")
pytest.importorskip("transformers")

from specops_build.corpus import COPY_MARKERS, copy_examples  # noqa: E402
from specops_build.train import lm_loss, make_model  # noqa: E402


def test_fused_cross_entropy_matches_the_reference_loss_and_gradients():
    """The chunked loss (chunks of 17 rows, a remainder included) equals transformers' own loss
    and gives the same gradients for every parameter, within bf16 rounding (2%)."""
    model = make_model(vocab=1000, hidden=64, layers=2, heads=4, kv_heads=2, intermediate=128, context=128,
                       seed=0)
    x = torch.randint(0, 1000, (3, 40), generator=torch.Generator().manual_seed(0))
    with torch.autocast("cpu", dtype=torch.bfloat16):
        reference = model(input_ids=x, labels=x).loss
    reference.backward()
    expected = {name: p.grad.clone() for name, p in model.named_parameters()}
    model.zero_grad()
    loss = lm_loss(model, x, chunk=17)
    loss.backward()
    loss, reference = float(loss.detach()), float(reference.detach())
    assert abs(loss - reference) < 1e-3 * reference
    for name, p in model.named_parameters():
        rel = float((p.grad - expected[name]).norm() / expected[name].norm())
        assert rel < 0.02, f"{name}: relative gradient error {rel:.3f}"


def test_copy_examples_repeat_a_snippet_verbatim():
    docs = ["\n".join(f"line {d} {i} = {i * d}" for i in range(30)) for d in range(5)]
    for example in copy_examples(docs, seed=1, count=50):
        body = example.rstrip("\n")
        for marker in sorted(COPY_MARKERS, key=len, reverse=True):
            first, sep, second = body.partition(f"\n\n{marker}\n") if marker else (None, None, None)
            if sep:
                break
        else:  # no marker: the snippet twice, line by line
            lines = body.split("\n")
            first, second = "\n".join(lines[:len(lines) // 2]), "\n".join(lines[len(lines) // 2:])
        assert first == second and len(first) >= 40
        assert any(first in d for d in docs)


def test_grown_model_computes_the_same_function():
    from specops_build.train import grow_depth

    small = make_model(vocab=500, hidden=64, layers=2, heads=4, kv_heads=4, intermediate=128, context=64, seed=0)
    for p in small.parameters():  # move off the initialisation, so the check is not trivial
        p.data += 0.05 * torch.randn_like(p)
    grown = grow_depth(small, 4)
    assert grown.config.num_hidden_layers == 4
    x = torch.randint(0, 500, (2, 20), generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        torch.testing.assert_close(grown(input_ids=x).logits, small(input_ids=x).logits, rtol=1e-4, atol=1e-4)
    assert grown.lm_head.weight.data_ptr() == grown.model.embed_tokens.weight.data_ptr()
    assert float(grown.model.layers[1].mlp.down_proj.weight.detach().abs().sum()) == 0.0
    assert float(grown.model.layers[0].mlp.down_proj.weight.detach().abs().sum()) > 0.0
