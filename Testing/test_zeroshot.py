"""Tests of the zero-shot semantic report: prompt texts, probabilities and fold averaging.

Uses the randomly initialised "tiny-vit" backbone (real open_clip tokenizer and text tower),
so the probabilities are meaningless but their arithmetic is checked exactly.
"""

from __future__ import annotations

import copy

import pytest
import torch

from clipnodule.errors import InputError
from clipnodule.model import ModelConfig, build_model
from clipnodule.zeroshot import (
    DEFAULT_PROMPT_SET,
    average_reports,
    default_prompt_set,
    encode_prompt_set,
    validate_prompt_set,
    zero_shot_report,
)

EXPECTED_CATEGORICAL_PROMPTS = {
    "margin": [
        "This nodule margin is smooth.",
        "This nodule margin is lobulated.",
        "This nodule margin is spiculated.",
        "This nodule margin is ill-defined.",
        "This nodule margin is notched.",
    ],
    "consistency": [
        "This nodule consistency is solid.",
        "This nodule consistency is part-solid.",
        "This nodule consistency is pure ground glass.",
        "This nodule consistency is semi-consolidation.",
        "This nodule consistency is peri-cystic.",
    ],
    "shape": [
        "This nodule shape is irregular.",
        "This nodule shape is ovoid.",
        "This nodule shape is polygonal.",
        "This nodule shape is round.",
    ],
    "margin conspicuity": [
        "This nodule margin conspicuity is well marginated.",
        "This nodule margin conspicuity is poorly marginated.",
    ],
}
EXPECTED_BINARY_FEATURES = [
    "pleural attachment",
    "pleural retraction",
    "vascular convergence",
    "paracicatricial emphysema",
    "cyst-like spaces",
    "eccentric calcification",
    "septal stretching",
    "reticulation",
    "necrosis",
    "cavitation",
    "intra-nodular bronchiectasis",
    "airway cutoff",
]


@pytest.fixture(scope="module")
def model():
    torch.manual_seed(0)
    built = build_model(ModelConfig(backbone="tiny-vit", pretrained=None))
    return built.eval()


@pytest.fixture(scope="module")
def image_embedding() -> torch.Tensor:
    generator = torch.Generator().manual_seed(3)
    return torch.nn.functional.normalize(torch.randn((2, 256), generator=generator), dim=-1)


def test_default_prompts_are_published_templates():
    features = {feature["name"]: feature for feature in DEFAULT_PROMPT_SET["features"]}

    assert DEFAULT_PROMPT_SET["version"] == 1
    assert list(features) == [*EXPECTED_CATEGORICAL_PROMPTS, *EXPECTED_BINARY_FEATURES]
    for name, prompts in EXPECTED_CATEGORICAL_PROMPTS.items():
        assert features[name]["kind"] == "categorical"
        assert features[name]["prompts"] == prompts
    assert features["margin"]["values"] == ["smooth", "lobulated", "spiculated", "ill-defined", "notched"]
    for name in EXPECTED_BINARY_FEATURES:
        assert features[name]["kind"] == "binary"
        assert features[name]["values"] == ["present", "absent"]
        assert features[name]["prompts"] == [f"There is {name}.", "No findings."]
    assert features["cyst-like spaces"]["prompts"][0] == "There is cyst-like spaces."


def test_encode_prompt_set_shapes_and_norms(model):
    encoded = encode_prompt_set(model, DEFAULT_PROMPT_SET)

    assert list(encoded) == [feature["name"] for feature in DEFAULT_PROMPT_SET["features"]]
    assert encoded["consistency"].shape == (5, 256)
    assert encoded["necrosis"].shape == (2, 256)
    for embeddings in encoded.values():
        torch.testing.assert_close(embeddings.norm(dim=-1), torch.ones(embeddings.shape[0]))
    # "No findings." is encoded once and shared by every binary feature.
    torch.testing.assert_close(encoded["necrosis"][1], encoded["cavitation"][1], rtol=0, atol=0)
    assert not torch.allclose(encoded["necrosis"][0], encoded["cavitation"][0])


def test_encode_prompt_set_matches_model_text_branch(model):
    encoded = encode_prompt_set(model, DEFAULT_PROMPT_SET)

    with torch.no_grad():
        expected = model.text_embeddings_normalized(EXPECTED_CATEGORICAL_PROMPTS["shape"])
    torch.testing.assert_close(encoded["shape"], expected, rtol=0, atol=1e-6)


def test_report_probabilities(model, image_embedding):
    reports = zero_shot_report(model, image_embedding, DEFAULT_PROMPT_SET)

    assert len(reports) == 2
    for report in reports:
        assert list(report) == [feature["name"] for feature in DEFAULT_PROMPT_SET["features"]]
        for feature in DEFAULT_PROMPT_SET["features"]:
            entry = report[feature["name"]]
            probabilities = entry["probabilities"]
            assert list(probabilities) == feature["values"]
            assert sum(probabilities.values()) == pytest.approx(1.0, abs=1e-12)
            assert all(0.0 < p < 1.0 for p in probabilities.values())
            assert entry["most_likely"] == max(probabilities, key=probabilities.get)


