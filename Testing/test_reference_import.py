"""Tests of importing the published CLIP_nodule checkpoints: output parity, key checks and pickle safety.

The parity fixture holds a tiny reference model (two layers, width 64) saved in the
authors' checkpoint layout, with the reference code's outputs for fixed inputs.
"""

from __future__ import annotations

import math
import pickle
import shutil
from pathlib import Path

import joblib
import numpy as np
import pytest
import torch
import torch.nn.functional as F
from betacal import BetaCalibration as BetacalCalibration

from clipnodule.cli import main as cli_main
from clipnodule.errors import BundleError
from clipnodule.reference_import import (
    convert_reference_checkpoints,
    read_reference_args,
    read_reference_checkpoint,
    read_trusted_calibrator,
)

CLIP_MEAN = torch.tensor((0.48145466, 0.4578275, 0.40821073)).view(1, 1, 3, 1, 1)
CLIP_STD = torch.tensor((0.26862954, 0.26130258, 0.27577711)).view(1, 1, 3, 1, 1)
RELATIVE_TOLERANCE = 1e-4


def make_checkpoint_dir(parity: Path, folder: Path, state: dict | None = None) -> Path:
    """Lay out `folder` as the authors' release: args.txt and fold_0/best_both.pt."""
    (folder / "fold_0").mkdir(parents=True)
    shutil.copy(parity / "args.txt", folder / "args.txt")
    if state is None:
        (folder / "fold_0" / "best_both.pt").symlink_to(parity / "checkpoint_fold0.pt")
    else:
        torch.save({"model": state}, folder / "fold_0" / "best_both.pt")
    return folder


@pytest.fixture(scope="module")
def parity_dir(reference_fixtures: Path) -> Path:
    return reference_fixtures / "model_parity"


@pytest.fixture(scope="module")
def expected(parity_dir: Path) -> dict[str, np.ndarray]:
    with np.load(parity_dir / "outputs.npz") as outputs:
        return {key: outputs[key] for key in outputs.files}


@pytest.fixture(scope="module")
def checkpoint_dir(parity_dir: Path, tmp_path_factory) -> Path:
    return make_checkpoint_dir(parity_dir, tmp_path_factory.mktemp("reference"))


@pytest.fixture(scope="module")
def imported(checkpoint_dir: Path):
    return convert_reference_checkpoints(checkpoint_dir)


@pytest.fixture(scope="module")
def fold_model(imported):
    return imported.build_fold_model(0)


@pytest.fixture(scope="module")
def pixels(reference_fixtures: Path) -> torch.Tensor:
    with np.load(reference_fixtures / "planes_from_crop.npz") as first, \
            np.load(reference_fixtures / "crop_from_ct.npz") as second:
        planes = np.stack([first["planes"], second["caseA_n0_planes"]])
    planes = torch.from_numpy(planes).float().unsqueeze(2).expand(-1, -1, 3, -1, -1)
    return (planes - CLIP_MEAN) / CLIP_STD


@pytest.fixture(scope="module")
def outputs(fold_model, pixels, parity_dir: Path) -> dict[str, torch.Tensor]:
    sentences = (parity_dir / "sentences.txt").read_text(encoding="utf-8").splitlines()
    tokens = fold_model.tokenize(sentences)
    with torch.no_grad():
        image, attention = fold_model.encode_image(pixels)
        image_norm = F.normalize(image, dim=-1)
        logits_image = fold_model.classifier_image(image_norm)
        text = fold_model.encode_text(tokens)
        text_norm = F.normalize(text, dim=-1)
        logits_text = fold_model.classifier_text(text_norm)
        return {
            "img_embed": image,
            "img_embed_norm": image_norm,
            "mil_attention": attention,
            "logits_img": logits_image,
            "probs_img": logits_image.softmax(dim=-1),
            "text_embed": text,
            "text_embed_norm": text_norm,
            "logits_text": logits_text,
            "probs_text": logits_text.softmax(dim=-1),
            "logits_per_image": fold_model.compute_logits(image_norm, text_norm),
            "logit_scale": fold_model.logit_scale.detach(),
        }


def assert_relative_close(actual: np.ndarray, reference: np.ndarray, name: str) -> None:
    assert actual.shape == reference.shape, name
    error = np.abs(actual.astype(np.float64) - reference).max() / max(np.abs(reference).max(), 1e-12)
    assert error <= RELATIVE_TOLERANCE, f"{name}: relative error {error:.2e}"


# Parity with the reference outputs.

PARITY_KEYS = (
    "img_embed", "img_embed_norm", "mil_attention", "logits_img", "probs_img", "text_embed",
    "text_embed_norm", "logits_text", "probs_text", "logits_per_image", "logit_scale",
)


