"""Certificate integrity: attack every certified test point of the shipped models with l2 PGD.

    python -m bench.certificate_attack                      # every certified point of every model
    python -m bench.certificate_attack --limit 500          # the first 500 certified points per model
    python -m bench.certificate_attack --models mnist-4c3f  # one model; the others keep their last result

For each model in server/model_repository (highest version), the torch module is loaded from its
safetensors, the test set is certified at the manifest's ``epsilon``, and every certified point is
attacked with ``models.attack.pgd_l2`` (random restarts in the eps ball, not clipped to [0, 1]: the
certificate covers the whole ball). A certificate is broken when the attack finds a point within eps
whose predicted class differs; the count must be 0. As a check that the attack has teeth, the same
attack at ``--teeth-factor`` x eps on the first points must break some of them.
Writes bench/results/certificate_attack.json: one entry per model, each with the command, date and
machine that produced it, so a run over some models keeps the others' earlier results.
"""

from __future__ import annotations

import argparse
import json
import platform
import sys
import time
from pathlib import Path

import numpy as np
import torch

from models import data
from models.attack import pgd_l2
from models.torch_backend import TorchPredictor

ROOT = Path(__file__).resolve().parents[1]
REPOSITORY = ROOT / "server" / "model_repository"
DATA = ROOT.parent / "shared" / "datasets"
OUT = ROOT / "bench" / "results" / "certificate_attack.json"


def shipped(repository: Path) -> list[Path]:
    """The highest version folder of every model (the one the server serves)."""
    out = []
    for model in sorted(p for p in repository.iterdir() if p.is_dir()):
        versions = [p for p in model.iterdir() if p.is_dir() and p.name.isdigit() and (p / "gloro.json").is_file()]
        if versions:
            out.append(max(versions, key=lambda p: int(p.name)))
    return out


def attack_model(version_dir: Path, args: argparse.Namespace) -> dict:
    manifest = json.loads((version_dir / "gloro.json").read_text())
    eps = float(manifest["epsilon"])
    dataset = manifest["metrics"]["dataset"]
    module = TorchPredictor(version_dir, args.device).module
    device = next(module.parameters()).device
    test = data.load(dataset, DATA / dataset, train=False)
    x_all = torch.from_numpy(test.images.astype(np.float32) / 255)
    labels_all = torch.from_numpy(np.asarray(test.labels, dtype=np.int64))
    with torch.no_grad():
        preds, radii = [], []
        for start in range(0, len(x_all), 1000):
            _, label, radius = module(x_all[start:start + 1000].to(device))
            preds.append(label.cpu())
            radii.append(radius.cpu())
    pred, radius = torch.cat(preds), torch.cat(radii)
    certified = torch.nonzero(radius > eps).squeeze(1)
    n_certified = len(certified)
    chosen = certified if args.limit is None else certified[: args.limit]
    forward = lambda z: module(z)[0]  # noqa: E731
    broken_index: list[int] = []
    started = time.perf_counter()
    for start in range(0, len(chosen), args.batch_size):
        index = chosen[start:start + args.batch_size]
        broken = pgd_l2(forward, x_all[index].to(device), pred[index].to(device), eps,
                        steps=args.steps, restarts=args.restarts, seed=args.seed + start)
        broken_index += index[broken.cpu()].tolist()
        done = start + len(index)
        print(f"{manifest['name']}: {done}/{len(chosen)} attacked, {len(broken_index)} broken, "
              f"{time.perf_counter() - started:.0f} s", file=sys.stderr, flush=True)
    attack_seconds = time.perf_counter() - started
    # Teeth: the same attack at a larger radius must break some certified points.
    teeth_index = chosen[: args.teeth_points]
    teeth_eps = args.teeth_factor * eps
    teeth_broken = int(pgd_l2(forward, x_all[teeth_index].to(device), pred[teeth_index].to(device), teeth_eps,
                              steps=args.steps, restarts=1, seed=args.seed).sum())
    return {
        "model": manifest["name"], "version": manifest["version"], "dataset": dataset, "split": "test",
        "epsilon": eps, "test_points": len(x_all),
        "certified": n_certified, "certified_and_correct": int((pred[certified] == labels_all[certified]).sum()),
        "attacked": len(chosen), "complete": len(chosen) == n_certified,
        "broken": len(broken_index), "broken_indices": broken_index,
        "attack": {"method": "models.attack.pgd_l2", "steps": args.steps, "restarts": args.restarts,
                   "seed": args.seed, "step_size": 2.5 * eps / args.steps, "labels": "the predicted class"},
        "attack_seconds": round(attack_seconds, 1),
        "teeth_check": {"epsilon": teeth_eps, "points": len(teeth_index), "broken": teeth_broken},
    }


def _earlier_results(path: Path) -> dict[str, dict]:
    """Per-model entries of an earlier run (older files kept command/date/machine at the top)."""
    try:
        saved = json.loads(path.read_text())
    except (OSError, ValueError):
        return {}
    top = {k: saved[k] for k in ("command", "date", "machine") if k in saved}
    return {m["model"]: top | m for m in saved.get("models", [])}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--models", nargs="+", default=None, help="model names to attack (default: every shipped one)")
    parser.add_argument("--limit", type=int, default=None, help="attack only the first N certified points per model")
    parser.add_argument("--steps", type=int, default=50)
    parser.add_argument("--restarts", type=int, default=10)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--batch-size", type=int, default=500)
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--threads", type=int, default=0, help="torch threads (0: torch's default)")
    parser.add_argument("--teeth-factor", type=float, default=5.0)
    parser.add_argument("--teeth-points", type=int, default=100)
    parser.add_argument("--repository", type=Path, default=REPOSITORY)
    parser.add_argument("--out", type=Path, default=OUT)
    args = parser.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    command = ("python -m bench.certificate_attack " + " ".join(sys.argv[1:] if argv is None else argv)).strip()
    served = {d.parent.name: d for d in shipped(args.repository)}
    unknown = set(args.models or ()) - set(served)
    if unknown:
        print(f"certificate_attack: no shipped model named {', '.join(sorted(unknown))}", file=sys.stderr)
        return 2
    chosen = [d for name, d in served.items() if args.models is None or name in args.models]
    run = {"command": command, "date": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
           "machine": {"platform": platform.platform(), "torch": torch.__version__, "device": args.device,
                       "torch_threads": torch.get_num_threads()}}
    fresh = {m["model"]: m | run for m in (attack_model(d, args) for d in chosen)}
    # An earlier entry counts only while the version it attacked is still the one shipped.
    kept = {name: m for name, m in _earlier_results(args.out).items()
            if name in served and served[name].name == m.get("version")}
    models = [m for name in sorted(served) if (m := fresh.get(name) or kept.get(name))]
    result = {
        "total_attacked": sum(m["attacked"] for m in models),
        "total_broken": sum(m["broken"] for m in models),
        "complete": all(m["complete"] for m in models),
        "models": models,
    }
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(result, indent=1) + "\n")
    print(json.dumps({k: v for k, v in result.items() if k != "models"}
                     | {"models": [{k: v for k, v in m.items() if k != "broken_indices"} for m in models]}, indent=1))
    return 0 if result["total_broken"] == 0 else 1


if __name__ == "__main__":
    sys.exit(main())
