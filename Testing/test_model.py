"""Tests of the CLIP nodule model: open_clip towers, split q/k/v attention, peft LoRA, heads and weights I/O.

Uses real open_clip and peft on tiny random CLIP configurations; no pretrained weights
are downloaded.
"""

from __future__ import annotations

import math

import open_clip
import pytest
import torch
import torch.nn.functional as F
from peft.tuners.lora import LoraLayer

from clipnodule.backbones import BACKBONES, backbone_architecture, get_backbone, read_backbone_weights
from clipnodule.errors import BundleError, InputError
from clipnodule.heads import AttentionMIL, TextProjectionHead
from clipnodule.lora import SplitQKVAttention, pack_attention_state_dict, split_attention_modules
from clipnodule.model import ModelConfig, build_model

TINY = "tiny-vit"


def tiny_config(**overrides) -> ModelConfig:
    return ModelConfig(**{"backbone": TINY, "pretrained": None, **overrides})


@pytest.fixture(scope="module")
def lora_model():
    torch.manual_seed(0)
    return build_model(tiny_config()).eval()


@pytest.fixture(scope="module")
def pixels() -> torch.Tensor:
    generator = torch.Generator().manual_seed(1)
    return torch.randn(2, 9, 3, 224, 224, generator=generator)


class NotAWeight:
    """A Python object that a weights-only torch.load must not restore."""


def tiny_open_clip_model(seed: int = 0) -> torch.nn.Module:
    torch.manual_seed(seed)
    return open_clip.CLIP(**backbone_architecture(TINY)).eval()


# Registry and config.


def test_registry_contains_published_and_tiny_backbones():
    assert BACKBONES["ViT-B-32-quickgelu"].default_pretrained == "openai"
    assert BACKBONES["ViT-B-32-quickgelu"].open_clip_config is None
    tiny = backbone_architecture(TINY)
    assert tiny["embed_dim"] == 512
    assert tiny["quick_gelu"] is True
    assert tiny["vision_cfg"]["width"] == 64
    assert tiny["vision_cfg"]["layers"] == 2
    assert tiny["text_cfg"]["heads"] == 1
    assert tiny["text_cfg"]["context_length"] == 77
    assert tiny["text_cfg"]["vocab_size"] == 49408


def test_unknown_backbone_lists_names():
    with pytest.raises(InputError, match="Unknown backbone 'ViT-H-99'.*ViT-B-32-quickgelu.*tiny-vit"):
        get_backbone("ViT-H-99")


def test_model_config_round_trip_and_unknown_field():
    config = tiny_config(tuning="probe", lora_rank=4)
    assert ModelConfig.from_dict(config.to_dict()) == config
    with pytest.raises(BundleError, match="Unknown model config fields: colour"):
        ModelConfig.from_dict({**config.to_dict(), "colour": "red"})
    with pytest.raises(InputError, match="Unknown tuning mode 'adapter'"):
        tiny_config(tuning="adapter")


# Shapes and outputs.


def test_encode_image_shapes_and_attention(lora_model, pixels):
    with torch.no_grad():
        embedding, attention = lora_model.encode_image(pixels)
    assert embedding.shape == (2, 256)
    assert attention.shape == (2, 9)
    assert torch.all(attention > 0)
    torch.testing.assert_close(attention.sum(dim=1), torch.ones(2), atol=1e-6, rtol=0)


def test_encode_image_rejects_wrong_shape(lora_model):
    with pytest.raises(InputError, match=r"\(B, planes, 3, H, W\), got \(9, 3, 224, 224\)"):
        lora_model.encode_image(torch.zeros(9, 3, 224, 224))


def test_image_probabilities_and_text(lora_model, pixels):
    with torch.no_grad():
        outputs = lora_model.image_probabilities(pixels)
        texts = lora_model.text_embeddings_normalized(["This nodule margin is spiculated.", "No findings."])
    assert outputs["probability"].shape == (2,)
    assert torch.all((outputs["probability"] > 0) & (outputs["probability"] < 1))
    torch.testing.assert_close(outputs["probability"], F.softmax(outputs["logits"], dim=-1)[:, 1])
    torch.testing.assert_close(outputs["embedding"].norm(dim=-1), torch.ones(2))
    assert texts.shape == (2, 256)
    torch.testing.assert_close(texts.norm(dim=-1), torch.ones(2))