@pytest.mark.parametrize("key", PARITY_KEYS)
def test_output_matches_reference(outputs, expected, key):
    assert_relative_close(outputs[key].numpy(), expected[key], key)


def test_input_construction_matches_reference(pixels, expected):
    sums = pixels.double().sum(dim=(2, 3, 4)).numpy()
    assert_relative_close(sums, expected["pixel_values_sum"], "pixel_values_sum")


def test_tokens_match_reference(fold_model, parity_dir, expected):
    sentences = (parity_dir / "sentences.txt").read_text(encoding="utf-8").splitlines()
    assert len(sentences) == 4
    assert np.array_equal(fold_model.tokenize(sentences).numpy(), expected["tokens"])


@pytest.mark.parametrize("tower, prefix", [("text", "clip.transformer"), ("vision", "clip.visual.transformer")])
def test_recovered_base_weight_and_delta(fold_model, expected, tower, prefix):
    layer = fold_model.get_submodule(f"{prefix}.resblocks.0.attn.q_proj")
    base = layer.base_layer.weight.detach().numpy()
    delta = (layer.lora_B["default"].weight @ layer.lora_A["default"].weight).detach().numpy() / math.sqrt(2)
    np.testing.assert_allclose(base, expected[f"lora_{tower}_block0_q_base_weight"], rtol=0, atol=1e-6)
    np.testing.assert_allclose(delta, expected[f"lora_{tower}_block0_q_delta"], rtol=0, atol=1e-6)


def test_evaluate_py_fold0_quirk_is_double_delta(imported, pixels, expected):
    # The reference evaluate.py merges the LoRA delta a second time for fold 0, giving
    # W0 + 2 * delta. Adding delta to the base weight (the adapter adds the other) reproduces it.
    model = imported.build_fold_model(0)
    with torch.no_grad():
        for name, module in model.named_modules():
            if name.endswith(("q_proj", "k_proj", "v_proj")) and hasattr(module, "base_layer"):
                delta = module.lora_B["default"].weight @ module.lora_A["default"].weight
                module.base_layer.weight += delta / math.sqrt(2)
        embedding, _ = model.encode_image(pixels)
        logits = model.classifier_image(F.normalize(embedding, dim=-1))
    assert_relative_close(logits.numpy(), expected["evalpy_fold0_logits_img"], "evalpy_fold0_logits_img")
    assert np.abs(expected["evalpy_fold0_logits_img"] - expected["logits_img"]).max() > 1e-3


def test_import_config_and_extras(imported):
    assert imported.config.backbone == "tiny-vit"
    assert imported.config.tuning == "lora"
    assert imported.config.lora_rank == 2
    assert imported.config.lora_alpha == 1.0
    assert imported.config.lora_dropout == 0.25
    assert imported.config.init_temperature == 0.07
    assert imported.folds == [0]
    assert imported.calibrations == [None]
    assert imported.manifest_extras["reference_model_name"] == "openai_ViT-B/32"
    assert imported.manifest_extras["architecture"]["vision_cfg"]["width"] == 64
    assert "visual.transformer.resblocks.0.attn.in_proj_weight" in imported.backbone_state_dict


def test_cli_import_writes_loadable_bundle(checkpoint_dir, tmp_path, pixels, expected, capsys):
    from clipnodule.bundle import load_bundle

    output = tmp_path / "bundle"
    status = cli_main(["import-reference", "--checkpoint-dir", str(checkpoint_dir), "--output", str(output)])
    assert status == 0
    assert "without calibration" in capsys.readouterr().out
    assert not any(path.suffix in (".pt", ".pkl") for path in output.iterdir())

    bundle = load_bundle(output)
    with torch.no_grad():
        probabilities = bundle.folds[0].model.image_probabilities(pixels)["probability"]
    assert_relative_close(probabilities.numpy(), expected["probs_img"][:, 1], "bundle probs_img")
    assert bundle.manifest["reference_import"]["calibrators_imported"] is False


# Key checks.


@pytest.fixture(scope="module")
def reference_state(parity_dir: Path) -> dict[str, torch.Tensor]:
    return read_reference_checkpoint(parity_dir / "checkpoint_fold0.pt")


def test_missing_key_is_listed(parity_dir, reference_state, tmp_path):
    state = dict(reference_state)
    del state["transformer.resblocks.1.attn.k_proj.w_lora_B"]
    folder = make_checkpoint_dir(parity_dir, tmp_path / "ref", state)
    with pytest.raises(BundleError, match=r"missing keys: transformer\.resblocks\.1\.attn\.k_proj\.w_lora_B"):
        convert_reference_checkpoints(folder)


