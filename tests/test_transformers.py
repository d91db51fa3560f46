"""attngen as a Hugging Face ``attn_implementation`` (attngen.transformers), on tiny random configs
built in code: the same logits as sdpa at the real positions of left- and right-padded batches,
GQA, a sliding window and a softcap (Mistral, Gemma 2), a spec with inputs, gradients, and the same
tokens from ``generate`` with a KV cache."""

from __future__ import annotations


import pytest
import torch

transformers = pytest.importorskip("transformers")

import attngen  # noqa: E402
import attngen.transformers as hf  # noqa: E402
from attngen.driver import compile_source  # noqa: E402

pytestmark = pytest.mark.interpret

TINY = dict(vocab_size=97, hidden_size=64, intermediate_size=96, num_hidden_layers=2, num_attention_heads=4,
            num_key_value_heads=2, max_position_embeddings=128, attention_dropout=0.0)


def _models(cls_name, impl, ref_impl="sdpa", **extra):
    config_cls = getattr(transformers, cls_name)
    torch.manual_seed(0)
    ref = transformers.AutoModelForCausalLM.from_config(config_cls(**TINY, **extra), attn_implementation=ref_impl)
    ours = transformers.AutoModelForCausalLM.from_config(config_cls(**TINY, **extra), attn_implementation=impl)
    ours.load_state_dict(ref.state_dict())
    return ref.eval(), ours.eval()


def _batch(side):
    """Two sequences of 13 and 8 tokens, padded on ``side`` to 13."""
    g = torch.Generator().manual_seed(1)
    ids = torch.randint(3, 97, (2, 13), generator=g)
    mask = torch.ones(2, 13, dtype=torch.long)
    if side == "left":
        mask[1, :5] = 0
    else:
        mask[1, 8:] = 0
    return ids, mask


def _same_at_real_positions(a, b, mask):
    real = mask.bool()
    torch.testing.assert_close(a[real], b[real], atol=2e-4, rtol=2e-4)


@pytest.mark.parametrize("side", ["left", "right", "none"])
def test_llama_gqa_matches_sdpa_with_padding(side):
    name = hf.register(None, "attngen_test_default")
    ref, ours = _models("LlamaConfig", name)
    ids, mask = _batch(side if side != "none" else "left")
    if side == "none":
        mask = torch.ones_like(mask)
    with torch.no_grad():
        _same_at_real_positions(ours(ids, attention_mask=mask).logits, ref(ids, attention_mask=mask).logits, mask)


def test_without_the_key_padding_the_padded_rows_differ():
    """The padding matters for this batch: dropping it changes the real rows (the test can fail)."""
    ref, _ = _models("LlamaConfig", "sdpa")
    ids, mask = _batch("left")
    with torch.no_grad():
        a = ref(ids, attention_mask=mask).logits
        b = ref(ids).logits
    assert (a[1, 5:] - b[1, 5:]).abs().max() > 1e-2


def test_sliding_window_and_softcap_follow_the_layer():
    name = hf.register(None, "attngen_test_default")
    ref, ours = _models("MistralConfig", name, sliding_window=5)
    ids, mask = _batch("right")
    with torch.no_grad():
        _same_at_real_positions(ours(ids, attention_mask=mask).logits, ref(ids, attention_mask=mask).logits, mask)
    ref, ours = _models("Gemma2Config", name, "eager", sliding_window=6, attn_logit_softcapping=5.0, head_dim=16,
                        query_pre_attn_scalar=16)
    ids, mask = _batch("left")
    with torch.no_grad():
        _same_at_real_positions(ours(ids, attention_mask=mask).logits, ref(ids, attention_mask=mask).logits, mask)


def test_a_spec_with_inputs_and_gradients():
    """A registered spec (ALiBi with zero slopes is plain causal, so sdpa is its reference); the
    inputs come per layer; gradients reach the model's weights as with sdpa."""
    fn = attngen.jit("attention alibi { input slopes: f32[H]\n score = dot(q, k) * scale + slopes[h] * (j - i)\n"
                     " mask = causal }")
    name = hf.register(fn, "attngen_test_alibi", inputs=lambda module, query: {"slopes": query.new_zeros(4)})
    ref, ours = _models("LlamaConfig", name)
    ids, mask = _batch("left")
    losses = [m(ids, attention_mask=mask, labels=ids.masked_fill(mask == 0, -100)).loss for m in (ref, ours)]
    torch.testing.assert_close(losses[1], losses[0], atol=1e-4, rtol=1e-4)
    for loss in losses:
        loss.backward()
    for (n, p), q in zip(ref.named_parameters(), ours.parameters()):
        torch.testing.assert_close(q.grad, p.grad, atol=1e-4, rtol=1e-3, msg=n)


def test_a_spec_refuses_a_layer_window():
    name = hf.register(attngen.jit("attention c { mask = causal }"), "attngen_test_plain")
    _, ours = _models("MistralConfig", name, sliding_window=5)
    with pytest.raises(ValueError, match="sliding_window=5.*write it into the spec"):
        ours(torch.ones(1, 4, dtype=torch.long))


def test_generate_matches_sdpa():
    name = hf.register(None, "attngen_test_default")
    ref, ours = _models("LlamaConfig", name)
    ids, mask = _batch("left")
    kw = dict(attention_mask=mask, max_new_tokens=4, do_sample=False, pad_token_id=0)
    with torch.no_grad():
        assert torch.equal(ours.generate(ids, **kw), ref.generate(ids, **kw))


def test_with_key_padding_is_a_module_of_its_own():
    a = compile_source("attention c { mask = causal }")[0]
    p = hf.with_key_padding(a)
    assert [d.name for d in p.inputs] == [hf.PAD_INPUT] and "attngen_kv_valid[b, j]" in p.source
    with pytest.raises(ValueError, match="already has an input"):
        hf.with_key_padding(p)
    assert hf.model_spec(True, 4, 30.0) == ("attention hf_attention {\n    score = 30.0 * tanh(dot(q, k) * scale / "
                                            "30.0)\n    mask = causal and i - j < 4\n}\n")