def test_tokenize_matches_open_clip_tokenizer(lora_model):
    texts = ["There is pleural retraction.", "No findings."]
    tokens = lora_model.tokenize(texts)
    assert tokens.dtype == torch.int64
    assert tokens.shape == (2, 77)
    assert torch.equal(tokens, open_clip.get_tokenizer("ViT-B-32-quickgelu")(texts))
    assert tokens[0, 0].item() == 49406


def test_forward_logits_and_clamped_scale(lora_model, pixels):
    tokens = lora_model.tokenize(["a", "b", "c"])
    with torch.no_grad():
        outputs = lora_model(pixels, tokens)
        expected = math.exp(math.log(1 / 0.07)) * outputs["image_embedding"] @ outputs["text_embedding"].t()
        torch.testing.assert_close(outputs["logits_per_image"], expected)
        assert outputs["logits_per_text"].shape == (3, 2)
        assert outputs["logits_image"].shape == (2, 2)
        assert outputs["logits_text"].shape == (3, 2)

        lora_model.logit_scale.fill_(9.0)
        scaled = lora_model.compute_logits(outputs["image_embedding"], outputs["text_embedding"])
        lora_model.logit_scale.fill_(math.log(1 / 0.07))
    torch.testing.assert_close(scaled, 100.0 * outputs["image_embedding"] @ outputs["text_embedding"].t())


def test_attention_mil_matches_manual_pooling():
    torch.manual_seed(3)
    head = AttentionMIL(512, 256, 128)
    features = torch.randn(3, 9, 512)
    embedding, attention = head(features)

    projected = torch.relu(head.projector[0](features))
    scores = head.attention[2](torch.tanh(head.attention[0](projected))).squeeze(-1)
    weights = torch.softmax(scores, dim=1)
    torch.testing.assert_close(attention, weights)
    torch.testing.assert_close(embedding, (weights.unsqueeze(-1) * projected).sum(dim=1))


def test_text_head_residual_and_layer_norm():
    torch.manual_seed(4)
    head = TextProjectionHead(512, 256, dropout=0.1).eval()
    features = torch.randn(5, 512)
    projected = head.projection(features)
    expected = F.layer_norm(head.fc(F.gelu(projected)) + projected, (256,), head.layer_norm.weight, head.layer_norm.bias)
    torch.testing.assert_close(head(features), expected)


# Attention split and LoRA.


def test_split_attention_matches_packed_attention():
    packed = tiny_open_clip_model(seed=5)
    split = tiny_open_clip_model(seed=5)
    replaced = split_attention_modules(split)
    assert len(replaced) == 4
    assert isinstance(split.transformer.resblocks[0].attn, SplitQKVAttention)

    images = torch.randn(3, 3, 224, 224)
    tokens = open_clip.get_tokenizer("ViT-B-32-quickgelu")(["a spiculated nodule", "no findings", "x"])
    with torch.no_grad():
        torch.testing.assert_close(split.encode_image(images), packed.encode_image(images), atol=1e-5, rtol=1e-5)
        # The text tower uses open_clip's causal mask; a wrong mask changes these outputs.
        torch.testing.assert_close(split.encode_text(tokens), packed.encode_text(tokens), atol=1e-5, rtol=1e-5)


def test_split_attention_boolean_mask_matches_multihead_attention():
    torch.manual_seed(6)
    attention = torch.nn.MultiheadAttention(64, 2, batch_first=True).eval()
    split = SplitQKVAttention.from_multihead_attention(attention).eval()
    x = torch.randn(2, 5, 64)
    mask = torch.triu(torch.ones(5, 5, dtype=torch.bool), diagonal=1)
    padding = torch.tensor([[False] * 5, [False, False, False, True, True]])
    expected = attention(x, x, x, need_weights=False, attn_mask=mask, key_padding_mask=padding)[0]
    actual = split(x, x, x, need_weights=False, attn_mask=mask, key_padding_mask=padding)[0]
    torch.testing.assert_close(actual, expected, atol=1e-6, rtol=1e-5)


