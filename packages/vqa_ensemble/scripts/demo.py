"""The demo, end to end on the synthetic world (CPU, a few minutes):

    python packages/vqa_ensemble/scripts/demo.py [--out demo_outputs/vqa_ensemble]     (= make demo-vqa_ensemble)

1. writes the synthetic world as VQA v2 (train2014, val2014) and as COCO instances (train and val images);
2. trains the feature detector briefly (``configs/demo_detector.yaml``, ``lightning fit``) and measures its box
   mAP (pycocotools) on the val images' instances, which it never trained on;
3. extracts region features (bottom-up rule: one box per proposal, 10-36 by confidence) and full-resolution
   grid features (C5 cells) of every image into feature stores (``python -m vislang.vqa_ensemble.extract``);
4. trains three members (``configs/demo.yaml``) on train2014 only: region features with seeds 0 and 2, grid
   features with seed 1 (the entry's members: two region-feature detectors and one grid);
5. fits the ensemble weights on the first half of the val2014 images (``lightning validate``,
   ``demo_ensemble.yaml``; prior toward equal weights chosen by cross-validation on that half) and evaluates
   members and ensemble on the held-out second half (``lightning test``), which played no part in the fit;
6. checks every results file (members' and ensemble's) against the split's question list, read again from the
   VQA v2 files, and prints the official (2021) VQA accuracy of each beside the majority-answer baselines.

Every step is the same command a user runs on real data; this script only chains them. It is a script beside
the package, not part of ``vislang.vqa_ensemble``: it needs the repository's ``configs/demo*.yaml``.
"""

from __future__ import annotations

import argparse
import sys
import time
from collections.abc import Sequence
from pathlib import Path

import torch

from vislang.shared.cli import build_cli
from vislang.shared.data.synthetic import SyntheticWorld
from vislang.shared.data.synthetic.vl_writers import write_vqa_v2
from vislang.shared.data.synthetic.writers import split_indices, write_coco_instances
from vislang.shared.data.vl import read_vqa_v2, vqa_v2_paths
from vislang.shared.metrics.vqa import read_vqa_results, vqa_prior_baselines
from vislang.vqa_ensemble import extract
from vislang.vqa_ensemble.detector import coco_box_map

CONFIGS = Path(__file__).resolve().parents[1] / "configs"
MEMBERS = (("region", "region", 0), ("grid", "grid", 1), ("region_seed2", "region", 2))
"""(name, feature set, seed) of each member: two on region features, one on grid features, like the entry's
X152 region / X101 region / X152 grid members."""


def _cli(args: list[str]):  # noqa: ANN202 (VislangCLI)
    saved = sys.argv
    sys.argv = ["lightning"]  # LightningCLI reads sys.argv for its program name
    try:
        return build_cli(args)
    finally:
        sys.argv = saved


def _halves(root: Path, heldout_fraction: float) -> tuple[list, list]:
    """The val2014 questions of the weight-fitting half and of the held-out half (split by image id)."""
    val = read_vqa_v2(*vqa_v2_paths(root, "val2014"))
    images = sorted({e.image_id for e in val})
    held = set(images[len(images) - max(1, round(heldout_fraction * len(images))) :])
    return [e for e in val if e.image_id not in held], [e for e in val if e.image_id in held]


def check_results_files(root: Path, results: Path, heldout_fraction: float = 0.5) -> str:
    """Every results file the ensemble wrote (members' and ensemble's, both halves) must answer exactly the
    questions of its split, as listed by the VQA v2 files themselves -- not by the rows the run collected."""
    fit, held = _halves(root, heldout_fraction)
    count = 0
    for split, examples in (("val", fit), ("test", held)):
        ids = [e.question_id for e in examples]
        for path in sorted(results.glob(f"{split}_*_results.json")):
            if set(read_vqa_results(path, question_ids=ids)) != set(ids):
                raise ValueError(f"{path}: does not answer exactly the {len(ids)} {split} questions")
            count += 1
    if count != 2 * (len(MEMBERS) + 1):
        raise FileNotFoundError(f"{results}: expected a results file per member and the ensemble for each half")
    return f"{count} files, {len(fit)} + {len(held)} questions"