def test_unexpected_key_is_listed(parity_dir, reference_state, tmp_path):
    state = {**reference_state, "vision_model.extra_token": torch.zeros(64)}
    folder = make_checkpoint_dir(parity_dir, tmp_path / "ref", state)
    with pytest.raises(BundleError, match=r"unexpected keys: vision_model\.extra_token"):
        convert_reference_checkpoints(folder)


def test_misshaped_key_is_listed(parity_dir, reference_state, tmp_path):
    state = {**reference_state, "semantic_projection.fc.weight": torch.zeros(256, 128)}
    folder = make_checkpoint_dir(parity_dir, tmp_path / "ref", state)
    with pytest.raises(BundleError, match=r"semantic_projection\.fc\.weight \(stored \(256, 128\), expected \(256, 256\)\)"):
        convert_reference_checkpoints(folder)


def test_probe_tuned_checkpoint_imports(parity_dir, reference_state, tmp_path, fold_model, pixels):
    # A probe-tuned ('pt') checkpoint keeps OpenAI's packed attention. Packing the merged
    # q/k/v weights of the LoRA fixture gives one whose outputs equal the LoRA model's.
    state = {}
    for key, tensor in reference_state.items():
        if ".attn.q_proj." in key or ".attn.k_proj." in key or ".attn.v_proj." in key:
            continue
        state[key.replace(".attn.proj.", ".attn.out_proj.")] = tensor
    for key in [key for key in reference_state if key.endswith(".attn.q_proj.weight")]:
        block = key.removesuffix(".q_proj.weight")
        for kind in ("weight", "bias"):
            parts = [reference_state[f"{block}.{name}.{kind}"] for name in ("q_proj", "k_proj", "v_proj")]
            state[f"{block}.in_proj_{kind}"] = torch.cat(parts)
    folder = make_checkpoint_dir(parity_dir, tmp_path / "ref", state)
    args = (folder / "args.txt").read_text(encoding="utf-8").replace("tuning='lora'", "tuning='pt'")
    (folder / "args.txt").write_text(args, encoding="utf-8")

    result = convert_reference_checkpoints(folder)
    assert result.config.tuning == "probe"
    assert not any("lora" in key for key in result.fold_state_dicts[0])
    probe_model = result.build_fold_model(0)
    with torch.no_grad():
        probe_embedding, _ = probe_model.encode_image(pixels)
        lora_embedding, _ = fold_model.encode_image(pixels)
    torch.testing.assert_close(probe_embedding, lora_embedding, rtol=1e-4, atol=1e-6)


def test_checkpoint_with_python_objects_is_not_unpickled(parity_dir, tmp_path):
    folder = make_checkpoint_dir(parity_dir, tmp_path / "ref", {"w": torch.zeros(1)})
    marker = tmp_path / "ran"
    with open(folder / "fold_0" / "best_both.pt", "wb") as handle:
        pickle.dump(RunsCommand(marker), handle)
    with pytest.raises(BundleError, match="tensor-only checkpoint"):
        convert_reference_checkpoints(folder)
    assert not marker.exists()


def test_args_are_parsed_without_evaluation(tmp_path):
    marker = tmp_path / "ran"
    path = tmp_path / "args.txt"
    path.write_text(
        f"Namespace(model='openai_ViT-B/32', r=2, params=['q', 'k', 'v'], "
        f"hook=__import__('os').system('touch {marker}'))",
        encoding="utf-8",
    )
    arguments = read_reference_args(path)
    assert arguments["model"] == "openai_ViT-B/32"
    assert arguments["r"] == 2
    assert arguments["params"] == ["q", "k", "v"]
    assert arguments["hook"].startswith("__import__('os').system(")
    assert not marker.exists()


def test_args_without_namespace_rejected(tmp_path):
    path = tmp_path / "args.txt"
    path.write_text("print('hello')", encoding="utf-8")
    with pytest.raises(BundleError, match="does not contain Namespace"):
        read_reference_args(path)


# Calibrators.


class RunsCommand:
    """Pickles into a call of os.system, as a malicious calibrator file would."""

    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self):
        import os

        return (os.system, (f"touch {self.marker}",))