def test_lora_on_qkv_of_every_block(lora_model):
    towers = {"visual": lora_model.clip.visual.transformer, "text": lora_model.clip.transformer}
    for tower, transformer in towers.items():
        assert len(transformer.resblocks) == 2, tower
        for block in transformer.resblocks:
            for name in ("q_proj", "k_proj", "v_proj"):
                layer = getattr(block.attn, name)
                assert isinstance(layer, LoraLayer), f"{tower} {name}"
                assert layer.r["default"] == 2
                assert layer.scaling["default"] == pytest.approx(1 / math.sqrt(2), rel=1e-12)
                assert layer.lora_A["default"].weight.shape == (2, 64)
                assert layer.lora_B["default"].weight.shape == (64, 2)
                assert layer.lora_dropout["default"].p == 0.25
            assert not isinstance(block.attn.out_proj, LoraLayer)


def test_lora_at_init_leaves_backbone_output_unchanged(pixels):
    torch.manual_seed(7)
    probe = build_model(tiny_config(tuning="probe")).eval()
    lora = build_model(tiny_config(), backbone_state_dict=probe.backbone_state_dict()).eval()
    images = pixels[0]
    with torch.no_grad():
        torch.testing.assert_close(lora.clip.encode_image(images), probe.clip.encode_image(images))


def test_peft_rslora_adds_scaled_delta():
    torch.manual_seed(8)
    model = build_model(tiny_config()).eval()
    layer = model.clip.visual.transformer.resblocks[0].attn.q_proj
    with torch.no_grad():
        layer.lora_B["default"].weight.normal_()
        x = torch.randn(4, 64)
        delta = layer.lora_B["default"].weight @ layer.lora_A["default"].weight
        expected = F.linear(x, layer.base_layer.weight + delta / math.sqrt(2), layer.base_layer.bias)
        torch.testing.assert_close(layer(x), expected, atol=1e-5, rtol=1e-5)


# Trainable parameters.


def _trainable_names(model) -> set[str]:
    return {name for name, parameter in model.named_parameters() if parameter.requires_grad}


def test_lora_mode_trains_adapters_heads_and_scale(lora_model):
    names = _trainable_names(lora_model)
    adapters = {name for name in names if ".lora_A." in name or ".lora_B." in name}
    assert len(adapters) == 2 * 3 * 4
    assert "logit_scale" in names
    assert "mil_head.projector.0.weight" in names
    assert "text_head.fc.weight" in names
    assert "classifier_image.weight" in names
    assert "classifier_text.bias" in names
    assert not any(".base_layer." in name for name in names)
    assert "clip.visual.conv1.weight" not in names
    assert "clip.token_embedding.weight" not in names
    assert set(lora_model.trainable_state_dict()) == names


def test_probe_mode_trains_heads_only():
    model = build_model(tiny_config(tuning="probe"))
    names = _trainable_names(model)
    assert names
    assert all(name.startswith(("mil_head.", "text_head.", "classifier_")) or name == "logit_scale" for name in names)
    assert not any("lora_" in name for name in model.state_dict())
    assert set(model.trainable_state_dict()) == names


def test_full_mode_trains_everything_but_unused_clip_scale():
    model = build_model(tiny_config(tuning="full"))
    frozen = {name for name, parameter in model.named_parameters() if not parameter.requires_grad}
    assert frozen == {"clip.logit_scale"}
    assert "clip.visual.transformer.resblocks.0.attn.q_proj.weight" in model.trainable_state_dict()


def test_vision_only_model_has_no_text_branch(pixels):
    model = build_model(tiny_config(vision_only=True)).eval()
    assert model.text_head is None
    assert model.clip.transformer is None
    assert "logit_scale" not in model.trainable_state_dict()
    assert not any(key.startswith("clip.transformer.") for key in model.backbone_state_dict())
    with torch.no_grad():
        outputs = model(pixels, tokens=torch.zeros(2, 77, dtype=torch.long))
    assert set(outputs) == {"image_embedding", "attention", "logits_image"}
    with pytest.raises(InputError, match="vision-only"):
        model.encode_text(torch.zeros(1, 77, dtype=torch.long))

    rebuilt = build_model(tiny_config(vision_only=True), backbone_state_dict=model.backbone_state_dict())
    assert torch.equal(rebuilt.clip.visual.proj, model.clip.visual.proj)