def majority_baselines(root: Path, heldout_fraction: float = 0.5) -> dict[str, float]:
    """Official accuracy on the held-out half of val2014 of (a) the most common training answer and
    (b) the most common training answer of each question type (the VQA paper's "prior" baselines)."""
    train = read_vqa_v2(*vqa_v2_paths(root, "train2014"))
    test = _halves(root, heldout_fraction)[1]
    priors = vqa_prior_baselines(train, test)
    return {
        "majority answer": round(priors["majority"], 2),
        "majority answer per question type": round(priors["per_question_type"], 2),
    }


def write_world(out: Path, train_images: int, val_images: int) -> Path:
    """Step 1: the synthetic world in the VQA v2 and COCO-instances layouts; returns the VQA v2 root."""
    world = SyntheticWorld(seed=0, image_size=64, num_images=train_images)
    vqa_root = out / "vqa2"
    train_ids = list(split_indices("train", train_images))
    if not (vqa_root / "v2_mscoco_val2014_annotations.json").is_file():
        write_vqa_v2(world, vqa_root, "train", train_ids)
        write_vqa_v2(world, vqa_root, "val", split_indices("val", val_images))
        write_coco_instances(world, out / "coco", "train", train_ids)
        write_coco_instances(world, out / "coco", "val", split_indices("val", val_images))
    return vqa_root


def train_detector(out: Path, steps: int) -> Path:
    """Step 2: ``lightning fit -c demo_detector.yaml`` on the train images' instances; returns its checkpoint."""
    checkpoint = out / "detector" / "demo" / "checkpoints" / "last.ckpt"
    if not checkpoint.is_file():
        _cli(
            [
                "fit",
                "-c",
                str(CONFIGS / "demo_detector.yaml"),
                f"--trainer.max_steps={steps}",
                f"--trainer.logger.init_args.save_dir={out}",
                f"--data.init_args.train_json={out / 'coco' / 'annotations' / 'instances_train.json'}",
                f"--data.init_args.image_dir={out / 'coco' / 'images' / 'train'}",
            ]
        )
    return checkpoint


def detector_box_map(out: Path, checkpoint: Path) -> dict[str, float]:
    """The trained detector's COCO box mAP on the val images' instances, which it never trained on."""
    detector, _ = extract.load_detector(checkpoint)
    detector.transform.min_size = (max(detector.transform.min_size),)  # test at the largest training scale
    return coco_box_map(detector, out / "coco" / "annotations" / "instances_val.json", out / "coco" / "images" / "val")


def extract_features(out: Path, vqa_root: Path, checkpoint: Path) -> None:
    """Step 3: region and grid feature stores of every image (resumable: a re-run skips finished shards)."""
    for kind in ("region", "grid"):
        for subtype in ("train2014", "val2014"):
            extract.main(
                ["--images", str(vqa_root / subtype), "--out", str(out / "features" / kind / subtype)]
                + ["--detector", str(checkpoint), "--kind", kind, "--min-boxes", "10", "--max-boxes", "36"]
                + ["--grid-size", "0", "--shard-size", "100", "--batch-size", "16"]
            )


def data_overrides(out: Path, vqa_root: Path) -> list[str]:
    """The data module's root and feature stores, for the members and the ensemble."""
    return [
        f"--data.init_args.root={vqa_root}",
        f"--data.init_args.features={{region: [{out}/features/region/train2014, {out}/features/region/val2014], "
        f"grid: [{out}/features/grid/train2014, {out}/features/grid/val2014]}}",
    ]


def train_member(out: Path, vqa_root: Path, name: str, kind: str, seed: int, epochs: int) -> str:
    """Step 4, one member: ``lightning fit -c demo.yaml`` on one feature set and seed; returns its checkpoint."""
    checkpoint = out / name / "demo" / "checkpoints" / "last.ckpt"
    if not checkpoint.is_file():
        _cli(
            [
                "fit",
                "-c",
                str(CONFIGS / "demo.yaml"),
                f"--seed_everything={seed}",
                f"--model.init_args.feature_set={kind}",
                f"--trainer.max_epochs={epochs}",
                f"--trainer.logger.init_args.save_dir={out}",
                f"--trainer.logger.init_args.name={name}",
                *data_overrides(out, vqa_root),
            ]
        )
    return str(checkpoint)


def fit_and_test_ensemble(out: Path, vqa_root: Path, checkpoints: list[str]) -> tuple[dict, dict]:
    """Step 5: ``lightning validate`` fits the weights on the first half of val2014, ``lightning test`` scores
    members and ensemble on the held-out half; returns both reports."""
    ens = [
        "-c",
        str(CONFIGS / "demo_ensemble.yaml"),
        f"--model.init_args.members=[{', '.join(checkpoints)}]",
        f"--model.init_args.weights_path={out / 'ensemble' / 'weights.json'}",
        f"--model.init_args.results_dir={out / 'ensemble' / 'results'}",
        f"--trainer.default_root_dir={out / 'ensemble'}",
        *data_overrides(out, vqa_root),
    ]
    return _cli(["validate", *ens]).model.fitted["val"], _cli(["test", *ens]).model.fitted["test"]


