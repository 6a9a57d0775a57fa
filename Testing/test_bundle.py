"""Tests of the model bundle: save/load round trip, checksum checks and manifest validation.

Uses the randomly initialised "tiny-vit" backbone (real open_clip and peft), because
pretrained weights cannot be downloaded here.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file, save_file

from clipnodule.bundle import (
    BACKBONE_FILE,
    FORMAT_VERSION,
    MANIFEST_FILE,
    PLANE_CONVENTION_NAME,
    describe_bundle,
    load_bundle,
    read_manifest,
    save_bundle,
)
from clipnodule.calibration import BetaCalibration
from clipnodule.errors import BundleError, InputError
from clipnodule.hashing import sha256_file
from clipnodule.model import ModelConfig, build_model
from clipnodule.planes import PLANE_NAMES
from clipnodule.zeroshot import DEFAULT_PROMPT_SET

FOLD_COUNT = 3
CALIBRATIONS = [BetaCalibration(a=1.44, b=0.9, c=-0.45), None, BetaCalibration(a=0.0, b=0.7, c=-0.1)]


def _randomize_trainable(model, seed: int) -> dict[str, torch.Tensor]:
    """Give every trainable tensor random values (LoRA B starts at zero) and return the fold state."""
    generator = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for parameter in model.parameters():
            if parameter.requires_grad:
                parameter.copy_(0.2 * torch.randn(parameter.shape, generator=generator))
    return model.trainable_state_dict()


def _save(folder: Path, config, fold_state_dicts, backbone, **overrides) -> Path:
    arguments = dict(
        config=config,
        fold_state_dicts=fold_state_dicts,
        calibrations=CALIBRATIONS[: len(fold_state_dicts)],
        backbone_state_dict=backbone,
        name="clipnodule-test",
        version="0.0.1",
        description="tiny random model for tests",
        intended_use="software tests only",
        licence="CC-BY-4.0",
        training_summary={"dataset": "synthetic", "nodules": 0},
    )
    arguments.update(overrides)
    return save_bundle(folder, **arguments)


@pytest.fixture(scope="module")
def saved(tmp_path_factory):
    """A three-fold tiny-vit LoRA bundle with the source model and fold weights it came from."""
    torch.manual_seed(0)
    config = ModelConfig(backbone="tiny-vit", pretrained=None)
    model = build_model(config)
    fold_state_dicts = [_randomize_trainable(model, seed) for seed in range(FOLD_COUNT)]
    backbone = model.backbone_state_dict()

    folder = _save(tmp_path_factory.mktemp("bundle") / "tiny", config, fold_state_dicts, backbone)
    return {"folder": folder, "config": config, "model": model, "folds": fold_state_dicts, "backbone": backbone}


@pytest.fixture()
def bundle_copy(saved, tmp_path) -> Path:
    """A fresh copy of the saved bundle that a test may modify."""
    return Path(shutil.copytree(saved["folder"], tmp_path / "copy"))


@pytest.fixture(scope="module")
def pixels() -> torch.Tensor:
    generator = torch.Generator().manual_seed(5)
    return torch.randn((2, len(PLANE_NAMES), 3, 224, 224), generator=generator)


def _rewrite_manifest(folder: Path, change) -> None:
    manifest = json.loads((folder / MANIFEST_FILE).read_text())
    change(manifest)
    (folder / MANIFEST_FILE).write_text(json.dumps(manifest))


def test_bundle_writes_only_safetensors_and_manifest(saved):
    names = sorted(item.name for item in saved["folder"].iterdir())

    assert names == [BACKBONE_FILE, "fold_0.safetensors", "fold_1.safetensors", "fold_2.safetensors", MANIFEST_FILE]
    assert not [name for name in names if name.endswith((".pt", ".pth", ".pkl", ".bin"))]


def test_bundle_files_world_readable(saved):
    folder = saved["folder"]
    for file in folder.iterdir():
        assert file.stat().st_mode & 0o044 == 0o044, f"{file.name} is not readable by group and others"


def test_model_card_not_warned(saved, tmp_path, caplog):
    import shutil

    folder = tmp_path / "with-card"
    shutil.copytree(saved["folder"], folder)
    (folder / "MODEL_CARD.md").write_text("# card\n")
    (folder / "stray.bin").write_bytes(b"x")

    with caplog.at_level("WARNING", logger="clipnodule.bundle"):
        load_bundle(folder, folds=[0])
    warnings = " ".join(record.getMessage() for record in caplog.records)
    assert "stray.bin" in warnings
    assert "MODEL_CARD.md" not in warnings


def test_manifest_contents(saved):
    manifest = read_manifest(saved["folder"])

    assert manifest["format_version"] == FORMAT_VERSION
    assert manifest["name"] == "clipnodule-test"
    assert manifest["model"]["backbone"] == "tiny-vit"
    assert manifest["backbone"]["weights_file"] == BACKBONE_FILE
    assert manifest["backbone"]["sha256"] == sha256_file(saved["folder"] / BACKBONE_FILE)
    assert manifest["preprocessing"]["hu_window"] == [-1000.0, 500.0]
    assert manifest["preprocessing"]["pad_hu"] == 0.0
    assert manifest["preprocessing"]["crop_size_mm"] == 100
    assert manifest["preprocessing"]["plane_size_mm"] == 50
    assert manifest["preprocessing"]["image_size"] == 224
    assert manifest["plane_convention"] == {"name": PLANE_CONVENTION_NAME, "plane_names": list(PLANE_NAMES)}
    assert manifest["lora"]["rank"] == 2
    assert manifest["lora"]["scaling"] == "rslora"
    assert manifest["training_data"] == {"dataset": "synthetic", "nodules": 0}
    assert manifest["zero_shot"] == DEFAULT_PROMPT_SET
    assert [fold["file"] for fold in manifest["folds"]] == [f"fold_{k}.safetensors" for k in range(FOLD_COUNT)]
    assert manifest["folds"][0]["calibration"] == {"type": "beta-abm", "a": 1.44, "b": 0.9, "c": -0.45}
    assert manifest["folds"][1]["calibration"] is None
    for name, digest in manifest["files"].items():
        assert digest == sha256_file(saved["folder"] / name), name


def test_round_trip_weights_and_metadata(saved):
    bundle = load_bundle(saved["folder"])

    assert bundle.config == saved["config"]
    assert [fold.index for fold in bundle.folds] == list(range(FOLD_COUNT))
    assert [fold.calibration for fold in bundle.folds] == CALIBRATIONS
    assert bundle.prompt_set == DEFAULT_PROMPT_SET
    for fold, expected in zip(bundle.folds, saved["folds"]):
        assert not fold.model.training
        loaded = fold.model.trainable_state_dict()
        assert sorted(loaded) == sorted(expected)
        for key in expected:
            assert torch.equal(loaded[key], expected[key]), key

    backbone = bundle.folds[0].model.backbone_state_dict()
    assert sorted(backbone) == sorted(saved["backbone"])
    for key, tensor in saved["backbone"].items():
        assert torch.equal(backbone[key], tensor), key


def test_round_trip_outputs_equal(saved, pixels):
    bundle = load_bundle(saved["folder"])
    source = saved["model"]

    for fold in bundle.folds:
        source.load_trainable_state_dict(saved["folds"][fold.index])
        source.eval()
        with torch.no_grad():
            expected = source.image_probabilities(pixels)
            actual = fold.model.image_probabilities(pixels)
            expected_text = source.text_embeddings_normalized(["There is pleural attachment."])
            actual_text = fold.model.text_embeddings_normalized(["There is pleural attachment."])

        assert actual["probability"].shape == (2,)
        torch.testing.assert_close(actual["probability"], expected["probability"], rtol=0, atol=1e-6)
        torch.testing.assert_close(actual["attention"], expected["attention"], rtol=0, atol=1e-6)
        torch.testing.assert_close(actual["embedding"], expected["embedding"], rtol=0, atol=1e-6)
        torch.testing.assert_close(actual_text, expected_text, rtol=0, atol=1e-6)


def test_folds_differ_and_share_frozen_backbone(saved, pixels):
    bundle = load_bundle(saved["folder"])
    first, second = bundle.folds[0].model, bundle.folds[1].model
    first_parameters = dict(first.named_parameters())
    second_parameters = dict(second.named_parameters())

    frozen = [name for name, parameter in first_parameters.items() if not parameter.requires_grad]
    trainable = [name for name, parameter in first_parameters.items() if parameter.requires_grad]
    assert frozen
    assert all(first_parameters[name] is second_parameters[name] for name in frozen)
    assert not any(first_parameters[name] is second_parameters[name] for name in trainable)

    with torch.no_grad():
        first_probability = first.image_probabilities(pixels)["probability"]
        second_probability = second.image_probabilities(pixels)["probability"]
    assert not torch.allclose(first_probability, second_probability)


def test_load_selected_folds(saved):
    bundle = load_bundle(saved["folder"], folds=[2])

    assert [fold.index for fold in bundle.folds] == [2]
    assert bundle.folds[0].calibration == CALIBRATIONS[2]
    loaded = bundle.folds[0].model.trainable_state_dict()
    assert all(torch.equal(loaded[key], saved["folds"][2][key]) for key in loaded)

    with pytest.raises(InputError, match=r"choose from folds \[0, 1, 2\]"):
        load_bundle(saved["folder"], folds=[5])


def test_tampered_file_rejected(bundle_copy):
    target = bundle_copy / "fold_1.safetensors"
    data = bytearray(target.read_bytes())
    data[len(data) // 2] ^= 0x01
    target.write_bytes(bytes(data))

    with pytest.raises(BundleError, match="fold_1.safetensors .*truncated or modified. Re-download or re-export"):
        load_bundle(bundle_copy)


def test_truncated_file_rejected(bundle_copy):
    target = bundle_copy / BACKBONE_FILE
    data = target.read_bytes()
    target.write_bytes(data[: len(data) - 100])

    with pytest.raises(BundleError, match=f"{BACKBONE_FILE} \\({len(data) - 100} bytes\\) has sha256"):
        load_bundle(bundle_copy)


def test_missing_file_rejected(bundle_copy):
    (bundle_copy / "fold_2.safetensors").unlink()

    with pytest.raises(BundleError, match="fold_2.safetensors is missing .*re-download or re-export"):
        load_bundle(bundle_copy)


def test_extra_key_in_fold_file_rejected(bundle_copy):
    target = bundle_copy / "fold_0.safetensors"
    state = load_file(str(target))
    state["mil_head.extra.weight"] = torch.zeros(3)
    save_file(state, str(target))
    digest = sha256_file(target)

    def update_checksums(manifest):
        manifest["files"]["fold_0.safetensors"] = digest
        manifest["folds"][0]["sha256"] = digest

    _rewrite_manifest(bundle_copy, update_checksums)

    with pytest.raises(BundleError, match="fold_0.safetensors: .*unexpected keys: mil_head.extra.weight"):
        load_bundle(bundle_copy)


def test_wrong_format_version_rejected(bundle_copy):
    _rewrite_manifest(bundle_copy, lambda manifest: manifest.update(format_version=2))

    with pytest.raises(BundleError, match="manifest.json: format_version 2 is not supported"):
        read_manifest(bundle_copy)
    with pytest.raises(BundleError, match="format_version 2"):
        load_bundle(bundle_copy)


def test_missing_manifest_key_rejected(bundle_copy):
    _rewrite_manifest(bundle_copy, lambda manifest: manifest.pop("licence"))

    with pytest.raises(BundleError, match="lacks required keys: licence"):
        read_manifest(bundle_copy)


def test_missing_manifest_rejected(bundle_copy):
    (bundle_copy / MANIFEST_FILE).unlink()

    with pytest.raises(BundleError, match="manifest.json not found"):
        load_bundle(bundle_copy)


def test_invalid_manifest_json_rejected(bundle_copy):
    (bundle_copy / MANIFEST_FILE).write_text("{not json")

    with pytest.raises(BundleError, match="manifest.json is not valid JSON"):
        read_manifest(bundle_copy)


def test_pickle_file_entry_rejected(bundle_copy):
    def list_pickle(manifest):
        manifest["files"]["cal_0.pkl"] = "0" * 64

    _rewrite_manifest(bundle_copy, list_pickle)

    with pytest.raises(BundleError, match="'cal_0.pkl' is not a .safetensors file"):
        read_manifest(bundle_copy)


def test_path_outside_bundle_rejected(bundle_copy):
    def list_outside(manifest):
        manifest["files"]["../outside.safetensors"] = "0" * 64

    _rewrite_manifest(bundle_copy, list_outside)

    with pytest.raises(BundleError, match="'../outside.safetensors' must be a plain path inside the bundle"):
        read_manifest(bundle_copy)


def test_different_preprocessing_rejected(bundle_copy):
    _rewrite_manifest(bundle_copy, lambda manifest: manifest["preprocessing"].update(pad_hu=-1000.0))

    with pytest.raises(BundleError, match="preprocessing pad_hu is -1000.0, but clipnodule"):
        load_bundle(bundle_copy)


def test_different_plane_order_rejected(bundle_copy):
    def swap_planes(manifest):
        names = manifest["plane_convention"]["plane_names"]
        names[0], names[1] = names[1], names[0]

    _rewrite_manifest(bundle_copy, swap_planes)

    with pytest.raises(BundleError, match="plane names .* differ from this library's order"):
        load_bundle(bundle_copy)


def test_invalid_calibration_rejected(bundle_copy):
    _rewrite_manifest(bundle_copy, lambda manifest: manifest["folds"][0].update(calibration={"type": "isotonic"}))

    with pytest.raises(BundleError, match="fold 0 calibration is invalid: calibration type 'isotonic'"):
        load_bundle(bundle_copy)


def test_unlisted_files_ignored(bundle_copy, caplog):
    (bundle_copy / "notes.pkl").write_bytes(b"not loaded")

    bundle = load_bundle(bundle_copy, folds=[0])

    assert len(bundle.folds) == 1
    assert "notes.pkl" in caplog.text


def test_describe_bundle(saved):
    text = describe_bundle(saved["folder"])

    assert text.splitlines()[0] == "clipnodule-test 0.0.1"
    assert "fold 0: fold_0.safetensors" in text
    assert "beta a=1.44 b=0.9 c=-0.45" in text
    assert "fold 1: fold_1.safetensors" in text
    assert "no calibration" in text
    assert "16 features" in text
    assert "4 files verified" in text


def test_describe_bundle_rejects_tampered(bundle_copy):
    (bundle_copy / "fold_0.safetensors").write_bytes(b"x")

    with pytest.raises(BundleError, match="fold_0.safetensors"):
        describe_bundle(bundle_copy)


def test_save_rejects_non_empty_folder(saved, tmp_path):
    folder = tmp_path / "existing"
    folder.mkdir()
    (folder / "fold_7.safetensors").write_bytes(b"stale")

    with pytest.raises(InputError, match="is not empty"):
        _save(folder, saved["config"], saved["folds"], saved["backbone"])

    _save(folder, saved["config"], saved["folds"][:1], saved["backbone"], overwrite=True)
    names = sorted(item.name for item in folder.iterdir())
    assert names == [BACKBONE_FILE, "fold_0.safetensors", MANIFEST_FILE]


def test_save_requires_backbone_for_random_init(saved, tmp_path):
    with pytest.raises(InputError, match="pass backbone_state_dict=model.backbone_state_dict"):
        _save(tmp_path / "b", saved["config"], saved["folds"], None)


def test_save_rejects_mismatched_arguments(saved, tmp_path):
    with pytest.raises(InputError, match="got 1 calibrations for 3 folds"):
        _save(tmp_path / "a", saved["config"], saved["folds"], saved["backbone"], calibrations=[None])

    different = dict(saved["folds"][1])
    different.pop("logit_scale")
    with pytest.raises(InputError, match="fold 1 weights differ from fold 0 .*logit_scale"):
        _save(tmp_path / "b", saved["config"], [saved["folds"][0], different], saved["backbone"])

    with pytest.raises(InputError, match="would replace standard keys"):
        _save(tmp_path / "c", saved["config"], saved["folds"], saved["backbone"], extra={"licence": "x"})


def test_named_pretrained_backbone_not_stored(saved, tmp_path):
    # The tiny backbone has no open_clip pretrained tag, so no cached file and no sha256 can be found.
    config = ModelConfig(backbone="tiny-vit", pretrained="openai")

    folder = _save(tmp_path / "named", config, saved["folds"], saved["backbone"])

    manifest = read_manifest(folder)
    assert not (folder / BACKBONE_FILE).exists()
    assert manifest["backbone"]["weights_file"] is None
    assert manifest["backbone"]["sha256"] is None
    assert "no sha256 is recorded" in manifest["backbone"]["note"]
    assert BACKBONE_FILE not in manifest["files"]


def test_vision_only_round_trip(tmp_path, pixels):
    torch.manual_seed(1)
    config = ModelConfig(backbone="tiny-vit", pretrained=None, vision_only=True)
    model = build_model(config)
    fold_state = _randomize_trainable(model, 11)

    folder = _save(tmp_path / "vision", config, [fold_state], model.backbone_state_dict())
    bundle = load_bundle(folder)

    assert bundle.prompt_set is None
    assert read_manifest(folder)["zero_shot"] is None
    assert bundle.config.vision_only
    model.eval()
    with torch.no_grad():
        expected = model.image_probabilities(pixels)["probability"]
        actual = bundle.folds[0].model.image_probabilities(pixels)["probability"]
    torch.testing.assert_close(actual, expected, rtol=0, atol=1e-6)


def test_sha256_file_reads_in_chunks(tmp_path):
    import hashlib

    data = bytes(range(256)) * 5000
    target = tmp_path / "data.bin"
    target.write_bytes(data)

    assert sha256_file(target, chunk_bytes=1000) == hashlib.sha256(data).hexdigest()
    assert sha256_file(target) == hashlib.sha256(data).hexdigest()