def test_malicious_calibrator_is_refused(checkpoint_dir, tmp_path):
    folder = tmp_path / "ref"
    shutil.copytree(checkpoint_dir, folder, symlinks=True)
    marker = tmp_path / "ran"
    joblib.dump(RunsCommand(marker), folder / "fold_0" / "cal_0.pkl")

    with pytest.raises(BundleError, match=r"global (posix|nt)\.system is not allowed"):
        convert_reference_checkpoints(folder, trust_calibrators=True)
    assert not marker.exists()

    status = cli_main([
        "import-reference", "--checkpoint-dir", str(folder), "--output", str(tmp_path / "bundle"),
        "--calibrators", "trusted",
    ])
    assert status == 2
    assert not marker.exists()


def test_malicious_object_array_in_calibrator_is_refused(tmp_path):
    # joblib writes object arrays as a nested pickle stream; it must pass the same check.
    marker = tmp_path / "ran"
    path = tmp_path / "cal_0.pkl"
    joblib.dump({"map": np.array([RunsCommand(marker)], dtype=object)}, path)
    with pytest.raises(BundleError, match="is not allowed"):
        read_trusted_calibrator(path)
    assert not marker.exists()


def test_calibrator_not_read_without_trust(checkpoint_dir, tmp_path):
    folder = tmp_path / "ref"
    shutil.copytree(checkpoint_dir, folder, symlinks=True)
    marker = tmp_path / "ran"
    with open(folder / "fold_0" / "cal_0.pkl", "wb") as handle:
        pickle.dump(RunsCommand(marker), handle)
    result = convert_reference_checkpoints(folder, trust_calibrators=False)
    assert result.calibrations == [None]
    assert not marker.exists()


def test_betacal_calibrator_is_read(reference_fixtures, tmp_path):
    with np.load(reference_fixtures / "betacal_abm.npz") as data:
        scores, labels = data["train_scores"], data["train_labels"]
        test_scores, test_pred = data["test_scores"], data["test_pred"]
    calibrator = BetacalCalibration(parameters="abm").fit(scores, labels)
    path = tmp_path / "cal_0.pkl"
    joblib.dump(calibrator, path)

    calibration = read_trusted_calibrator(path)
    np.testing.assert_allclose(calibration.predict(test_scores), calibrator.predict(test_scores), rtol=0, atol=1e-12)
    np.testing.assert_allclose(calibration.predict(test_scores), test_pred, rtol=0, atol=1e-12)
    # betacal finds m with a bounded scalar search (about 1e-5 tolerance); the regression is exact.
    assert calibration.midpoint == pytest.approx(calibrator.calibrator_.map_[2], abs=1e-4)
    assert calibration.c == calibrator.calibrator_.lr_.intercept_[0]


def test_betacal_single_coefficient_calibrator_is_read(tmp_path):
    # Scores whose low end is mostly positive give a negative a; betacal then drops ln(s).
    rng = np.random.default_rng(0)
    scores = rng.uniform(0.01, 0.99, 100)
    rng.uniform(size=100)
    labels = (rng.uniform(size=100) < np.where(scores < 0.2, 0.9, np.where(scores > 0.8, 0.9, 0.2))).astype(int)
    calibrator = BetacalCalibration(parameters="abm").fit(scores, labels)
    assert calibrator.calibrator_.map_[0] == 0
    assert len(calibrator.calibrator_.lr_.coef_[0]) == 1
    path = tmp_path / "cal_0.pkl"
    joblib.dump(calibrator, path)

    calibration = read_trusted_calibrator(path)
    grid = np.linspace(0, 1, 41)
    assert calibration.a == 0.0
    np.testing.assert_allclose(calibration.predict(grid), calibrator.predict(grid), rtol=0, atol=1e-12)


def test_trusted_import_stores_calibration(checkpoint_dir, reference_fixtures, tmp_path):
    folder = tmp_path / "ref"
    shutil.copytree(checkpoint_dir, folder, symlinks=True)
    with np.load(reference_fixtures / "betacal_abm.npz") as data:
        calibrator = BetacalCalibration(parameters="abm").fit(data["train_scores"], data["train_labels"])
        map_abm = data["map_abm"]
    joblib.dump(calibrator, folder / "fold_0" / "cal_0.pkl")

    result = convert_reference_checkpoints(folder, trust_calibrators=True)
    calibration = result.calibrations[0]
    assert calibration is not None
    assert calibration.a == pytest.approx(map_abm[0], rel=1e-9)
    assert calibration.b == pytest.approx(map_abm[1], rel=1e-9)
    # c = b * ln(1 - m) - a * ln(m) holds up to betacal's numerical search for m.
    expected_c = map_abm[1] * math.log(1 - map_abm[2]) - map_abm[0] * math.log(map_abm[2])
    assert calibration.c == pytest.approx(expected_c, abs=1e-4)
    assert calibration.c == calibrator.calibrator_.lr_.intercept_[0]