def print_table(out: Path, vqa_root: Path, box_map: dict, val: dict, test: dict, seconds: float) -> dict:
    """Step 6: the official accuracy of each member and of the ensemble beside the majority-answer baselines."""
    rows = {"detector box mAP (held-out val instances)": box_map["mAP"]}
    rows.update(majority_baselines(vqa_root, heldout_fraction=0.5))
    val_of = {
        f"member {k + 1}: {kind} features, seed {seed}": f"member{k}" for k, (_, kind, seed) in enumerate(MEMBERS)
    }
    for name, key in val_of.items():
        rows[name] = test[key]["overall"]
    weights = ", ".join(f"{w:.2f}" for w in test["weights"])
    rows[f"ensemble (weights {weights})"] = test["ensemble"]["overall"]
    print(f"\nOfficial VQA accuracy (2021 metric), synthetic val2014 held-out half ({out}); wall {seconds:.0f} s")
    print(f"{'model':<56} {'val (weight fit)':>16} {'held-out test':>14}")
    for name, acc in rows.items():
        key = val_of.get(name, "ensemble" if name.startswith("ensemble") else None)
        v = f"{val[key]['overall']:.2f}" if key else "-"
        print(f"{name:<56} {v:>16} {acc:>14.2f}")
    g = val["gain_over_equal"]
    print(
        f"weight fit on the fitting half: cross-validated accuracy by prior strength {val['cv_accuracy_by_prior']};"
        f" fitted weights {', '.join(f'{w:.2f}' for w in val['fitted_weights'])} gain {g['percent']:+.2f}"
        f" +- {g['se']:.2f} (clustered by image) over equal weights -> {'kept' if g['kept'] else 'equal weights'}"
    )
    return {"val": {k: val[k]["overall"] for k in (*val_of.values(), "ensemble")}, "test": rows}


def main(argv: Sequence[str] | None = None) -> dict[str, dict[str, float]]:
    p = argparse.ArgumentParser(
        prog="python packages/vqa_ensemble/scripts/demo.py", description=__doc__.split("\n\n")[0]
    )
    p.add_argument("--out", default="demo_outputs/vqa_ensemble", help="everything is written here")
    p.add_argument("--train-images", type=int, default=400)
    p.add_argument("--val-images", type=int, default=200)
    p.add_argument("--threads", type=int, default=1, help="torch threads (1 is fastest on a shared 2-core CPU)")
    p.add_argument("--member-epochs", type=int, default=12)
    p.add_argument("--detector-steps", type=int, default=60)
    args = p.parse_args(argv)
    torch.set_num_threads(args.threads)
    out = Path(args.out)
    start = time.time()
    stamp = lambda what: print(f"[{time.time() - start:6.1f} s] {what}", flush=True)  # noqa: E731

    vqa_root = write_world(out, args.train_images, args.val_images)
    stamp("synthetic VQA v2 + COCO instances written")
    detector = train_detector(out, args.detector_steps)
    stamp(f"detector trained: {detector}")
    box_map = detector_box_map(out, detector)
    stamp(
        f"detector box mAP on the {box_map['images']} held-out val images: {box_map['mAP']:.2f} "
        f"(AP50 {box_map['mAP50']:.2f})"
    )
    extract_features(out, vqa_root, detector)
    stamp("features extracted")
    # the entry's members: two on region features and one on grid features, with different seeds
    checkpoints = []
    for name, kind, seed in MEMBERS:
        checkpoints.append(train_member(out, vqa_root, name, kind, seed, args.member_epochs))
        stamp(f"member {name} trained: {checkpoints[-1]}")
    val, test = fit_and_test_ensemble(out, vqa_root, checkpoints)
    stamp("ensemble fitted and evaluated")
    checked = check_results_files(vqa_root, out / "ensemble" / "results", heldout_fraction=0.5)
    stamp(f"results files checked against the split's question list: {checked}")
    return {**print_table(out, vqa_root, box_map, val, test, time.time() - start), "box_map": box_map}


if __name__ == "__main__":
    main()