def test_vision_only_loads_full_clip_weights_file(tmp_path):
    source = tiny_open_clip_model(seed=14)
    path = tmp_path / "tiny.pt"
    torch.save(source.state_dict(), path)
    model = build_model(tiny_config(vision_only=True, weights_path=str(path)))
    assert torch.equal(model.clip.visual.conv1.weight, source.visual.conv1.weight)
    assert model.clip.token_embedding is None


def test_training_steps_lower_loss():
    torch.manual_seed(9)
    model = build_model(tiny_config()).train()
    # Three planes per nodule keep the test fast; the MIL head accepts any number of planes.
    pixels = torch.randn(4, 3, 3, 224, 224)
    labels = torch.tensor([0, 1, 0, 1])
    tokens = model.tokenize(["solid round nodule", "spiculated margin", "ground glass", "lobulated margin"])
    optimizer = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=1e-2)

    def total_loss(train: bool) -> torch.Tensor:
        model.train(train)
        outputs = model(pixels, tokens)
        targets = torch.arange(4)
        clip_loss = (F.cross_entropy(outputs["logits_per_image"], targets)
                     + F.cross_entropy(outputs["logits_per_text"], targets)) / 2
        return clip_loss + F.cross_entropy(outputs["logits_image"], labels) + F.cross_entropy(outputs["logits_text"], labels)

    # Dropout makes training-mode losses noisy, so compare eval-mode losses before and after.
    with torch.no_grad():
        before = total_loss(train=False)
    for _ in range(10):
        optimizer.zero_grad()
        total_loss(train=True).backward()
        optimizer.step()
    with torch.no_grad():
        after = total_loss(train=False)

    assert after < before - 0.1
    assert model.clip.visual.transformer.resblocks[0].attn.q_proj.lora_B["default"].weight.abs().sum() > 0


# State dicts.


def test_trainable_state_round_trip(pixels):
    torch.manual_seed(11)
    source = build_model(tiny_config()).eval()
    with torch.no_grad():
        for name, parameter in source.named_parameters():
            if "lora_B" in name:
                parameter.normal_()
    target = build_model(tiny_config(), backbone_state_dict=source.backbone_state_dict()).eval()
    target.load_trainable_state_dict(source.trainable_state_dict())
    with torch.no_grad():
        expected, _ = source.encode_image(pixels)
        actual, _ = target.encode_image(pixels)
    torch.testing.assert_close(actual, expected)


def test_load_trainable_state_reports_key_problems(lora_model):
    state = lora_model.trainable_state_dict()
    del state["classifier_text.bias"]
    state["extra.weight"] = torch.zeros(1)
    state["mil_head.projector.0.weight"] = torch.zeros(3, 3)
    with pytest.raises(BundleError) as raised:
        lora_model.load_trainable_state_dict(state)
    message = str(raised.value)
    assert "missing keys: classifier_text.bias" in message
    assert "unexpected keys: extra.weight" in message
    assert "mil_head.projector.0.weight (stored (3, 3), model (256, 512))" in message


def test_backbone_state_dict_is_open_clip_layout(lora_model):
    backbone = lora_model.backbone_state_dict()
    reference = tiny_open_clip_model().state_dict()
    assert set(backbone) == set(reference) - {"logit_scale"}
    assert backbone["visual.transformer.resblocks.0.attn.in_proj_weight"].shape == (192, 64)
    assert not any("lora" in key for key in backbone)

    rebuilt = build_model(tiny_config(), backbone_state_dict=backbone)
    for key, tensor in rebuilt.backbone_state_dict().items():
        assert torch.equal(tensor, backbone[key]), key


def test_pack_attention_state_dict_orders_q_k_v():
    state = {
        "blk.attn.q_proj.weight": torch.full((2, 2), 1.0),
        "blk.attn.k_proj.base_layer.weight": torch.full((2, 2), 2.0),
        "blk.attn.v_proj.weight": torch.full((2, 2), 3.0),
        "blk.attn.q_proj.lora_A.default.weight": torch.zeros(1, 2),
        "other": torch.ones(1),
    }
    with pytest.raises(KeyError, match="in_proj_bias: missing"):
        pack_attention_state_dict({**state, "blk.attn.q_proj.bias": torch.zeros(2)})
    packed = pack_attention_state_dict(state)
    assert set(packed) == {"blk.attn.in_proj_weight", "other"}
    assert packed["blk.attn.in_proj_weight"][:, 0].tolist() == [1, 1, 2, 2, 3, 3]