def test_report_is_softmax_of_cosine(model, image_embedding):
    reports = zero_shot_report(model, image_embedding, DEFAULT_PROMPT_SET)

    with torch.no_grad():
        texts = model.text_embeddings_normalized(EXPECTED_CATEGORICAL_PROMPTS["margin"])
    expected = torch.softmax(image_embedding @ texts.T, dim=-1)
    for nodule in range(2):
        actual = list(reports[nodule]["margin"]["probabilities"].values())
        torch.testing.assert_close(torch.tensor(actual, dtype=torch.float32), expected[nodule], rtol=0, atol=1e-6)


def test_report_with_text_cache_matches(model, image_embedding):
    cache = encode_prompt_set(model, DEFAULT_PROMPT_SET)

    cached = zero_shot_report(model, image_embedding, DEFAULT_PROMPT_SET, text_cache=cache)
    uncached = zero_shot_report(model, image_embedding, DEFAULT_PROMPT_SET)

    assert cached == uncached


def test_report_rejects_stale_cache(model, image_embedding):
    cache = encode_prompt_set(model, DEFAULT_PROMPT_SET)
    cache.pop("shape")

    with pytest.raises(InputError, match="no embeddings for zero-shot feature 'shape'"):
        zero_shot_report(model, image_embedding, DEFAULT_PROMPT_SET, text_cache=cache)


def test_report_rejects_wrong_embedding_shape(model):
    with pytest.raises(InputError, match=r"\(batch, dim\), got shape \(256,\)"):
        zero_shot_report(model, torch.zeros(256), DEFAULT_PROMPT_SET)


def test_vision_only_model_rejected():
    torch.manual_seed(0)
    vision_only = build_model(ModelConfig(backbone="tiny-vit", pretrained=None, vision_only=True))

    with pytest.raises(InputError, match="vision-only and has no text branch"):
        encode_prompt_set(vision_only, DEFAULT_PROMPT_SET)


def test_average_reports():
    fold_a = [{"necrosis": {"most_likely": "present", "probabilities": {"present": 0.6, "absent": 0.4}}}]
    fold_b = [{"necrosis": {"most_likely": "absent", "probabilities": {"present": 0.2, "absent": 0.8}}}]

    averaged = average_reports([fold_a, fold_b])

    assert averaged[0]["necrosis"]["probabilities"] == pytest.approx({"present": 0.4, "absent": 0.6})
    assert averaged[0]["necrosis"]["most_likely"] == "absent"


def test_average_reports_of_model_folds(model, image_embedding):
    report = zero_shot_report(model, image_embedding, DEFAULT_PROMPT_SET)
    shifted = zero_shot_report(model, -image_embedding, DEFAULT_PROMPT_SET)

    averaged = average_reports([report, shifted])

    assert len(averaged) == 2
    for nodule in range(2):
        for name, entry in averaged[nodule].items():
            for value, probability in entry["probabilities"].items():
                expected = (report[nodule][name]["probabilities"][value] + shifted[nodule][name]["probabilities"][value]) / 2
                assert probability == pytest.approx(expected, abs=1e-12)
            assert sum(entry["probabilities"].values()) == pytest.approx(1.0, abs=1e-12)


def test_average_reports_rejects_mismatch():
    fold_a = [{"necrosis": {"most_likely": "present", "probabilities": {"present": 0.6, "absent": 0.4}}}]

    with pytest.raises(InputError, match="fold 1 has 2 nodule reports, fold 0 has 1"):
        average_reports([fold_a, fold_a * 2])
    with pytest.raises(InputError, match="fold 1 has no matching values for zero-shot feature 'necrosis'"):
        average_reports([fold_a, [{"cavitation": fold_a[0]["necrosis"]}]])
    with pytest.raises(InputError, match="no fold reports"):
        average_reports([])


@pytest.mark.parametrize(
    ("change", "message"),
    [
        (lambda p: p.update(version=2), "version 2 is not supported"),
        (lambda p: p.update(features=[]), "non-empty list under 'features'"),
        (lambda p: p["features"][0].update(kind="ordinal"), "kind 'ordinal'"),
        (lambda p: p["features"][0]["prompts"].pop(), "has 5 values but 4 prompts"),
        (lambda p: p["features"][1].update(name="margin"), "lists feature 'margin' twice"),
        (lambda p: p["features"][2]["values"].__setitem__(1, "irregular"), "repeats a value"),
        (lambda p: p["features"][4]["prompts"].__setitem__(0, " "), "empty or non-text prompt"),
    ],
)
def test_validate_prompt_set_rejects(change, message):
    prompt_set = default_prompt_set()
    change(prompt_set)

    with pytest.raises(InputError, match=message):
        validate_prompt_set(prompt_set)


def test_default_prompt_set_copy_is_independent():
    prompt_set = default_prompt_set()
    prompt_set["features"][0]["values"].append("notched")

    assert DEFAULT_PROMPT_SET["features"][0]["values"] == ["smooth", "lobulated", "spiculated", "ill-defined", "notched"]
    assert copy.deepcopy(DEFAULT_PROMPT_SET) == default_prompt_set()
