"""The fast text side (truncation, shared-prefix cache, chunks, checkpointing) against the straightforward
full-length (77-token) pass, and evaluation computing class text features once per (prompt, class list)."""

import pytest
import torch

from dipclip import api
from dipclip.methods import get_method
from dipclip.methods.base import PromptCLIP

pytestmark = pytest.mark.usefixtures("one_thread")


NAMES = ["cat", "golden retriever", "sea_lion", "a very long name of a small grey thing", "x", "pink primrose",
         "hard-leaved pocket orchid", "electric guitar"]


def perturbed_model(backbone, method, position, class_specific, names=NAMES):
    m = get_method(method)
    model = m.build(backbone, names, m.prompt_config(class_position=position, class_specific=class_specific))
    with torch.no_grad():  # move away from the init so every context entry matters
        generator = torch.Generator().manual_seed(3)
        for p in model.context.parameters():
            p.add_(torch.randn(p.shape, generator=generator) * 0.05)
    return model


def logits_of(model, features, images):
    return model.logits(images, torch.nn.functional.normalize(features.float(), dim=-1))


@pytest.mark.parametrize("chunk_tokens", [2048, 8])  # one chunk per length group; many chunks, checkpointed
@pytest.mark.parametrize("class_specific", [False, True])
@pytest.mark.parametrize("position", ["end", "middle", "front"])
@pytest.mark.parametrize("method", ["coop", "dip"])
def test_fast_text_side_equals_full_length(tiny_backbone, method, position, class_specific, chunk_tokens):
    model = perturbed_model(tiny_backbone, method, position, class_specific)
    prompts = model.class_prompts
    prompts.chunk_tokens = chunk_tokens
    images = torch.nn.functional.normalize(torch.randn(5, tiny_backbone.text.output_dim,
                                                       generator=torch.Generator().manual_seed(0)), dim=-1)
    model.context.train()  # DIP: dropout on; one ctx drawn, fed to both paths
    torch.manual_seed(0)
    ctx = model.context()
    fast = logits_of(model, prompts(ctx), images)
    fast_grads = torch.autograd.grad(fast.logsumexp(-1).sum(), model.trainable_parameters())
    torch.manual_seed(0)  # the same dropout mask again
    ctx = model.context()
    reference = logits_of(model, prompts.full_length_forward(ctx), images)
    reference_grads = torch.autograd.grad(reference.logsumexp(-1).sum(), model.trainable_parameters())
    assert (fast - reference).abs().max() <= 1e-5
    for got, expected in zip(fast_grads, reference_grads, strict=True):
        assert torch.allclose(got, expected, rtol=1e-4, atol=1e-5 * float(expected.abs().max()))
    # the shortcut really ran: shorter sequences, and the prefix cache where the context is shared and first
    chunks, _, _ = prompts._plan(0)
    assert max(length for _, length in chunks) < tiny_backbone.text.context_length
    assert prompts.shared_length(ctx) == (1 + {"end": 4, "middle": 2, "front": 0}[position]
                                          if not class_specific else 1)


def test_fallback_without_prefix_cache_is_exact(tiny_backbone, monkeypatch):
    model = perturbed_model(tiny_backbone, "coop", "end", False)
    ctx = model.context()
    cached = model.class_prompts(ctx)
    monkeypatch.setattr(type(tiny_backbone.text), "supports_prefix_cache", property(lambda self: False))
    plain = model.class_prompts(ctx)
    assert (cached - plain).abs().max() <= 1e-5
    assert (plain - model.class_prompts.full_length_forward(ctx)).abs().max() <= 1e-5


def saved_bytes(fn) -> int:
    """Bytes of the tensors autograd keeps for the backward pass (what grows with classes x length)."""
    total = 0

    def pack(tensor):
        nonlocal total
        total += tensor.numel() * tensor.element_size()
        return tensor

    with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
        out = fn()
    out.float().square().sum().backward()
    return total


def test_many_classes_fit_in_bounded_memory_and_backbone_stays_frozen(tiny_backbone):
    names = [f"class number {i}" for i in range(300)]
    model = perturbed_model(tiny_backbone, "coop", "end", False, names)
    prompts = model.class_prompts
    fast = saved_bytes(lambda: prompts(model.context()))
    reference = saved_bytes(lambda: prompts.full_length_forward(model.context()))
    assert fast * 4 <= reference
    prompts.chunk_tokens = 256  # smaller chunks: checkpointed, so only chunk inputs are kept
    assert saved_bytes(lambda: prompts(model.context())) * 10 <= fast
    assert not any(p.requires_grad for p in tiny_backbone.model.parameters())
    assert model.context.ctx.grad is not None


def test_evaluation_encodes_class_prompts_once_per_class_list(tmp_path, tiny_config_path, image_tree, monkeypatch):
    calls = []
    original = PromptCLIP.text_features

    def counting(self, merged=False):
        calls.append((merged, tuple(self.classnames)))
        return original(self, merged)

    monkeypatch.setattr(PromptCLIP, "text_features", counting)
    api.train("dip", model=str(tiny_config_path), pretrained="none", data=str(image_tree), dataset="imagefolder", shots=4, epochs=1,
              batch_size=4, subsample="base", progress=False, out=tmp_path / "run")
    merged = [names for is_merged, names in calls if is_merged]
    # 8 base images / batch 4 = 2 training steps, the epoch's finite check of the merged prompt, then base and new
    # once each
    assert len(calls) == 2 + 1 + 2
    assert len(merged) == 3 and merged[0] == merged[1] != merged[2]
    calls.clear()
    api.evaluate(tmp_path / "run" / "adapter", data=str(image_tree), dataset="imagefolder", subsample="new")
    assert len(calls) == 1