# Backbone weight files.


def _openai_layout_state(model: torch.nn.Module) -> dict[str, torch.Tensor]:
    # OpenAI's checkpoints keep the CLIP module's key names, store most weights in float16
    # (open_clip's convert_weights_to_fp16 mirrors that) and add three integer entries.
    open_clip.model.convert_weights_to_fp16(model)
    state = {key: value.clone() for key, value in model.state_dict().items()}
    state["input_resolution"] = torch.tensor(224)
    state["context_length"] = torch.tensor(77)
    state["vocab_size"] = torch.tensor(49408)
    return state


def test_weights_path_loads_openai_layout_file(tmp_path):
    source = tiny_open_clip_model(seed=12)
    state = _openai_layout_state(source)
    assert state["visual.conv1.weight"].dtype == torch.float16
    path = tmp_path / "tiny-openai.pt"
    torch.save(state, path)

    model = build_model(tiny_config(weights_path=str(path)))
    backbone = model.backbone_state_dict()
    for key, tensor in state.items():
        if key in ("input_resolution", "context_length", "vocab_size", "logit_scale"):
            continue
        assert backbone[key].dtype == torch.float32, key
        assert torch.equal(backbone[key], tensor.float()), key


def test_weights_path_loads_safetensors_and_torchscript(tmp_path):
    from safetensors.torch import save_file

    source = tiny_open_clip_model(seed=13)
    expected = {key: value.clone() for key, value in source.state_dict().items()}

    safetensors_path = tmp_path / "tiny.safetensors"
    save_file({key: value.contiguous() for key, value in expected.items()}, str(safetensors_path))
    traced_path = tmp_path / "tiny-traced.pt"
    traced = torch.jit.trace_module(source, {"encode_image": (torch.zeros(1, 3, 224, 224),)})
    torch.jit.save(traced, str(traced_path))

    for path in (safetensors_path, traced_path):
        weights = read_backbone_weights(path)
        # TorchScript archives also store open_clip's non-persistent causal mask buffer.
        assert set(weights) - {"attn_mask"} == set(expected), path.name
        model = build_model(tiny_config(weights_path=str(path)))
        backbone = model.backbone_state_dict()
        assert torch.equal(backbone["visual.transformer.resblocks.1.attn.in_proj_weight"],
                           expected["visual.transformer.resblocks.1.attn.in_proj_weight"]), path.name
        assert torch.equal(backbone["token_embedding.weight"], expected["token_embedding.weight"]), path.name


def test_weights_file_for_other_architecture_is_rejected(tmp_path):
    state = tiny_open_clip_model().state_dict()
    state["visual.proj"] = torch.zeros(64, 256)
    del state["ln_final.bias"]
    path = tmp_path / "wrong.pt"
    torch.save(state, path)
    with pytest.raises(BundleError) as raised:
        build_model(tiny_config(weights_path=str(path)))
    assert "missing keys: ln_final.bias" in str(raised.value)
    assert "visual.proj (stored (64, 256), model (64, 512))" in str(raised.value)


def test_weights_file_with_pickled_object_is_rejected(tmp_path):
    path = tmp_path / "object.pt"
    torch.save({"weights": torch.zeros(3), "note": NotAWeight()}, path)
    with pytest.raises(BundleError, match="Cannot read backbone weights"):
        read_backbone_weights(path)
    with pytest.raises(BundleError, match="not found"):
        read_backbone_weights(tmp_path / "absent.pt")


def test_uncached_pretrained_weights_raise_with_fix(tmp_path, monkeypatch):
    import huggingface_hub.constants

    # An empty Hugging Face cache and home folder stand in for a machine without the weights.
    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_CACHE", str(tmp_path / "hub"))
    monkeypatch.setenv("HOME", str(tmp_path))
    with pytest.raises(BundleError, match="not in the local open_clip or Hugging Face cache.*weights_path"):
        build_model(ModelConfig())
