"""Zero-shot semantic report: radiological findings scored by image-text similarity.

Each feature has one prompt per value. A nodule's normalised image embedding is compared
with every prompt's normalised text embedding (cosine similarity), and a plain softmax
over the feature's prompts gives the probabilities. Needs torch; no Qt or Slicer imports.
"""

from __future__ import annotations

import copy
import logging
from typing import TYPE_CHECKING, Any

from .errors import InputError

if TYPE_CHECKING:
    import torch

logger = logging.getLogger(__name__)

PROMPT_SET_VERSION = 1
CATEGORICAL_TEMPLATE = "This nodule {feature} is {value}."
BINARY_PRESENT_TEMPLATE = "There is {feature}."
BINARY_ABSENT_PROMPT = "No findings."
BINARY_VALUES = ("present", "absent")

CATEGORICAL_FEATURES: dict[str, tuple[str, ...]] = {
    "margin": ("smooth", "lobulated", "spiculated", "ill-defined", "notched"),
    "consistency": ("solid", "part-solid", "pure ground glass", "semi-consolidation", "peri-cystic"),
    "shape": ("irregular", "ovoid", "polygonal", "round"),
    "margin conspicuity": ("well marginated", "poorly marginated"),
}

BINARY_FEATURES: tuple[str, ...] = (
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
)

Report = dict[str, dict[str, Any]]


def build_prompt_set(
    categorical: dict[str, tuple[str, ...] | list[str]],
    binary: tuple[str, ...] | list[str],
) -> dict[str, Any]:
    """Build a prompt set from feature names and values with the published prompt templates.

    Categorical features get "This nodule <feature> is <value>." per value; binary features
    get "There is <feature>." (present) against "No findings." (absent).
    """
    features: list[dict[str, Any]] = []
    for name, values in categorical.items():
        features.append({
            "name": name,
            "kind": "categorical",
            "values": list(values),
            "prompts": [CATEGORICAL_TEMPLATE.format(feature=name, value=value) for value in values],
        })
    for name in binary:
        features.append({
            "name": name,
            "kind": "binary",
            "values": list(BINARY_VALUES),
            "prompts": [BINARY_PRESENT_TEMPLATE.format(feature=name), BINARY_ABSENT_PROMPT],
        })
    return validate_prompt_set({"version": PROMPT_SET_VERSION, "features": features})


def validate_prompt_set(prompt_set: Any) -> dict[str, Any]:
    """Check the structure of a prompt set and return it unchanged; raise InputError naming the fault.

    Expected: {"version": 1, "features": [{"name", "kind" ("categorical" or "binary"),
    "values", "prompts"}, ...]} with unique feature names, at least two values per feature,
    one non-empty prompt string per value and no repeated value within a feature.
    """
    if not isinstance(prompt_set, dict):
        raise InputError(f"zero-shot prompt set must be a JSON object, got {type(prompt_set).__name__}")
    if prompt_set.get("version") != PROMPT_SET_VERSION:
        raise InputError(
            f"zero-shot prompt set version {prompt_set.get('version')!r} is not supported; "
            f"expected {PROMPT_SET_VERSION}"
        )

    features = prompt_set.get("features")
    if not isinstance(features, list) or not features:
        raise InputError("zero-shot prompt set needs a non-empty list under 'features'")

    seen: set[str] = set()
    for position, feature in enumerate(features):
        _validate_feature(feature, position)
        if feature["name"] in seen:
            raise InputError(f"zero-shot prompt set lists feature {feature['name']!r} twice")
        seen.add(feature["name"])
    return prompt_set


def _validate_feature(feature: Any, position: int) -> None:
    if not isinstance(feature, dict):
        raise InputError(f"zero-shot feature #{position} must be a JSON object, got {feature!r}")

    name = feature.get("name")
    if not isinstance(name, str) or not name:
        raise InputError(f"zero-shot feature #{position} has no 'name' string")
    if feature.get("kind") not in ("categorical", "binary"):
        raise InputError(
            f"zero-shot feature {name!r} has kind {feature.get('kind')!r}; use 'categorical' or 'binary'"
        )

    values = feature.get("values")
    prompts = feature.get("prompts")
    if not isinstance(values, list) or len(values) < 2 or not all(isinstance(v, str) and v for v in values):
        raise InputError(f"zero-shot feature {name!r} needs a list of at least two value names")
    if len(set(values)) != len(values):
        raise InputError(f"zero-shot feature {name!r} repeats a value in {values!r}")
    if not isinstance(prompts, list) or len(prompts) != len(values):
        raise InputError(
            f"zero-shot feature {name!r} has {len(values)} values but "
            f"{len(prompts) if isinstance(prompts, list) else 'no'} prompts; give one prompt per value"
        )
    if not all(isinstance(prompt, str) and prompt.strip() for prompt in prompts):
        raise InputError(f"zero-shot feature {name!r} has an empty or non-text prompt")


DEFAULT_PROMPT_SET: dict[str, Any] = build_prompt_set(CATEGORICAL_FEATURES, BINARY_FEATURES)


def default_prompt_set() -> dict[str, Any]:
    """Return a deep copy of DEFAULT_PROMPT_SET that the caller may change."""
    return copy.deepcopy(DEFAULT_PROMPT_SET)


