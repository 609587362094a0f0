"""DreamLLM forward: where features and queries land, where the condition is read, the losses."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from model_fixtures import built_model, make_batch

from dreamray.model.blocks import BlockError
from dreamray.model.losses import lm_loss


@pytest.fixture()
def model(tiny_zoo):
    return built_model(tiny_zoo)


def test_features_and_queries_land_exactly_in_their_slots(model):
    batch = make_batch(model, "mixed")
    ids, clip = batch["input_ids"], batch["clip_pixel_values"]
    with torch.no_grad():
        embeds = model.embed(ids, clip)
        tokens = model.llm.get_input_embeddings()(ids)
        feats = model.clip_vision_embedding(clip)
    t, p, q = model.token_ids, model.num_patches, model.num_queries
    filled = torch.zeros_like(ids, dtype=torch.bool)
    image_i = 0
    for row in range(ids.shape[0]):
        for pos in (ids[row] == t.im_start).nonzero().flatten().tolist():
            torch.testing.assert_close(
                embeds[row, pos + 1 : pos + 1 + p], feats[image_i], rtol=0, atol=0
            )
            filled[row, pos + 1 : pos + 1 + p] = True
            image_i += 1
        for pos in (ids[row] == t.dream_start).nonzero().flatten().tolist():
            queries = model.dream_embedding.dream_queries[0]
            assert torch.equal(embeds[row, pos + 1 : pos + 1 + q], queries)
            filled[row, pos + 1 : pos + 1 + q] = True
    assert image_i == clip.shape[0] == 2
    assert torch.equal(embeds[~filled], tokens[~filled])
    assert int(filled.sum()) == (ids == t.im_patch).sum()


def test_condition_is_read_at_the_query_slots_after_the_final_norm(model):
    batch = make_batch(model, "mixed")
    seen = {}
    norm = model.llm.model.norm
    hook_norm = norm.register_forward_hook(lambda m, i, o: seen.setdefault("norm", o))

    def grab(module, args, kwargs):
        seen["cond"] = kwargs["encoder_hidden_states"]

    hook_unet = model.stable_diffusion_head.unet.register_forward_pre_hook(grab, with_kwargs=True)
    try:
        model(**batch, lm_weight=1.0, vm_weight=1.0)
    finally:
        hook_norm.remove()
        hook_unet.remove()
    (pos,) = (batch["input_ids"][1] == model.token_ids.dream_start).nonzero().flatten().tolist()
    after_norm = seen["norm"][1, pos + 1 : pos + 1 + model.num_queries]
    expected = model.stable_diffusion_head.projector(after_norm)
    torch.testing.assert_close(seen["cond"][0], expected)
    assert seen["cond"].shape == (1, model.num_queries, 32)


def test_lm_loss_matches_shifted_cross_entropy_and_is_safe_when_all_ignored():
    logits = torch.randn(2, 5, 7, requires_grad=True)
    labels = torch.tensor([[-100, 1, 2, -100, 3], [-100, -100, 4, 5, -100]])
    loss, n = lm_loss(logits, labels)
    ref = F.cross_entropy(logits[:, :-1].reshape(-1, 7), labels[:, 1:].reshape(-1))
    torch.testing.assert_close(loss, ref)
    assert int(n) == 5
    empty, n0 = lm_loss(logits, torch.full_like(labels, -100))
    assert float(empty.detach()) == 0.0 and int(n0) == 0 and empty.requires_grad
    empty.backward()
    assert logits.grad is not None and torch.count_nonzero(logits.grad) == 0


def test_loss_weights_and_outputs(model):
    batch = make_batch(model, "mixed")
    torch.manual_seed(3)
    out = model(**batch, lm_weight=1.0, vm_weight=10.0)
    assert (out.num_images, out.num_dreams) == (2, 1)
    torch.testing.assert_close(out.loss, out.lm_loss + 10.0 * out.vm_loss)
    assert out.vm_loss.item() > 0 and out.lm_loss.item() > 0


def test_batches_without_images_or_dreams_still_touch_every_tower(model):
    for kind in ("no_images", "no_dreams", "text"):
        batch = make_batch(model, kind)
        out = model(**batch, lm_weight=1.0, vm_weight=1.0)
        out.loss.backward()
        if kind != "no_images":
            assert out.vm_loss.item() == 0.0
        for name, param in model.named_parameters():
            if param.requires_grad:
                assert param.grad is not None, (kind, name)
        model.zero_grad(set_to_none=True)


def _call_and_grad_order(model, batch) -> tuple[list[str], list[str]]:
    """Modules in the order their forward ran, parameters in the order their grads landed."""
    calls, grads, handles = [], [], []
    for name, module in model.named_modules():
        if any(True for _ in module.parameters(recurse=False)):
            handles.append(module.register_forward_pre_hook(lambda m, a, n=name: calls.append(n)))
    for name, param in model.named_parameters():
        if param.requires_grad:
            handles.append(param.register_post_accumulate_grad_hook(
                lambda p, n=name: grads.append(n)))
    try:
        torch.manual_seed(0)
        model(**batch, lm_weight=1.0, vm_weight=1.0).loss.backward()
    finally:
        for handle in handles:
            handle.remove()
        model.zero_grad(set_to_none=True)
    return calls, grads


@pytest.mark.parametrize("condition_dropout", [0.0, 0.5])
def test_every_batch_kind_runs_modules_and_lands_grads_in_one_order(tiny_zoo, condition_dropout):
    # ZeRO-2 fills gradient buckets in the order grads land and ZeRO-3 gathers parameters in
    # the order modules run: two ranks with different batch kinds must agree on both.
    model = built_model(tiny_zoo, condition_dropout=condition_dropout).train()
    orders = {kind: _call_and_grad_order(model, make_batch(model, kind))
              for kind in ("mixed", "no_images", "no_dreams", "text")}
    calls, grads = orders["mixed"]
    assert "clip_vision_embedding.projector.projector" in calls
    assert len(set(grads)) == len(grads) == sum(p.requires_grad for p in model.parameters())
    for kind, (kind_calls, kind_grads) in orders.items():
        assert kind_calls == calls, kind
        assert kind_grads == grads, kind


def test_options_min_snr_and_condition_dropout(tiny_zoo):
    model = built_model(tiny_zoo, snr_gamma=5.0, condition_dropout=0.9)
    batch = make_batch(model, "mixed")
    seen = {}

    def grab(module, args, kwargs):
        seen.setdefault("cond", kwargs["encoder_hidden_states"])

    model.stable_diffusion_head.unet.register_forward_pre_hook(grab, with_kwargs=True)
    torch.manual_seed(0)  # with p = 0.9 the first draw drops the condition
    out = model(**batch, lm_weight=1.0, vm_weight=1.0)
    assert torch.isfinite(out.loss)
    uncond = model.condition(model.unconditional_hidden())
    torch.testing.assert_close(seen["cond"], uncond)


@pytest.mark.parametrize(
    ("case", "match"),
    [
        ("one_image_too_few", r"2 IMG blocks \(per sample: \[1, 1\]\) but clip_pixel_values has 1"),
        ("no_sd_images", r"1 DRM blocks \(per sample: \[0, 1\]\) but sd_pixel_values has 0"),
        ("cut_block", r"sample 1: .*<im_patch>"),
        ("block_at_end", r"sample 0: IMG block at position \d+ is cut off"),
    ],
)
def test_bad_inputs_raise_with_the_sample_named(model, case, match):
    batch = make_batch(model, "mixed")
    t = model.token_ids
    if case == "one_image_too_few":
        batch["clip_pixel_values"] = batch["clip_pixel_values"][:1]
    elif case == "no_sd_images":
        batch["sd_pixel_values"] = None
    elif case == "cut_block":
        row = batch["input_ids"][1]
        pos = int((row == t.im_start).nonzero()[0])
        row[pos + 3] = t.eos  # a slot overwritten: the block is malformed
    else:
        ids = batch["input_ids"]
        ids[0, -1] = t.im_start
        batch["clip_pixel_values"] = torch.cat([batch["clip_pixel_values"]] * 2)[:3]
    with pytest.raises(BlockError, match=match):
        model(**batch, lm_weight=1.0, vm_weight=1.0)


def test_dream_block_embeds_match_a_spliced_drm_block(model):
    t = model.token_ids
    ids = torch.tensor([[t.bos, *t.dream_block(model.num_queries)]])
    with torch.no_grad():
        spliced = model.embed(ids, None)[:, 1:]
        fed = model.dream_block_embeds(1)
    assert torch.equal(spliced, fed)


def test_gradient_checkpointing_gives_the_same_loss_and_grads(tiny_zoo):
    plain, ckpt = built_model(tiny_zoo), built_model(tiny_zoo, gradient_checkpointing=True)
    assert ckpt.llm.model.gradient_checkpointing and not plain.llm.model.gradient_checkpointing
    for model in (plain, ckpt):
        model.train()
        torch.manual_seed(5)
        model(**make_batch(model, "mixed"), lm_weight=1.0, vm_weight=1.0).loss.backward()
    torch.testing.assert_close(
        plain.dream_embedding.dream_queries.grad, ckpt.dream_embedding.dream_queries.grad
    )
    torch.testing.assert_close(
        plain.llm.model.layers[0].mlp.up_proj.weight.grad,
        ckpt.llm.model.layers[0].mlp.up_proj.weight.grad,
    )
