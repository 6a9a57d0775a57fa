"""`clipnodule train`: five-fold cross-validated training from a data set CSV into a model bundle.

The CLIPNoduleTraining Slicer module runs this same command in a background process;
under `torchrun --nproc_per_node N` it trains with DistributedDataParallel.
"""

from __future__ import annotations

import argparse
import logging

from ..devices import DEVICE_CHOICES

logger = logging.getLogger(__name__)


def _optional_text(value: str) -> str | None:
    return None if value.strip().lower() in ("", "none") else value


def register(subparsers: argparse._SubParsersAction) -> None:
    """Add the `train` subcommand."""
    parser = subparsers.add_parser(
        "train",
        help="train a five-fold CLIP nodule model (LoRA) from a data set CSV and save a bundle",
        description=(
            "Crop every nodule of --dataset, hold out a test set of patients, train one model per "
            "cross-validation fold with early stopping, calibrate each fold and write a model bundle "
            "(default OUTPUT/bundle). Rerun with --resume after an interruption."
        ),
    )
    parser.add_argument("--dataset", required=True, help="CSV with pid, nodule_id, image_path, coordX, coordY, coordZ (LPS mm), malignant and optional semantic features")
    parser.add_argument("--output", required=True, help="folder for the split, checkpoints, logs, loss curves and the bundle")

    parser.add_argument("--backbone", default="ViT-B-32-quickgelu", help="CLIP backbone name (default: ViT-B-32-quickgelu; tiny-vit and small-vit are random test backbones)")
    parser.add_argument("--pretrained", type=_optional_text, default="default", help="open_clip pretrained tag, or 'none' for random weights (default: the backbone's own tag, openai for ViT-B-32-quickgelu)")
    parser.add_argument("--weights-path", help="local CLIP weights file (OpenAI .pt or open_clip .safetensors) for offline machines")
    parser.add_argument("--tuning", default="lora", choices=("lora", "probe", "full"), help="what trains: LoRA adapters and heads, heads only, or every weight (default: lora)")
    parser.add_argument("--vision-only", action="store_true", help="train the image branch alone (no text, no contrastive loss)")

    parser.add_argument("--epochs", type=int, default=100, help="maximum epochs per fold (default: 100)")
    parser.add_argument("--patience", type=int, default=5, help="stop a fold after this many epochs without a lower validation loss (default: 5)")
    parser.add_argument("--batch-size", type=int, default=16, help="nodules per optimisation step over all processes (default: 16)")
    parser.add_argument("--lr", type=float, default=1e-4, help="AdamW learning rate (default: 1e-4)")
    parser.add_argument("--weight-decay", type=float, default=0.1, help="AdamW weight decay (default: 0.1)")

    parser.add_argument("--folds", type=int, default=5, help="cross-validation folds (default: 5)")
    parser.add_argument("--test-fraction", type=float, default=0.2, help="share of patients held out as the test set, 0 for none (default: 0.2)")
    parser.add_argument("--seed", type=int, default=0, help="seed of the split, initialisation and sampling (default: 0)")

    parser.add_argument("--workers", type=int, default=0, help="DataLoader worker processes for augmentation (default: 0, in the main process)")
    parser.add_argument("--device", default="auto", choices=DEVICE_CHOICES, help="torch device (default: auto)")
    parser.add_argument("--cache-dir", help="folder of cached nodule crops, 5.3 MB per nodule (default: OUTPUT/crop_cache)")
    parser.add_argument("--resume", action="store_true", help="continue the run in --output from its last finished epoch")
    parser.add_argument("--max-steps-per-epoch", type=int, help="cap the optimisation steps per epoch (for quick runs)")
    parser.add_argument("--stop-after-epochs", type=int, help="stop after this many epochs in this invocation; continue later with --resume")

    parser.add_argument("--bundle-dir", help="folder for the model bundle (default: OUTPUT/bundle)")
    parser.add_argument("--name", default="clipnodule-model", help="model name written into the bundle")
    parser.add_argument("--model-version", default="1.0.0", help="model version written into the bundle")
    parser.add_argument("--description", help="one-line model description written into the bundle")
    parser.add_argument("--intended-use", help="intended use statement written into the bundle")
    parser.add_argument("--licence", help="licence of the trained weights written into the bundle")
    parser.set_defaults(func=run)


def build_config(args: argparse.Namespace):
    """Return the TrainingConfig for parsed `train` arguments."""
    from ..backbones import get_backbone
    from ..training.trainer import TrainingConfig

    pretrained = args.pretrained
    if pretrained == "default":
        pretrained = get_backbone(args.backbone).default_pretrained
    if args.weights_path:
        pretrained = None

    optional = {
        "description": args.description,
        "intended_use": args.intended_use,
        "licence": args.licence,
    }
    return TrainingConfig(
        dataset=args.dataset,
        output=args.output,
        backbone=args.backbone,
        pretrained=pretrained,
        weights_path=args.weights_path,
        tuning=args.tuning,
        vision_only=args.vision_only,
        epochs=args.epochs,
        patience=args.patience,
        batch_size=args.batch_size,
        lr=args.lr,
        weight_decay=args.weight_decay,
        folds=args.folds,
        test_fraction=args.test_fraction,
        seed=args.seed,
        workers=args.workers,
        device=args.device,
        cache_dir=args.cache_dir,
        resume=args.resume,
        max_steps_per_epoch=args.max_steps_per_epoch,
        stop_after_epochs=args.stop_after_epochs,
        bundle_dir=args.bundle_dir,
        bundle_name=args.name,
        bundle_version=args.model_version,
        **{key: value for key, value in optional.items() if value},
    )


def run(args: argparse.Namespace) -> int:
    """Run `clipnodule train`."""
    from ..training.trainer import train_cross_validation

    config = build_config(args)
    bundle = train_cross_validation(config)
    if bundle is None:
        print(f"stopped after {config.stop_after_epochs} epochs; continue with the same command and --resume")
        return 0
    print(f"bundle written to {bundle}")
    return 0