def encode_prompt_set(model: Any, prompt_set: dict[str, Any]) -> dict[str, "torch.Tensor"]:
    """Encode every prompt with the model's text branch; return {feature: (values, D) unit vectors}.

    Each distinct prompt is encoded once (the binary features share "No findings.").
    Runs without gradients on the device of the model's parameters. Call it once per
    fold and pass the result to zero_shot_report as text_cache. Raises InputError for a
    vision-only model, which has no text branch.
    """
    import torch

    validate_prompt_set(prompt_set)
    _check_has_text_branch(model)

    unique_prompts: list[str] = []
    for feature in prompt_set["features"]:
        for prompt in feature["prompts"]:
            if prompt not in unique_prompts:
                unique_prompts.append(prompt)

    device = next(model.parameters()).device
    with torch.no_grad():
        tokens = model.tokenize(unique_prompts).to(device)
        embeddings = torch.nn.functional.normalize(model.encode_text(tokens).float(), dim=-1)

    row_of_prompt = {prompt: row for row, prompt in enumerate(unique_prompts)}
    encoded = {}
    for feature in prompt_set["features"]:
        rows = [row_of_prompt[prompt] for prompt in feature["prompts"]]
        encoded[feature["name"]] = embeddings[rows]
    logger.debug("Encoded %d distinct zero-shot prompts for %d features", len(unique_prompts), len(encoded))
    return encoded


def zero_shot_report(
    model: Any,
    image_embedding_normalized: "torch.Tensor",
    prompt_set: dict[str, Any],
    text_cache: dict[str, "torch.Tensor"] | None = None,
) -> list[Report]:
    """Score every feature of the prompt set for each nodule of a batch.

    image_embedding_normalized is (B, D) and L2-normalised. The result has one entry per
    nodule: {feature: {"most_likely": value, "probabilities": {value: p}}}, where p is the
    softmax over the feature's prompts of the cosine similarities (no temperature).
    text_cache is the output of encode_prompt_set for this model; without it the prompts
    are encoded here.
    """
    import torch

    validate_prompt_set(prompt_set)
    if image_embedding_normalized.ndim != 2:
        raise InputError(
            f"image embedding must be (batch, dim), got shape {tuple(image_embedding_normalized.shape)}"
        )
    if text_cache is None:
        text_cache = encode_prompt_set(model, prompt_set)

    images = torch.nn.functional.normalize(image_embedding_normalized.detach().float(), dim=-1)
    reports: list[Report] = [{} for _ in range(images.shape[0])]
    for feature in prompt_set["features"]:
        name = feature["name"]
        texts = text_cache.get(name)
        if texts is None or texts.shape[0] != len(feature["values"]):
            raise InputError(
                f"text cache has no embeddings for zero-shot feature {name!r} with "
                f"{len(feature['values'])} values; rebuild it with encode_prompt_set for this prompt set"
            )

        # The softmax runs in float64 so that each feature's probabilities sum to 1 within 1e-12.
        similarities = images @ texts.to(images.device, images.dtype).T
        probabilities = torch.softmax(similarities.double(), dim=-1).cpu().numpy()
        for index, row in enumerate(probabilities):
            reports[index][name] = _feature_entry(feature["values"], row.tolist())
    return reports


def average_reports(reports: list[list[Report]]) -> list[Report]:
    """Average per-fold zero-shot reports into one ensemble report per nodule.

    reports[fold][nodule] is a zero_shot_report entry. Probabilities are averaged over folds
    and most_likely is the argmax of the average. Raises InputError when folds disagree on
    the nodule count, features or values.
    """
    if not reports:
        raise InputError("no fold reports to average; pass one zero-shot report list per fold")

    nodule_count = len(reports[0])
    for fold, fold_reports in enumerate(reports):
        if len(fold_reports) != nodule_count:
            raise InputError(
                f"fold {fold} has {len(fold_reports)} nodule reports, fold 0 has {nodule_count}; "
                "run every fold on the same nodules"
            )

    averaged: list[Report] = []
    for nodule in range(nodule_count):
        first = reports[0][nodule]
        entry: Report = {}
        for name, feature_report in first.items():
            values = list(feature_report["probabilities"])
            totals = [0.0] * len(values)
            for fold, fold_reports in enumerate(reports):
                other = fold_reports[nodule].get(name)
                if other is None or list(other["probabilities"]) != values:
                    raise InputError(
                        f"fold {fold} has no matching values for zero-shot feature {name!r} of "
                        f"nodule {nodule}; use the same prompt set for every fold"
                    )
                for position, value in enumerate(values):
                    totals[position] += float(other["probabilities"][value])
            entry[name] = _feature_entry(values, [total / len(reports) for total in totals])
        averaged.append(entry)
    return averaged


def _feature_entry(values: list[str], probabilities: list[float]) -> dict[str, Any]:
    best = max(range(len(values)), key=lambda position: probabilities[position])
    return {
        "most_likely": values[best],
        "probabilities": {value: float(p) for value, p in zip(values, probabilities)},
    }


def _check_has_text_branch(model: Any) -> None:
    config = getattr(model, "config", None)
    if getattr(config, "vision_only", False):
        raise InputError(
            "this model is vision-only and has no text branch, so it cannot produce a zero-shot "
            "semantic report; use a model trained with both towers"
        )
